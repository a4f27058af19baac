# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""The embedded synthetic dataset: format, values, determinism, registration and bad input."""

import filecmp
import json
import os
import shutil
import unittest

import numpy as np
import pytest
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from box_panoptic.data import PanopticDatasetError, SyntheticSpec, generate_synthetic_panoptic
from box_panoptic.data.datasets import load_synthetic_panoptic, rgb2id, synthetic_metadata
from box_panoptic.data.synthetic import dataset_paths

from .conftest import SMALL_SPEC

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")


def _load_json(root, split):
    with open(dataset_paths(root, split)["panoptic_json"]) as f:
        return json.load(f)


def test_png_ids_match_segments_info_with_exact_areas_and_boxes(synthetic_root):
    for split in ("train", "val"):
        data = _load_json(synthetic_root, split)
        paths = dataset_paths(synthetic_root, split)
        for ann in data["annotations"]:
            ids = rgb2id(
                np.asarray(Image.open(os.path.join(paths["panoptic_root"], ann["file_name"])))
            )
            png_ids = set(np.unique(ids).tolist()) - {0}
            assert png_ids == {s["id"] for s in ann["segments_info"]}
            for s in ann["segments_info"]:
                ys, xs = np.nonzero(ids == s["id"])
                assert s["area"] == len(ys)
                assert s["bbox"] == [
                    xs.min(),
                    ys.min(),
                    xs.max() - xs.min() + 1,
                    ys.max() - ys.min() + 1,
                ]


def test_semantic_png_agrees_with_panoptic(synthetic_root):
    records = DatasetCatalog.get("synthetic_panoptic_val")
    for r in records:
        ids = rgb2id(np.asarray(Image.open(r["pan_seg_file_name"])))
        sem = np.asarray(Image.open(r["sem_seg_file_name"]))
        assert (sem[ids == 0] == 255).all()
        for s in r["segments_info"]:
            assert (sem[ids == s["id"]] == s["category_id"]).all()


def test_registered_records_round_trip_to_pngs(synthetic_root):
    records = DatasetCatalog.get("synthetic_panoptic_val")
    data = _load_json(synthetic_root, "val")
    meta = MetadataCatalog.get("synthetic_panoptic_val")
    assert len(records) == len(data["annotations"]) == 6
    to_contiguous = {
        **meta.thing_dataset_id_to_contiguous_id,
        **meta.stuff_dataset_id_to_contiguous_id,
    }
    for r, ann in zip(records, data["annotations"]):
        assert os.path.isfile(r["file_name"])
        ids = rgb2id(np.asarray(Image.open(r["pan_seg_file_name"])))
        by_id = {s["id"]: s for s in ann["segments_info"]}
        for s in r["segments_info"]:
            raw = by_id[s["id"]]
            assert s["category_id"] == to_contiguous[raw["category_id"]]
            assert s["isthing"] == (raw["category_id"] in meta.thing_dataset_id_to_contiguous_id)
            assert (ids == s["id"]).sum() == raw["area"]
            assert s["iscrowd"] == raw["iscrowd"]


def test_metadata_is_complete_for_visualizer_and_evaluator(synthetic_root):
    meta = MetadataCatalog.get("synthetic_panoptic_train")
    n = SMALL_SPEC["num_thing_classes"] + SMALL_SPEC["num_stuff_classes"]
    assert len(meta.stuff_classes) == len(meta.thing_classes) == len(meta.stuff_colors) == n
    assert sorted(meta.thing_dataset_id_to_contiguous_id.values()) == [0, 1, 2]
    assert sorted(meta.stuff_dataset_id_to_contiguous_id.values()) == [3, 4, 5]
    assert meta.evaluator_type == "coco_panoptic_seg"
    assert meta.label_divisor == 1000 and meta.ignore_label == 255
    assert os.path.isdir(meta.panoptic_root) and os.path.isfile(meta.panoptic_json)


def test_crowd_and_empty_images_occur(tmp_path):
    generate_synthetic_panoptic(
        str(tmp_path), "train", SyntheticSpec(num_images=60, seed=3, **SMALL_SPEC)
    )
    paths = dataset_paths(str(tmp_path), "train")
    meta = synthetic_metadata(paths["panoptic_json"])
    records = load_synthetic_panoptic(paths, meta)
    crowd = [s for r in records for s in r["segments_info"] if s["iscrowd"]]
    assert crowd and all(s["isthing"] for s in crowd)
    assert any(not any(s["isthing"] for s in r["segments_info"]) for r in records)

    # touching or overlapping instances of one class: two same-class boxes that meet
    def touching(a, b):
        ax, ay, aw, ah = a["bbox"]
        bx, by, bw, bh = b["bbox"]
        return ax <= bx + bw and bx <= ax + aw and ay <= by + bh and by <= ay + ah

    assert any(
        touching(a, b)
        for r in records
        for i, a in enumerate(r["segments_info"])
        for b in r["segments_info"][i + 1 :]
        if a["isthing"] and b["isthing"] and a["category_id"] == b["category_id"]
    )


