# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Hostile inputs, interrupted writes and numeric edge cases."""

import io
import os
import shutil
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from detectron2.data import DatasetCatalog

from box_panoptic.checkpoint import NonFiniteWeightsError, SafeCheckpointer
from box_panoptic.data import BoxPanopticDatasetMapper, PanopticDatasetError
from box_panoptic.data.datasets import load_synthetic_panoptic, synthetic_metadata
from box_panoptic.data.synthetic import dataset_paths, id2rgb
from box_panoptic.modeling.mask_construction import location_term
from box_panoptic.modeling.upsampling import dense_candidates

from .helpers import (
    ASSEMBLY_RULES,
    IDENTITY_TRAIN_TRANSFORM,
    SYNTHETIC_CONFIG,
    get_cfg_from,
    get_model,
)


@pytest.fixture
def record(synthetic_root, tmp_path):
    """A private copy of one synthetic training record's files."""
    r = dict(DatasetCatalog.get("synthetic_panoptic_train")[0])
    for key in ("file_name", "pan_seg_file_name", "sem_seg_file_name"):
        dst = tmp_path / (key + os.path.splitext(r[key])[1])
        shutil.copy(r[key], dst)
        r[key] = str(dst)
    return r


def _mapper(policy="raise", **opts):
    cfg = get_cfg_from(
        SYNTHETIC_CONFIG, "INPUT.BAD_SAMPLE_POLICY", policy, *IDENTITY_TRAIN_TRANSFORM
    )
    return BoxPanopticDatasetMapper(cfg, True)


def test_truncated_and_empty_images_are_named(record):
    data = open(record["file_name"], "rb").read()
    open(record["file_name"], "wb").write(data[: len(data) // 3])
    with pytest.raises(PanopticDatasetError, match="file_name.jpg"):
        _mapper()(record)
    open(record["file_name"], "wb").close()
    with pytest.raises(PanopticDatasetError, match="file_name.jpg"):
        _mapper()(record)


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
def test_grayscale_rgba_and_16bit_images_work(record, mode):
    rgb = np.asarray(Image.open(record["file_name"]).convert("RGB"))
    if mode == "I;16":
        img = Image.fromarray(rgb[..., 0].astype(np.uint16) * 256)
        path = record["file_name"].replace(".jpg", ".png")
    else:
        img = Image.fromarray(rgb).convert(mode)
        path = record["file_name"].replace(".jpg", ".png")
    img.save(path)
    d = _mapper()(dict(record, file_name=path))
    assert d["image"].dtype == torch.uint8 and tuple(d["image"].shape) == (3, 128, 192)


def test_exif_rotated_jpeg_is_turned_upright(record, tmp_path):
    rgb = np.asarray(Image.open(record["file_name"]).convert("RGB"))
    img = Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1)))  # stored rotated
    exif = img.getexif()
    exif[0x0112] = 8  # orientation: rotate 90 CW to display
    path = str(tmp_path / "exif.jpg")
    img.save(path, exif=exif, quality=100)
    d = _mapper()(dict(record, file_name=path))
    assert tuple(d["image"].shape) == (3, 128, 192)  # matches the panoptic PNG again


def test_png_id_missing_from_json_and_size_mismatch_are_named(record):
    ids = np.asarray(Image.open(record["pan_seg_file_name"])).copy()
    ids[:2, :2] = [9, 9, 9]
    Image.fromarray(ids).save(record["pan_seg_file_name"])
    with pytest.raises(
        PanopticDatasetError, match=r"pan_seg_file_name\.png holds segment id 592137"
    ):
        _mapper()(record)
    Image.fromarray(ids[:100]).save(record["pan_seg_file_name"])
    with pytest.raises(PanopticDatasetError, match="is 192x100 but the image is 192x128"):
        _mapper()(record)


def test_crowd_only_and_empty_images_train_without_nan(record):
    h, w = 128, 192
    ids = np.full((h, w), 4001)
    ids[10:60, 10:90] = 1001
    Image.fromarray(id2rgb(ids)).save(record["pan_seg_file_name"])
    segs = [
        {"id": 4001, "category_id": 3, "iscrowd": 0, "isthing": False},
        {"id": 1001, "category_id": 0, "iscrowd": 1, "isthing": True},
    ]
    d = _mapper()(dict(record, segments_info=segs))
    assert len(d["instances"]) == 0 and d["crowd_mask"].sum() == 50 * 80
    model = get_model().train()
    from detectron2.utils.events import EventStorage

    with EventStorage():
        losses = model([d])
    assert all(torch.isfinite(v) for v in losses.values())


def test_skip_policy_logs_and_counts(record):
    os.remove(record["file_name"])
    mapper = _mapper("skip")
    assert mapper(record) is None and mapper(record) is None
    assert mapper.skipped == 2


