# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""The BoxPanoptic inference path: shapes, dense box map, location term, NMS chain, assembly,
eval forward, bad input."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from detectron2.layers import ShapeSpec
from detectron2.structures import BitMasks, Boxes, Instances

from box_panoptic.modeling import (
    BoxPanoptic,
    BoxPanopticCriterion,
    BoxPanopticPostProcessor,
    LocationAssignment,
)
from box_panoptic.modeling.assembly import (
    assemble_argmax,
    assemble_argmax_keep_by_score,
    assemble_paste,
)
from box_panoptic.modeling.head import BoxPanopticHead, LevelnessHead, fused_conv3x3
from box_panoptic.modeling.inference import decode_level, select_detections
from box_panoptic.modeling.mask_construction import dense_box_map, location_term, soft_masks
from box_panoptic.modeling.upsampling import dense_candidates

from .helpers import CITYSCAPES_CONFIG, get_cfg_from, get_model


def test_head_shapes_at_cityscapes_resolution():
    """Released layout at 1024x2048: P3..P7 grids and the stride-8 / stride-4 fused heads."""
    torch.manual_seed(0)
    cfg = get_cfg_from(CITYSCAPES_CONFIG)
    shapes = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in range(3, 8)}
    head = BoxPanopticHead(cfg, shapes).eval()
    lev = LevelnessHead(cfg).eval()
    sizes = [(128, 256), (64, 128), (32, 64), (16, 32), (8, 16)]
    feats = [torch.randn(1, 256, h, w) * 0.1 for h, w in sizes]
    with torch.no_grad():
        out = head(feats)
        levelness = lev(out["bbox_feats"])
    assert [tuple(t.shape) for t in out["box_cls"]] == [(1, 8, h, w) for h, w in sizes]
    assert [tuple(t.shape) for t in out["box_reg"]] == [(1, 4, h, w) for h, w in sizes]
    assert tuple(levelness.shape) == (1, 6, 256, 512)
    assert all((r > 0).all() for r in out["box_reg"])  # exp: distances are positive
    assert sum(p.numel() for p in lev.parameters()) == 6 * 1280 * 9 + 6


@pytest.mark.parametrize("channels,outputs", [(3, 4), (40, 3)])  # (40, 3): mix, then resize
def test_fused_conv_equals_concat_conv(channels, outputs):
    torch.manual_seed(0)
    sizes = [(16, 20), (8, 10), (4, 5), (2, 3)]
    feats = [torch.randn(2, channels, *s) for s in sizes]
    conv = torch.nn.Conv2d(4 * channels, outputs, 3, padding=1)
    cat = torch.cat(
        [F.interpolate(f, size=(16, 20), mode="bilinear", align_corners=False) for f in feats],
        dim=1,
    )
    torch.testing.assert_close(
        fused_conv3x3(conv, feats, (16, 20)), conv(cat), atol=1e-5, rtol=1e-5
    )
    # the levelness head's case: every level resized (x2 and more)
    torch.testing.assert_close(
        fused_conv3x3(conv, feats, (32, 40)),
        conv(
            torch.cat(
                [
                    F.interpolate(f, size=(32, 40), mode="bilinear", align_corners=False)
                    for f in feats
                ],
                dim=1,
            )
        ),
        atol=1e-5,
        rtol=1e-5,
    )


