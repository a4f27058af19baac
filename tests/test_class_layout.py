# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""The class layout from detectron2 metadata; the semantic ground truth and metrics from the
panoptic annotation; errors of detectron2's own loaders naming the dataset and file; the
synthetic dataset on first use."""

import json
import os
import types

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_panoptic

from box_panoptic.data import PanopticDatasetError
from box_panoptic.data.class_layout import ClassLayout, ClassLayoutError, class_layout_from_config
from box_panoptic.data.datasets import register_synthetic_panoptic
from box_panoptic.data.loading import load_panoptic_dicts
from box_panoptic.data.synthetic import dataset_paths
from box_panoptic.data.user_datasets import register_coco_panoptic_from_json
from box_panoptic.evaluation.sem_seg import PanopticSemSegEvaluator, semantic_metrics

from .helpers import SYNTHETIC_CONFIG, get_cfg_from
from .user_data import separated_metadata


def meta(**kw):
    return types.SimpleNamespace(**kw)


def test_standard_layout_with_things_anywhere():
    m = meta(
        thing_dataset_id_to_contiguous_id={7: 1, 3: 3, 12: 5},
        stuff_dataset_id_to_contiguous_id={20: 0, 21: 2, 40: 4},
        stuff_classes=["sky", "disc", "grass", "block", "road", "wedge"],
    )
    layout = ClassLayout.from_metadata(m)
    assert layout.thing_ids == (1, 3, 5) and layout.num_classes == 6
    assert layout.is_identity and layout.thing_names == ["disc", "block", "wedge"]
    assert layout.model_classes()[(3, True)] == 3 and layout.model_classes()[(4, False)] == 4


def test_cityscapes_layout_things_last():
    m = meta(
        thing_dataset_id_to_contiguous_id={24 + k: 11 + k for k in range(8)},
        stuff_dataset_id_to_contiguous_id={k: k for k in range(11)},
    )
    layout = ClassLayout.from_metadata(m)
    assert layout.thing_ids == tuple(range(11, 19)) and layout.num_classes == 19


def test_separated_layout_things_first_then_stuff(tmp_path):
    path = tmp_path / "p.json"
    cats = [
        {"id": 20, "name": "sky", "isthing": 0},
        {"id": 7, "name": "disc", "isthing": 1},
        {"id": 3, "name": "block", "isthing": 1},
        {"id": 40, "name": "road", "isthing": 0},
    ]
    path.write_text(json.dumps({"categories": cats}))
    layout = ClassLayout.from_metadata(meta(**separated_metadata(str(path))))
    # things sorted by dataset id (block 3, disc 7), then stuff without the "things" class
    assert layout.names == ("block", "disc", "sky", "road")
    assert layout.thing_ids == (0, 1)
    assert layout.output_ids == (0, 1, 1, 2)  # stuff contiguous ids 1, 2
    assert not layout.is_identity
    assert layout.model_classes()[(1, False)] == 2 and layout.model_classes()[(1, True)] == 1


def test_gaps_in_contiguous_ids_are_refused():
    m = meta(thing_dataset_id_to_contiguous_id={1: 0}, stuff_dataset_id_to_contiguous_id={2: 2})
    with pytest.raises(ClassLayoutError, match=r"do not cover 0\.\.1"):
        ClassLayout.from_metadata(m)


def _register_user(user_root, name="layout_user_train"):
    paths = dataset_paths(user_root, "train")
    register_coco_panoptic_from_json(
        name, paths["image_root"], paths["panoptic_root"], paths["panoptic_json"]
    )
    return name


def test_config_layout_from_metadata_and_explicit_keys_checked(user_root):
    name = _register_user(user_root)
    cfg = get_cfg_from(SYNTHETIC_CONFIG, "DATASETS.TRAIN", f"('{name}',)", datasets=True)
    cfg.DATASETS.TEST = ()
    layout = class_layout_from_config(cfg)
    assert layout.thing_ids == (1, 3, 5) and layout.num_classes == 6
    cfg.MODEL.BOX_PANOPTIC.NUM_THING_CLASSES = 3  # right: accepted
    assert class_layout_from_config(cfg) == layout
    cfg.MODEL.BOX_PANOPTIC.NUM_CLASSES = 7
    with pytest.raises(ClassLayoutError, match=rf"NUM_CLASSES = 7 but dataset '{name}' has 6"):
        class_layout_from_config(cfg)
    cfg.MODEL.BOX_PANOPTIC.NUM_CLASSES = -1
    cfg.MODEL.BOX_PANOPTIC.INSTANCE_ID_RANGE = [1, 3]
    with pytest.raises(ClassLayoutError, match=r"contiguous ids \[1, 3, 5\]"):
        class_layout_from_config(cfg)


def test_config_without_metadata_or_keys_is_refused():
    cfg = get_cfg_from(SYNTHETIC_CONFIG)
    bp = cfg.MODEL.BOX_PANOPTIC
    bp.NUM_CLASSES, bp.NUM_THING_CLASSES, bp.INSTANCE_ID_RANGE = -1, -1, []
    cfg.DATASETS.TRAIN = ("not_registered_anywhere",)
    with pytest.raises(ClassLayoutError, match="not_registered_anywhere.*register it first"):
        class_layout_from_config(cfg)
    bp.NUM_CLASSES, bp.INSTANCE_ID_RANGE = 5, [3, 4]
    assert class_layout_from_config(cfg).thing_ids == (3, 4)


def test_semantic_ground_truth_equals_the_semantic_pngs(synthetic_root):
    """Derived from the panoptic PNG + segments_info, it is what the synthetic set's semantic
    PNGs hold (void 255 -> C, the confusion matrix's ignore row)."""
    ev = PanopticSemSegEvaluator("synthetic_panoptic_val", distributed=False)
    records = DatasetCatalog.get("synthetic_panoptic_val")
    c = ev._layout.num_classes
    for r in records:
        sem = np.asarray(Image.open(r["sem_seg_file_name"]), dtype=np.int64)
        sem = np.where(sem == 255, c, sem)
        np.testing.assert_array_equal(ev.ground_truth(r["file_name"]), sem)


def test_semantic_metrics_values():
    # conf[pred, gt] for 2 classes + ignore: class 0: 3 right, 1 predicted as 1; class 1: 2 right
    conf = np.array([[3, 0, 5], [1, 2, 7], [0, 0, 0]])
    res = semantic_metrics(conf, ["a", "b"])
    assert res["IoU-a"] == pytest.approx(100 * 3 / 4)
    assert res["IoU-b"] == pytest.approx(100 * 2 / 3)
    assert res["mIoU"] == pytest.approx(100 * (3 / 4 + 2 / 3) / 2)
    assert res["pACC"] == pytest.approx(100 * 5 / 6)
    assert res["ACC-a"] == pytest.approx(75.0) and res["ACC-b"] == pytest.approx(100.0)
    assert res["fwIoU"] == pytest.approx(100 * (4 / 6 * 3 / 4 + 2 / 6 * 2 / 3))


def _broken_copy(user_root, tmp_path, edit):
    paths = dataset_paths(user_root, "val")
    with open(paths["panoptic_json"]) as f:
        text = f.read()
    path = tmp_path / "panoptic_val.json"
    path.write_text(edit(text))
    return paths, str(path)


def _register_d2(name, paths, json_path, metadata):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_panoptic(name, metadata, paths["image_root"], paths["panoptic_root"], json_path)


def test_detectron2_loader_errors_name_the_dataset_and_file(user_root, tmp_path):
    good = dataset_paths(user_root, "val")["panoptic_json"]
    with open(good) as f:
        js = json.load(f)
    from box_panoptic.data.user_datasets import coco_panoptic_metadata

    metadata = coco_panoptic_metadata(js["categories"])
    paths, not_json = _broken_copy(user_root, tmp_path, lambda t: t[: len(t) // 2])
    _register_d2("broken_json_val", paths, not_json, metadata)
    with pytest.raises(
        PanopticDatasetError, match=rf"'broken_json_val'.*{not_json} is not valid JSON"
    ):
        load_panoptic_dicts(["broken_json_val"])

    js["annotations"][1]["segments_info"][0]["category_id"] = 99
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps(js))
    _register_d2("unknown_cat_val", paths, str(unknown), metadata)
    seg = js["annotations"][1]["segments_info"][0]["id"]
    name = js["annotations"][1]["file_name"]
    with pytest.raises(
        PanopticDatasetError, match=rf"segment {seg} of {name} has unknown category 99"
    ):
        load_panoptic_dicts(["unknown_cat_val"])


def test_synthetic_dataset_on_first_use(tmp_path, monkeypatch):
    """Metadata without the files; the first load generates the split (logged), once."""
    from box_panoptic.data import synthetic

    said = []
    monkeypatch.setattr(synthetic.logger, "info", said.append)
    root = str(tmp_path)
    previous = MetadataCatalog.get("synthetic_panoptic_val").panoptic_json
    register_synthetic_panoptic(root, splits=("val",))
    try:
        meta = MetadataCatalog.get("synthetic_panoptic_val")
        assert meta.thing_classes[:3] == ["disc", "block", "wedge"]
        assert not os.path.exists(dataset_paths(root, "val")["panoptic_json"])
        records = DatasetCatalog.get("synthetic_panoptic_val")
        assert len(records) == 24
        assert len(said) == 1 and "generating the synthetic_panoptic val split" in said[0]
        assert root in said[0]
        assert all(os.path.isfile(r["pan_seg_file_name"]) for r in records)
        assert len(DatasetCatalog.get("synthetic_panoptic_val")) == 24
        assert len(said) == 1  # generated once
    finally:  # back to the session's fixture root
        register_synthetic_panoptic(
            os.path.dirname(os.path.dirname(os.path.dirname(previous))), splits=("val",)
        )


def test_unexpected_mapper_errors_name_the_record(synthetic_root):
    from box_panoptic.data import BoxPanopticDatasetMapper

    cfg = get_cfg_from(SYNTHETIC_CONFIG)
    record = dict(DatasetCatalog.get("synthetic_panoptic_val")[0])
    # a segment without a category: a KeyError inside the mapper
    record["segments_info"] = [
        {k: v for k, v in s.items() if k != "category_id"} for s in record["segments_info"]
    ]
    with pytest.raises(
        RuntimeError, match=r"val_000000\.jpg \(image_id 0, pan_seg_file_name.*KeyError"
    ):
        BoxPanopticDatasetMapper(cfg, True)(record)