def test_json_that_is_not_json_is_named(synthetic_root, tmp_path):
    shutil.copytree(
        os.path.join(synthetic_root, "synthetic_panoptic"), tmp_path / "synthetic_panoptic"
    )
    paths = dataset_paths(str(tmp_path), "val")
    open(paths["panoptic_json"], "w").write("{not json")
    with pytest.raises(PanopticDatasetError, match="panoptic_val2017.json"):
        load_synthetic_panoptic(paths, synthetic_metadata(paths["panoptic_json"]))


def test_checkpoint_write_killed_midway_leaves_previous_intact(tmp_path):
    model = torch.nn.Linear(2, 2)
    ckpt = SafeCheckpointer(model, str(tmp_path))
    ckpt.save("model_final")
    before = open(tmp_path / "model_final.pth", "rb").read()
    real_save = torch.save

    def dying_save(obj, f):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[:100])  # part of the file, then the process "dies"
        raise KeyboardInterrupt

    with torch.no_grad():
        model.weight.add_(1)
    with mock.patch("torch.save", dying_save), pytest.raises(KeyboardInterrupt):
        ckpt.save("model_final")
    assert open(tmp_path / "model_final.pth", "rb").read() == before
    assert open(tmp_path / "last_checkpoint").read() == "model_final.pth"
    SafeCheckpointer(torch.nn.Linear(2, 2)).load(str(tmp_path / "model_final.pth"))


def test_non_finite_weights_and_images_are_refused(tmp_path):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.bias[1] = float("nan")
    torch.save({"model": model.state_dict()}, tmp_path / "bad.pth")
    with pytest.raises(NonFiniteWeightsError, match="'bias'"):
        SafeCheckpointer(torch.nn.Linear(2, 2)).load(str(tmp_path / "bad.pth"))
    net = get_model().eval()
    img = torch.zeros(3, 32, 32)
    img[0, 3, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        net([{"image": img}])


def test_degenerate_boxes_are_safe():
    q = torch.tensor([[5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 10.0, 10.0]])
    d = torch.tensor([[5.0, 5.0, 5.0, 9.0], [3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 10.0, 10.0]])
    for mode in ("iou", "giou_plus1"):
        assert torch.isfinite(location_term(q, d, mode)).all()
    from fvcore.nn import giou_loss

    assert torch.isfinite(giou_loss(q, d[:2], reduction="none")).all()


def test_bf16_autocast_on_cpu_gives_finite_losses_and_masks(synthetic_root):
    cfg = get_cfg_from(
        SYNTHETIC_CONFIG, "INPUT.MIN_SIZE_TRAIN", (128,), "INPUT.MAX_SIZE_TRAIN", 192
    )
    mapper = BoxPanopticDatasetMapper(cfg, True)
    data = [mapper(r) for r in DatasetCatalog.get("synthetic_panoptic_train")[:2]]
    model = get_model(SYNTHETIC_CONFIG, "MODEL.BOX_PANOPTIC.MASK_LOSS", True).train()
    from detectron2.utils.events import EventStorage

    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(data)
    assert all(torch.isfinite(v.float()) for v in losses.values())
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.head.box_cls_logits.bias.fill_(3.0)
        out = model([{"image": data[0]["image"]}])[0]
    assert len(out["instances"]) > 0
    assert torch.isfinite(out["sem_seg"].float()).all()


@settings(max_examples=40, deadline=None, derandomize=True)  # reproducible in CI
@given(
    st.integers(0, 6),
    st.integers(0, 2**31 - 1),
    st.floats(0.05, 0.9),
    st.sampled_from(ASSEMBLY_RULES),
)
def test_assembly_properties(p, seed, sigma, fn):
    g = torch.Generator().manual_seed(seed)
    h, w, c = 17, 23, 5
    masks = torch.rand(p, h, w, generator=g) ** 2
    classes = torch.randint(0, 2, (p,), generator=g)
    scores = torch.rand(p, generator=g)
    sem = torch.randn(c, h, w, generator=g)
    is_thing = torch.tensor([True, True, False, False, False])
    kw = dict(mask_thresh=sigma, overlap_thresh=0.5, instance_area_min=2, stuff_area_min=5)
    active = torch.ones(p, dtype=torch.bool)
    r = fn(dense_candidates(masks), classes, scores, active, sem, is_thing, **kw)
    pan = r.panoptic
    n = len(r.category)
    assert set(pan.unique().tolist()) - {0} == set(range(1, n + 1))  # ids <-> segments
    areas = torch.bincount(pan.reshape(-1).long(), minlength=n + 1)[1:]
    assert torch.equal(areas, r.area) and (areas > 0).all()  # no empty segment
    for cat, isthing in zip(r.category.tolist(), r.isthing.tolist()):
        assert bool(is_thing[cat]) == isthing  # things only from thing classes
    inst = r.isthing
    assert (r.area[inst] >= 2).all()
    again = fn(dense_candidates(masks), classes, scores, active, sem, is_thing, **kw)
    assert torch.equal(again.panoptic, pan)  # deterministic


def _write_scene(record, h, w, thing_box=None):
    """Replace ``record``'s image and panoptic PNG by an h x w scene: stuff everywhere and,
    optionally, one thing instance in ``thing_box`` (y0, y1, x0, x1)."""
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(record["file_name"])
    ids = np.full((h, w), 4001)
    segs = [{"id": 4001, "category_id": 3, "iscrowd": 0, "isthing": False}]
    if thing_box:
        y0, y1, x0, x1 = thing_box
        ids[y0:y1, x0:x1] = 1001
        segs.append({"id": 1001, "category_id": 0, "iscrowd": 0, "isthing": True})
    Image.fromarray(id2rgb(ids)).save(record["pan_seg_file_name"])
    return dict(record, height=h, width=w, segments_info=segs)


@pytest.mark.parametrize("h,w,box", [(1, 1, None), (20, 4000, (2, 18, 100, 400))])
def test_one_pixel_and_4000x20_images_train_and_infer(record, h, w, box):
    from detectron2.utils.events import EventStorage

    d = _mapper()(_write_scene(record, h, w, box))
    assert (d["sem_seg"] == 3).sum() > 0
    # the instance is kept exactly when some of its pixels survive the resize to 192 px wide
    assert len(d["instances"]) == int(bool((d["sem_seg"] == 0).any()))
    model = get_model().train()
    with EventStorage():
        losses = model([d])
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.full((3, h, w), 90, dtype=torch.uint8)}])[0]
    pan, segs = out["panoptic_seg"]
    assert pan.shape == (h, w) and out["sem_seg"].shape[-2:] == (h, w)
    assert set(pan.unique().tolist()) - {0} == {s["id"] for s in segs}