def test_dense_box_map_with_one_hot_levelness_picks_that_level():
    torch.manual_seed(0)
    regs = [torch.rand(1, 4, 8 // 2**i, 12 // 2**i) * 50 + 1 for i in range(3)]
    h4, w4 = 16, 24
    for chosen in range(3):
        lev = torch.full((1, 4, h4, w4), -5.0)
        lev[:, 0] = 100.0  # background channel is ignored at inference
        lev[:, chosen + 1] = 1.0
        boxes = dense_box_map(regs, lev, stride=4)[0]
        up = F.interpolate(regs[chosen], size=(h4, w4), mode="bilinear", align_corners=False)[0]
        ys, xs = torch.meshgrid(
            torch.arange(h4) * 4.0 + 2, torch.arange(w4) * 4.0 + 2, indexing="ij"
        )
        expect = torch.stack([xs - up[0], ys - up[1], xs + up[2], ys + up[3]])
        torch.testing.assert_close(boxes, expect)


def _brute_force_location(q, d, mode):
    out = torch.zeros(len(q), len(d))
    for i, j in itertools.product(range(len(q)), range(len(d))):
        a, b = q[i].tolist(), d[j].tolist()
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        if mode == "iou":
            out[i, j] = inter / union
        else:
            c = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1])) + 1e-7
            out[i, j] = (inter + 1) / (union + 1) - (c - union) / c
    return out


@pytest.mark.parametrize("mode", ["giou_plus1", "iou"])
def test_location_term_matches_brute_force(mode):
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(7, 2, generator=g) * 50
    q = torch.cat([xy, xy + torch.rand(7, 2, generator=g) * 30 + 1], 1)
    xy = torch.rand(11, 2, generator=g) * 50
    d = torch.cat([xy, xy + torch.rand(11, 2, generator=g) * 30 + 1], 1)
    d[3] = q[2]  # identical boxes: IoU 1
    got = location_term(q, d, mode)
    torch.testing.assert_close(got, _brute_force_location(q, d, mode), atol=1e-5, rtol=1e-5)
    assert got[2, 3] == pytest.approx(1.0, abs=1e-6)


def test_soft_masks_product_and_no_levelness_max():
    q = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    dense = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]).t().reshape(4, 1, 2)
    sem = torch.tensor([[[0.2, 0.9]], [[0.8, 0.1]]])  # (C=2, 1, 2)
    s = soft_masks(q, torch.tensor([1]), dense, sem, "iou")
    torch.testing.assert_close(s, torch.tensor([[[0.8, 0.0]]]))
    # every level's boxes: the max over levels (supplementary Eq. S3)
    levels = torch.stack([dense, dense.flip(-1)])
    s2 = soft_masks(q, torch.tensor([1]), levels, sem, "iou")
    torch.testing.assert_close(s2, torch.tensor([[[0.8, 0.1]]]))


def test_decode_threshold_topk_and_clipping():
    cls = torch.full((2, 2, 2), -10.0)
    cls[0, 0, 0] = 2.0  # p = 0.88
    cls[1, 1, 1] = 0.0  # p = 0.5
    cls[1, 0, 1] = -2.5  # p = 0.076 > 0.06
    ctr = torch.zeros(1, 2, 2)  # 0.5
    reg = torch.full((4, 2, 2), 100.0)
    boxes, scores, labels, loc = decode_level(cls, reg, ctr, 8, (15, 20), 0.06, 2)
    assert labels.tolist() == [0, 1] and loc.tolist() == [0, 3]  # top-2 of 3 candidates
    torch.testing.assert_close(scores, torch.sigmoid(torch.tensor([2.0, 0.0])) * 0.5)
    assert boxes.tolist() == [[0, 0, 19, 14], [0, 0, 19, 14]]


