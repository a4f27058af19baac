# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""The supplementary's analyses as features: no-levelness assembly, weak supervision, sigma
search."""

import os
from unittest import mock

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.events import EventStorage

from box_panoptic.data import BoxPanopticDatasetMapper
from box_panoptic.evaluation.sigma_search import (
    POST_DECODE_KEYS,
    CacheMismatchError,
    build_cache,
    cache_config_text,
    sweep,
)
from box_panoptic.modeling.mask_construction import (
    boxes_from_ltrb,
    dense_box_map,
    resized_level_regressions,
    soft_masks,
)

from .helpers import (
    CONFIGS,
    IDENTITY_TRAIN_TRANSFORM,
    SYNTHETIC_CONFIG,
    get_cfg_from,
    get_model,
    sgd_with_warmup,
)

WEAK_CONFIG = os.path.join(CONFIGS, "Synthetic", "box_panoptic_R_18_synthetic_weak.yaml")


def test_no_levelness_equals_levelness_when_levelness_is_one_hot_on_the_right_level():
    """A scene of two objects: on the right level every pixel of an object regresses that
    object's box, the other levels (and background pixels) regress tiny boxes. With the IoU of
    Eq. S2, the max over levels (Eq. S3) and the levelness pick (Eq. 15) give the same masks."""
    h4, w4 = 12, 16
    objects = torch.tensor([[8.0, 8.0, 40.0, 30.0], [30.0, 20.0, 60.0, 46.0]])
    ys, xs = torch.meshgrid(torch.arange(h4) * 4.0 + 2, torch.arange(w4) * 4.0 + 2, indexing="ij")
    right = torch.full((4, h4, w4), 0.5)
    for b in objects:  # later object wins where they overlap
        inside = (xs > b[0]) & (xs < b[2]) & (ys > b[1]) & (ys < b[3])
        ltrb = torch.stack([xs - b[0], ys - b[1], b[2] - xs, b[3] - ys])
        right = torch.where(inside, ltrb, right)
    regs = [torch.full((1, 4, h4, w4), 0.5), right[None], torch.full((1, 4, h4 // 2, w4 // 2), 0.5)]
    lev = torch.full((1, 4, h4, w4), -3.0)
    lev[:, 2] = 3.0  # one-hot on level index 1 (channel 0 is background)
    dense = dense_box_map(regs, lev, 4)[0]
    every = boxes_from_ltrb(resized_level_regressions(regs, (h4, w4)), 4)[0]
    sem = torch.rand(3, h4, w4, generator=torch.Generator().manual_seed(0)).softmax(0)
    cls = torch.tensor([0, 1])
    a = soft_masks(objects, cls, dense, sem, "iou")
    b = soft_masks(objects, cls, every, sem, "iou")
    torch.testing.assert_close(a, b)
    assert (a >= 0.5 * sem[:2]).sum() > 20  # the objects' pixels are accepted


def test_no_levelness_config_runs_end_to_end():
    model = get_model(
        SYNTHETIC_CONFIG,
        "MODEL.BOX_PANOPTIC.USE_LEVELNESS",
        False,
        "MODEL.BOX_PANOPTIC.DENSE_BOX_SOURCE",
        "levelness",
    ).eval()
    blank = [{"image": torch.zeros(3, 64, 96, dtype=torch.uint8)}]
    with torch.no_grad():
        out = model.network(model.preprocess_image(blank))
    assert model.postprocessor.dense_boxes(out).dim() == 5  # every level's: (N, L, 4, h4, w4)
    with torch.no_grad():
        model.head.box_cls_logits.bias.fill_(3.0)
        out = model([{"image": torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)}])[0]
    assert len(out["instances"]) > 0
    assert set(out["panoptic_seg"][0].unique().tolist()) - {0} == {
        s["id"] for s in out["panoptic_seg"][1]
    }
    with pytest.raises(ValueError, match="USE_LEVELNESS False .* needs DENSE_BOX_SOURCE"):
        get_model(SYNTHETIC_CONFIG, "MODEL.BOX_PANOPTIC.USE_LEVELNESS", False)


def test_weak_mapper_never_reads_instance_masks(synthetic_root):
    cfg = get_cfg_from(WEAK_CONFIG, *IDENTITY_TRAIN_TRANSFORM)
    mapper = BoxPanopticDatasetMapper(cfg, True)
    record = DatasetCatalog.get("synthetic_panoptic_train")[0]
    from PIL import Image

    real_open = Image.open
    opened = []

    def spy(path, *a, **k):
        opened.append(str(path))
        return real_open(path, *a, **k)

    with mock.patch("PIL.Image.open", spy):
        d = mapper(record)
    assert not any("panoptic_train2017" in p and "semseg" not in p for p in opened), opened
    assert not d["instances"].has("gt_masks")
    boxes = [s["bbox"] for s in record["segments_info"] if s["isthing"] and not s["iscrowd"]]
    assert len(d["instances"]) == len(boxes)
    assert sorted(d["instances"].gt_boxes.tensor.tolist()) == sorted(
        [float(x), float(y), float(x + w), float(y + h)] for x, y, w, h in boxes
    )


def test_weak_training_reduces_loss(synthetic_root):
    torch.manual_seed(0)
    cfg = get_cfg_from(WEAK_CONFIG, *IDENTITY_TRAIN_TRANSFORM)  # the same batch every run
    model = get_model(WEAK_CONFIG).train()
    mapper = BoxPanopticDatasetMapper(cfg, True)
    data = [mapper(r) for r in DatasetCatalog.get("synthetic_panoptic_train")[:4]]
    opt, warmup = sgd_with_warmup(model)  # LR 0.005: see there
    totals = []
    with EventStorage():
        for _ in range(30):
            losses = model(data)
            assert "loss_mask" not in losses
            total = sum(losses.values())
            opt.zero_grad()
            total.backward()
            opt.step()
            warmup.step()
            totals.append(total.item())
    assert sum(totals[-4:]) / 4 < 0.8 * sum(totals[:4]) / 4, str(totals)


def test_sigma_cache_key_leaves_out_only_what_is_read_after_decoding(synthetic_root):
    """A sweep may change the post-decode keys on one cache (they do not change the decoded
    images it holds); anything decode() reads, the input size or the dataset needs a new one."""
    val = "synthetic_panoptic_val"
    cfg = get_cfg_from(SYNTHETIC_CONFIG)
    assert all(k in cfg.MODEL.BOX_PANOPTIC for k in POST_DECODE_KEYS)
    base = cache_config_text(cfg, val)
    post = [
        ("MODEL.BOX_PANOPTIC.THING_SEMANTICS", "class"),
        ("MODEL.BOX_PANOPTIC.LOCATION_TERM", "iou"),
        ("MODEL.BOX_PANOPTIC.MASK_THRESH", 0.5),
        ("MODEL.BOX_PANOPTIC.DET_SCORE_THRESH", 0.5),
        ("MODEL.BOX_PANOPTIC.ASSEMBLY", "assemble_paste"),
        ("MODEL.BOX_PANOPTIC.STUFF_AREA_MIN", 0),
        ("MODEL.BOX_PANOPTIC.CALIBRATION.ENABLED", True),
        ("OUTPUT_DIR", "/elsewhere"),
    ]
    assert cache_config_text(get_cfg_from(SYNTHETIC_CONFIG, *sum(post, ())), val) == base
    for opts in (
        ("MODEL.BOX_PANOPTIC.PRE_NMS_THRESH", 0.01),
        ("MODEL.BOX_PANOPTIC.POST_NMS_TOP_N", 50),
        ("INPUT.MIN_SIZE_TEST", 0),
    ):
        assert cache_config_text(get_cfg_from(SYNTHETIC_CONFIG, *opts), val) != base, opts
    assert cache_config_text(cfg, "synthetic_panoptic_train") != base
    # the claim itself: models that differ in those keys decode an image identically
    x = [BoxPanopticDatasetMapper(cfg, False)(DatasetCatalog.get(val)[0])]

    def decoded(*opts):
        model = get_model(SYNTHETIC_CONFIG, *opts).eval()
        with torch.no_grad():
            images = model.preprocess_image(x)
            out = model.network(images)
            (d,) = model.postprocessor.decode(out, images, [(128, 192)])
        return d

    ref = decoded()
    for key, value in post[:-1]:
        d = decoded(key, value)
        for field in ("boxes", "scores", "classes", "dense", "sem_seg_stride8"):
            assert torch.equal(getattr(d, field), getattr(ref, field)), (key, field)


def test_sigma_sweep_matches_direct_evaluation_and_refuses_bad_input(synthetic_root):
    model = get_model().eval()
    with torch.no_grad():
        model.head.box_cls_logits.bias.fill_(1.0)
    cfg = get_cfg_from(SYNTHETIC_CONFIG)
    mapper = BoxPanopticDatasetMapper(cfg, False)
    records = DatasetCatalog.get("synthetic_panoptic_val")[:3]
    meta = MetadataCatalog.get("synthetic_panoptic_val")
    loader = [[mapper(r)] for r in records]
    cache = build_cache(model, loader, "fp-A")
    rows = sweep(model, cache, "fp-A", records, meta, [0.3, 0.5], [0.1])
    assert [r["sigma"] for r in rows] == [0.3, 0.5]
    # the cached path equals running the model with that sigma
    for r, sigma in zip(rows, (0.3, 0.5)):
        model.postprocessor.mask_thresh, model.postprocessor.det_score_thresh = sigma, 0.1
        with torch.no_grad():
            direct = [model([x[0]])[0] for x in loader]
        cached = [model.postprocessor.postprocess(c["decoded"]) for c in cache["items"]]
        for a, b in zip(direct, cached):
            assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0])
    # the oracle decomposition: the ground truth's boxes, semantics and dense boxes together
    # make near-perfect things from a random model's outputs; each run keeps the grid
    oracle = sweep(model, cache, "fp-A", records, meta, [0.3, 0.5], [0.1], ["boxes"])
    full = sweep(model, cache, "fp-A", records, meta, [0.3], [0.1], ["boxes", "semantics", "dense"])
    assert [r["sigma"] for r in oracle] == [0.3, 0.5]
    assert full[0]["PQ_th"] > 50 > rows[0]["PQ_th"]
    assert full[0]["PQ_th"] > oracle[0]["PQ_th"]
    with pytest.raises(ValueError, match="unknown parts"):
        sweep(model, cache, "fp-A", records, meta, [0.3], [0.1], ["masks"])
    with pytest.raises(ValueError, match="grid is empty"):
        sweep(model, cache, "fp-A", records, meta, [], [0.1])
    with pytest.raises(CacheMismatchError, match="another model"):
        sweep(model, cache, "fp-B", records, meta, [0.3], [0.1])
    old_format = dict(cache, items=[{"image_id": 0}])
    with pytest.raises(CacheMismatchError, match="older format"):
        sweep(model, old_format, "fp-A", records, meta, [0.3], [0.1])