def test_json_segment_missing_from_png_is_named(record):
    r = _write_scene(record, 128, 192)
    r["segments_info"].append({"id": 2002, "category_id": 1, "iscrowd": 0, "isthing": True})
    with pytest.raises(PanopticDatasetError, match=r"lists segment id 2002 .*not contain"):
        _mapper()(r)


def test_unknown_category_id_is_named(synthetic_root, tmp_path):
    import json

    shutil.copytree(
        os.path.join(synthetic_root, "synthetic_panoptic"), tmp_path / "synthetic_panoptic"
    )
    paths = dataset_paths(str(tmp_path), "val")
    gt = json.load(open(paths["panoptic_json"]))
    seg = gt["annotations"][2]["segments_info"][0]
    seg["category_id"] = 999
    json.dump(gt, open(paths["panoptic_json"], "w"))
    with pytest.raises(PanopticDatasetError, match=rf"segment {seg['id']} .*unknown category 999"):
        load_synthetic_panoptic(paths, synthetic_metadata(paths["panoptic_json"]))


def test_zero_width_and_zero_height_boxes_are_dropped_in_weak_supervision(record):
    cfg = get_cfg_from(
        SYNTHETIC_CONFIG, "MODEL.BOX_PANOPTIC.WEAK_SUPERVISION", True, *IDENTITY_TRAIN_TRANSFORM
    )
    segs = [dict(s) for s in record["segments_info"]]
    flat = [s for s in segs if s["isthing"] and not s["iscrowd"]]
    assert len(flat) >= 2
    extra = dict(flat[0], id=77, bbox=[10, 10, 30, 0])  # zero height
    flat[0]["bbox"] = [10, 10, 0, 30]  # zero width
    d = BoxPanopticDatasetMapper(cfg, True)(dict(record, segments_info=segs + [extra]))
    boxes = d["instances"].gt_boxes.tensor
    assert len(boxes) == len(flat) - 1
    assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()


def test_tools_leave_the_training_runs_output_dir_alone(tmp_path):
    """A tool run on a training run's config (sigma search, diagnosis, export) reads OUTPUT_DIR
    but must not overwrite the run's config.yaml nor add to its log.txt."""
    from box_panoptic.engine import setup_for_tool

    from .helpers import SYNTHETIC_CONFIG

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("the training run's config\n")
    (run / "log.txt").write_text("the training run's log\n")
    cfg = setup_for_tool(SYNTHETIC_CONFIG, ["OUTPUT_DIR", str(run), "SEED", "3"])
    assert cfg.OUTPUT_DIR == str(run) and cfg.SEED == 3
    assert (run / "config.yaml").read_text() == "the training run's config\n"
    assert (run / "log.txt").read_text() == "the training run's log\n"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "log.txt"]
    # the config's seed is applied, as default_setup would
    first = torch.rand(3)
    setup_for_tool(SYNTHETIC_CONFIG, ["OUTPUT_DIR", str(run), "SEED", "3"])
    assert torch.equal(torch.rand(3), first)