def test_nms_chain_hand_built():
    boxes = torch.tensor(
        [
            [0, 0, 10, 10],
            [0, 0, 10, 10.5],
            [0, 0, 10, 10.1],
            [50, 50, 60, 60],
            [0, 0, 10, 10],
            [30, 30, 40, 40.0],
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = torch.tensor([0, 0, 1, 0, 1, 2])
    keep = select_detections(boxes, scores, labels, 0.6, 0.97, 100)
    # per class: 1 suppressed by 0 (class 0), 4 by 2 (class 1); agnostic 0.97: 2 (IoU 0.99 with
    # 0) suppressed; 3 and 5 stay
    assert keep.tolist() == [0, 3, 5]
    assert select_detections(boxes, scores, labels, 0.6, 1.0, 100).tolist() == [0, 2, 3, 5]
    assert select_detections(boxes, scores, labels, 0.6, 0.97, 2).tolist() == [0, 3]


def _check_assembly(r, det_classes, is_thing):
    pan = r.panoptic
    ids = set(pan.unique().tolist()) - {0}
    assert ids == set(range(1, len(r.category) + 1))
    for k, (c, t) in enumerate(zip(r.category.tolist(), r.isthing.tolist())):
        assert bool(is_thing[c]) == t
        assert (pan == k + 1).sum() == r.area[k]
        assert r.area[k] > 0


@pytest.mark.parametrize("fn", [assemble_argmax, assemble_paste])
def test_assembly_invariants(fn):
    g = torch.Generator().manual_seed(0)
    h, w = 40, 50
    masks = torch.zeros(3, h, w)
    masks[0, 5:25, 5:25] = 0.9
    masks[1, 15:35, 15:45] = 0.6  # overlaps 0
    masks[2, 0:3, 0:3] = 0.5
    scores = torch.tensor([0.5, 0.9, 0.8])
    classes = torch.tensor([0, 1, 1])
    is_thing = torch.tensor([True, True, False, False])
    sem = torch.rand(4, h, w, generator=g)
    sem[2, :, :25] += 2
    sem[3, :, 25:] += 2
    r = fn(
        dense_candidates(masks),
        classes,
        scores,
        torch.ones(3, dtype=torch.bool),
        sem,
        is_thing,
        mask_thresh=0.4,
        overlap_thresh=0.5,
        instance_area_min=0,
        stuff_area_min=10,
    )
    _check_assembly(r, classes, is_thing)
    pan = r.panoptic
    cats = r.category
    inst_ids = [k + 1 for k, t in enumerate(r.isthing.tolist()) if t]
    assert len(inst_ids) == 3
    overlap = pan[20, 20].item()  # both 0 and 1 accept it
    expect = 0 if fn is assemble_argmax else 1  # higher S_j vs higher score
    assert cats[overlap - 1] == classes[expect] and r.score[overlap - 1] == scores[expect]
    # stuff fills the rest, void nowhere since stuff areas are large
    assert (pan > 0).all()


def _one_object_three_detections():
    """Three detections of one 12x12 thing (a thing-class semantic argmax), all accepting it
    whole; S_j is highest for detection 0 on the left third, 1 on the middle, 2 on the right, so
    under ``assemble_argmax`` each keeps a third of its accepted pixels."""
    h, w = 12, 12
    masks = torch.full((3, h, w), 0.5)
    for j in range(3):
        masks[j, :, 4 * j : 4 * j + 4] = 0.9
    scores = torch.tensor([0.3, 0.8, 0.5])
    sem = torch.zeros(2, h, w)
    sem[0] = 1.0  # thing class 0 everywhere: free pixels become void
    args = (
        dense_candidates(masks),
        torch.zeros(3, dtype=torch.long),
        scores,
        torch.ones(3, dtype=torch.bool),
        sem,
        torch.tensor([True, False]),
    )
    kw = dict(mask_thresh=0.4, overlap_thresh=0.5, instance_area_min=0, stuff_area_min=1)
    return args, kw


def test_argmax_assembly_drops_mutually_overlapping_detections():
    """What assemble_argmax_keep_by_score fixes: every detection of the object goes, and the
    object is void."""
    args, kw = _one_object_three_detections()
    r = assemble_argmax(*args, **kw)
    assert len(r.category) == 0 and (r.panoptic == 0).all()


def test_keep_by_score_keeps_the_highest_scoring_detection_of_an_object():
    args, kw = _one_object_three_detections()
    r = assemble_argmax_keep_by_score(*args, **kw)
    assert r.isthing.tolist() == [True]
    assert r.score[0] == args[2][1]  # detection 1, the highest-scoring, takes the object whole
    assert (r.panoptic == 1).all() and int(r.area[0]) == 144


def test_keep_by_score_splits_touching_objects_by_mask_not_by_score():
    """Two touching objects, columns 0-19 and 20-39: detection 0 (score 0.9) bleeds into the
    second's first 5 columns at S = 0.5, where detection 1 (score 0.5) has S = 0.9. Both stay
    (detection 1 keeps 15 of its 20 pixels by score); the edge follows S_j, not the score."""
    h, w = 6, 40
    masks = torch.zeros(2, h, w)
    masks[0, :, :20] = 0.8
    masks[0, :, 20:25] = 0.5
    masks[1, :, 20:] = 0.9
    sem = torch.zeros(2, h, w)
    sem[0] = 1.0
    args = (
        dense_candidates(masks),
        torch.zeros(2, dtype=torch.long),
        torch.tensor([0.9, 0.5]),
        torch.ones(2, dtype=torch.bool),
        sem,
        torch.tensor([True, False]),
    )
    kw = dict(mask_thresh=0.4, overlap_thresh=0.5, instance_area_min=0, stuff_area_min=1)
    r = assemble_argmax_keep_by_score(*args, **kw)
    paste = assemble_paste(*args, **kw)
    first = r.panoptic[0, 0]
    assert (r.panoptic[:, :20] == first).all() and (r.panoptic[:, 20:] != first).all()
    assert (r.panoptic[:, 20:] > 0).all() and r.area.tolist() == [120, 120]
    assert (paste.panoptic[:, 20:25] == paste.panoptic[0, 0]).all()  # paste: by score


def test_assembly_without_detections_is_all_stuff_or_void():
    sem = torch.zeros(3, 10, 10)
    sem[0, :, :5] = 5  # a thing class wins here -> void, no instance
    sem[2, :, 5:] = 5
    r = assemble_argmax(
        dense_candidates(torch.zeros(0, 10, 10)),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0),
        torch.zeros(0, dtype=torch.bool),
        sem,
        torch.tensor([True, False, False]),
        mask_thresh=0.4,
        overlap_thresh=0.5,
        instance_area_min=0,
        stuff_area_min=1,
    )
    assert (r.panoptic[:, :5] == 0).all() and (r.panoptic[:, 5:] == 1).all()
    assert r.category.tolist() == [2] and r.isthing.tolist() == [False]


def _force_detections(model):
    """Bias the box classifier and centerness so that every location is a strong candidate."""
    with torch.no_grad():
        model.head.box_cls_logits.bias.fill_(3.0)
        model.head.centerness.bias.fill_(3.0)


def test_eval_forward_two_sizes_and_output_contract():
    model = get_model().eval()
    _force_detections(model)
    inputs = [
        {"image": torch.randint(0, 255, (3, 200, 250), dtype=torch.uint8)},
        {
            "image": torch.randint(0, 255, (3, 200, 249), dtype=torch.uint8),
            "height": 100,
            "width": 125,
        },
    ]
    with torch.no_grad():
        outs = model(inputs)
    for out, (h, w) in zip(outs, [(200, 250), (100, 125)]):
        pan, segs = out["panoptic_seg"]
        assert tuple(pan.shape) == (h, w) and tuple(out["sem_seg"].shape) == (6, h, w)
        inst = out["instances"]
        assert 0 < len(inst) <= 100 and tuple(inst.pred_masks.shape[1:]) == (h, w)
        assert set(inst.pred_classes.tolist()) <= {0, 1, 2}
        assert (inst.pred_boxes.tensor[:, 2] <= w).all() and (
            inst.pred_boxes.tensor[:, 3] <= h
        ).all()
        assert set(pan.unique().tolist()) - {0} == {s["id"] for s in segs}
        for s in segs:
            assert s["isthing"] == (s["category_id"] in (0, 1, 2))
            assert (pan == s["id"]).sum() == s["area"]
    # batching does not change a result
    with torch.no_grad():
        alone = model(inputs[:1])[0]
    torch.testing.assert_close(alone["sem_seg"], outs[0]["sem_seg"], atol=1e-4, rtol=1e-4)


def test_no_detection_path():
    model = get_model().eval()
    with torch.no_grad():
        model.head.box_cls_logits.bias.fill_(-50.0)
        out = model([{"image": torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)}])[0]
    pan, segs = out["panoptic_seg"]
    assert len(out["instances"]) == 0 and all(not s["isthing"] for s in segs)
    assert set(pan.unique().tolist()) - {0} == {s["id"] for s in segs}