@pytest.mark.parametrize("size,levels", [((256, 384), 5), ((128, 192), 3)])
def test_every_fpn_size_range_has_objects(tmp_path, size, levels):
    """Every level gets positives: an object of max side s has locations with
    m = max(l*, t*, r*, b*) in [s / 2, s].

    256x384 (the generator's default) with FCOS's ranges [64, 128, 256, 512] scaled by 1/8:
    P3-P7. 128x192 (the main job) with the synthetic config's ranges: P3-P5 (P6 and P7 need
    objects over 64 px, larger than half of these images)."""
    from box_panoptic import add_box_panoptic_config

    if size == (256, 384):
        soi = [8, 16, 32, 64]
        spec = SyntheticSpec(num_images=40, seed=5)
    else:
        cfg = get_cfg()
        add_box_panoptic_config(cfg)
        cfg.merge_from_file(
            os.path.join(CONFIG_DIR, "Synthetic", "box_panoptic_R_18_synthetic.yaml")
        )
        soi = list(cfg.MODEL.BOX_PANOPTIC.SIZES_OF_INTEREST)
        assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == size
        spec = SyntheticSpec(num_images=40, seed=5, height=128, width=192, min_object_size=8)
    bounds = [0] + soi + [float("inf")]
    generate_synthetic_panoptic(str(tmp_path), "train", spec)
    data = _load_json(str(tmp_path), "train")
    cats = {c["id"]: c for c in data["categories"]}
    sides = [
        max(s["bbox"][2:])
        for a in data["annotations"]
        for s in a["segments_info"]
        if cats[s["category_id"]]["isthing"] and not s["iscrowd"]
    ]
    for lo, hi in list(zip(bounds[:-1], bounds[1:]))[:levels]:
        assert any(s / 2 <= hi and s > lo for s in sides), (lo, hi)


def test_same_seed_gives_identical_bytes(tmp_path):
    spec = SyntheticSpec(num_images=3, seed=11, **SMALL_SPEC)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    generate_synthetic_panoptic(a, "val", spec)
    generate_synthetic_panoptic(b, "val", spec)
    cmp = filecmp.dircmp(
        os.path.join(a, "synthetic_panoptic"), os.path.join(b, "synthetic_panoptic")
    )
    files = []
    for sub in ("val2017", "panoptic_val2017", "panoptic_semseg_val2017", "annotations"):
        d = os.path.join(a, "synthetic_panoptic", sub)
        files += [os.path.join(sub, f) for f in os.listdir(d)]
    match, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, files, shallow=False)
    assert len(match) == 3 * 3 + 1 and not mismatch and not errors
    other = str(tmp_path / "c")
    generate_synthetic_panoptic(other, "val", SyntheticSpec(num_images=3, seed=12, **SMALL_SPEC))
    assert not filecmp.cmp(
        os.path.join(a, "synthetic_panoptic/val2017/val_000000.jpg"),
        os.path.join(other, "synthetic_panoptic/val2017/val_000000.jpg"),
        shallow=False,
    )


class TestGeneratorRefusesNonsense(unittest.TestCase):
    def check(self, pattern, **kw):
        with self.assertRaisesRegex(ValueError, pattern):
            generate_synthetic_panoptic("/nonexistent-never-written", "train", SyntheticSpec(**kw))
        self.assertFalse(os.path.exists("/nonexistent-never-written"))

    def test_sizes(self):
        self.check("height", height=0)
        self.check("width", width=-5)
        self.check("num_images", num_images=0)
        self.check("min_object_size", min_object_size=0)
        self.check("max_object_size", min_object_size=30, max_object_size=20)

    def test_classes(self):
        self.check("num_thing_classes", num_thing_classes=0)
        self.check("num_stuff_classes", num_stuff_classes=0)
        self.check("num_thing_classes", num_thing_classes=99)

    def test_too_many_instances(self):
        self.check("max_instances=500", height=64, width=64, max_instances=500, min_object_size=10)


def _copy_split(src_root, dst_root):
    shutil.copytree(
        os.path.join(src_root, "synthetic_panoptic"), os.path.join(dst_root, "synthetic_panoptic")
    )
    return dataset_paths(dst_root, "val")


def test_missing_image_is_named(synthetic_root, tmp_path):
    paths = _copy_split(synthetic_root, str(tmp_path))
    victim = os.path.join(paths["image_root"], "val_000003.jpg")
    os.remove(victim)
    with pytest.raises(PanopticDatasetError, match="val_000003.jpg"):
        load_synthetic_panoptic(paths, synthetic_metadata(paths["panoptic_json"]))


def test_missing_png_is_named(synthetic_root, tmp_path):
    paths = _copy_split(synthetic_root, str(tmp_path))
    os.remove(os.path.join(paths["panoptic_root"], "val_000002.png"))
    with pytest.raises(PanopticDatasetError, match="val_000002.png"):
        load_synthetic_panoptic(paths, synthetic_metadata(paths["panoptic_json"]))


def test_png_id_absent_from_json_is_named(synthetic_root, tmp_path):
    paths = _copy_split(synthetic_root, str(tmp_path))
    png = os.path.join(paths["panoptic_root"], "val_000001.png")
    rgb = np.asarray(Image.open(png)).copy()
    rgb[0:3, 0:3] = [0x39, 0x30, 0x00]  # id 0x3039 = 12345
    Image.fromarray(rgb).save(png)
    with pytest.raises(PanopticDatasetError, match=r"val_000001\.png.*12345"):
        load_synthetic_panoptic(paths, synthetic_metadata(paths["panoptic_json"]))


def test_missing_dataset_says_how_to_generate(tmp_path):
    paths = dataset_paths(str(tmp_path), "val")
    with pytest.raises(PanopticDatasetError, match="box_panoptic.data.synthetic"):
        load_synthetic_panoptic(paths, {})