def test_tiny_image_smaller_than_largest_stride():
    model = get_model().eval()
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 20, 33), dtype=torch.uint8)}])[0]
    assert tuple(out["panoptic_seg"][0].shape) == (20, 33)


@pytest.mark.parametrize(
    "image,pattern",
    [
        (torch.zeros(1, 32, 32, dtype=torch.uint8), r"\(3, H, W\).*\(1, 32, 32\)"),
        (torch.zeros(4, 32, 32, dtype=torch.uint8), r"\(4, 32, 32\)"),
        (torch.zeros(3, 32, 32, dtype=torch.int32), "torch.int32"),
    ],
)
def test_bad_images_are_refused(image, pattern):
    model = get_model().eval()
    with pytest.raises(ValueError, match=pattern):
        model([{"image": image}])


def test_config_disagreeing_with_dataset_metadata_is_refused(synthetic_root):
    from detectron2.modeling import build_model

    from .helpers import SYNTHETIC_CONFIG

    cfg = get_cfg_from(SYNTHETIC_CONFIG, "MODEL.BOX_PANOPTIC.NUM_CLASSES", 7, datasets=True)
    with pytest.raises(ValueError, match=r"NUM_CLASSES = 7 .* has 6 classes"):
        build_model(cfg)
    cfg = get_cfg_from(SYNTHETIC_CONFIG, datasets=True)
    assert isinstance(build_model(cfg), BoxPanoptic)


def test_explicit_construction_without_cfg():
    """Other projects can build the meta-architecture, its post-processor and its criterion
    from modules and arguments (no cfg), and train it."""
    ref = get_model()
    strides = [4, 8, 16, 32, 64]  # the synthetic config's P2-P6
    model = BoxPanoptic(
        backbone=ref.backbone,
        head=ref.head,
        sem_seg_head=ref.sem_seg_head,
        levelness_head=ref.levelness_head,
        postprocessor=BoxPanopticPostProcessor(
            strides=strides, thing_semantic_ids=[0, 1, 2], stuff_area_min=256
        ),
        criterion=BoxPanopticCriterion(
            strides=strides,
            thing_semantic_ids=[0, 1, 2],
            assignment=LocationAssignment.from_settings([8, 16, 32, 64], 5, "instance"),
            loss_weights={"loss_levelness": 0.5},
        ),
        in_features=ref.in_features,
        pixel_mean=[127.5] * 3,
        pixel_std=[64.0] * 3,
    ).eval()
    assert model.strides == ref.strides == strides
    x = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)}]
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0]["sem_seg"], ref.eval()(x)[0]["sem_seg"])
    # one training step, with the criterion's weights
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 10:40, 12:44] = True
    inst = Instances((64, 64), gt_boxes=Boxes(torch.tensor([[12.0, 10.0, 44.0, 40.0]])))
    inst.gt_classes = torch.tensor([1])
    inst.gt_masks = BitMasks(masks)
    sem = torch.full((64, 64), 4, dtype=torch.long)
    sem[masks[0]] = 1
    batch = [dict(x[0], instances=inst, sem_seg=sem)]
    model.train()
    ref.train()
    losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_box", "loss_ctr", "loss_sem_seg", "loss_levelness"}
    ref_losses = ref(batch)
    torch.testing.assert_close(losses["loss_levelness"], ref_losses["loss_levelness"] * 0.5)
    sum(losses.values()).backward()
    assert ref.head.box_cls_logits.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown losses \\['loss_foo'\\]"):
        BoxPanopticCriterion(
            strides=strides,
            thing_semantic_ids=[0],
            assignment=LocationAssignment.from_settings([16, 32, 64, 128], 5),
            loss_weights={"loss_foo": 1.0},
        )
