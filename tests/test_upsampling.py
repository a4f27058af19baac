# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""The per-pixel candidate path (upsampling.sample_candidates) against the dense reference: every
detection's soft mask bilinearly upsampled to full resolution (F.interpolate), thresholded and
assembled. Equal outputs while no window holds more than K detections reaching sigma."""

import math
from typing import NamedTuple, Tuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from box_panoptic.modeling.assembly import assemble_argmax
from box_panoptic.modeling.mask_candidates import soft_mask_candidates
from box_panoptic.modeling.mask_construction import location_term, soft_masks
from box_panoptic.modeling.postprocess import instance_masks
from box_panoptic.modeling.upsampling import (
    OutputGrid,
    dense_candidates,
    output_grid,
    resample,
    sample_candidates,
)

from .helpers import ASSEMBLY_RULES, SYNTHETIC_CONFIG, get_model

IS_THING = torch.tensor([True, True, True, False, False])
KW = dict(overlap_thresh=0.5, instance_area_min=3, stuff_area_min=6)


def _reference_masks(masks4, padded, image_size):
    """METHOD step 6 as written: upsample to the padded size, crop to the image."""
    up = F.interpolate(masks4[None], size=padded, mode="bilinear", align_corners=False)[0]
    return up[:, : image_size[0], : image_size[1]]


def _blobs(p, h, w, seed):
    """(P, h, w) soft masks: Gaussian blobs (peaks in (0.3, 1)) plus noise in [0, 0.2)."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    cy, cx = torch.rand(p, 1, 1, generator=g) * h, torch.rand(p, 1, 1, generator=g) * w
    r = 1.5 + torch.rand(p, 1, 1, generator=g) * 4
    peak = 0.3 + 0.7 * torch.rand(p, 1, 1, generator=g)
    blob = peak * torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * r**2))
    return blob + 0.2 * torch.rand(p, h, w, generator=g)


def test_resample_equals_interpolate_then_crop():
    x = torch.randn(3, 9, 13)
    grid = output_grid((9, 13), (36, 52), (33, 50), (33, 50))
    assert torch.allclose(resample(x, grid), _reference_masks(x, (36, 52), (33, 50)), atol=1e-6)
    # a test-time resize: one bilinear step from the grid straight to the output pixels, the
    # output pixel centre (y + 0.5) * image / output on the image, over 4 on the grid
    image, out = (33, 50), (20, 70)
    ys = ((torch.arange(out[0]) + 0.5) * image[0] / out[0] / 4 - 0.5).clamp(min=0)
    xs = ((torch.arange(out[1]) + 0.5) * image[1] / out[1] / 4 - 0.5).clamp(min=0)
    gy, gx = torch.meshgrid((2 * ys + 1) / 9 - 1, (2 * xs + 1) / 13 - 1, indexing="ij")
    sampling = torch.stack([gx, gy], dim=-1)[None]
    expect = F.grid_sample(x[None], sampling, align_corners=False, padding_mode="border")[0]
    got = resample(x, output_grid((9, 13), (36, 52), image, out))
    assert got.shape == (3, 20, 70) and torch.allclose(got, expect, atol=1e-5)


@pytest.mark.parametrize("fn", ASSEMBLY_RULES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_candidates_equal_dense_reference_when_k_covers_every_window(fn, seed):
    p, h4, w4, sigma = 7, 10, 14, 0.35
    masks4 = _blobs(p, h4, w4, seed)
    padded, image = (40, 56), (37, 53)
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, 3, (p,), generator=g)
    scores = torch.rand(p, generator=g)
    active = scores >= 0.2
    sem = torch.randn(5, *image, generator=g)
    grid = output_grid((h4, w4), padded, image, image)
    fast = sample_candidates(masks4, grid, p, sigma, active)
    dense = _reference_masks(masks4, padded, image)
    ref = dense_candidates(dense)
    r = fn(fast, classes, scores, active, sem, IS_THING, mask_thresh=sigma, **KW)
    e = fn(ref, classes, scores, active, sem, IS_THING, mask_thresh=sigma, **KW)
    rich = assemble_argmax(ref, classes, scores, active, sem, IS_THING, mask_thresh=sigma, **KW)
    assert len(rich.category) > 3 and rich.isthing.sum() >= 2  # the scene: things and stuff
    assert len(e.category) >= 3 and e.isthing.sum() >= 1  # what every rule keeps of it
    for key in e._fields:
        assert torch.equal(getattr(r, key), getattr(e, key)), key
    assert torch.equal(instance_masks(fast, sigma, p), dense >= sigma)


def _pile(p, h, w, seed):
    """(P, h, w) soft masks of P overlapping detections: one wide blob each, centres within a
    few cells of the grid's middle, so that all P reach sigma in the central windows."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    cy = h / 2 + (torch.rand(p, 1, 1, generator=g) - 0.5) * 4
    cx = w / 2 + (torch.rand(p, 1, 1, generator=g) - 0.5) * 4
    r = 3.0 + torch.rand(p, 1, 1, generator=g) * 3
    peak = 0.6 + 0.4 * torch.rand(p, 1, 1, generator=g)
    return peak * torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * r**2))


@pytest.mark.parametrize("fn", ASSEMBLY_RULES)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("banded", [False, True])
def test_exact_candidates_equal_the_dense_reference_on_a_crowded_pile(fn, seed, banded):
    """8 overlapping detections reaching sigma in the same windows, K = 4: exact mode lists the
    rest at the crowded pixels and equals the full-resolution reference; the fixed K does not."""
    p, sigma, k = 8, 0.35, 4
    scene = crowded_pile_scene(seed, p)
    masks4, grid, active = scene.masks4, scene.grid, scene.active
    classes, scores, sem = scene.classes, scene.scores, scene.sem
    dense = _reference_masks(masks4, scene.padded, scene.image)
    assert int((dense >= sigma).sum(0).max()) == p  # every detection reaches sigma somewhere
    if banded:  # the model's path: soft masks from boxes, band by band (here: P_loc = masks4)
        cand = _banded_candidates(masks4, grid, k, sigma, active, exact=True)
    else:
        cand = sample_candidates(masks4, grid, k, sigma, active, exact=True)
    fixed = sample_candidates(masks4, grid, k, sigma, active)
    assert cand.has_extra and not fixed.has_extra
    ref = fn(
        dense_candidates(dense), classes, scores, active, sem, IS_THING, mask_thresh=sigma, **KW
    )
    got = fn(cand, classes, scores, active, sem, IS_THING, mask_thresh=sigma, **KW)
    for key in ref._fields:
        assert torch.equal(getattr(got, key), getattr(ref, key)), key
    assert torch.equal(instance_masks(cand, sigma, p), dense >= sigma)
    # the fixed K truncates the low-ranked detections' masks
    assert not torch.equal(instance_masks(fixed, sigma, p), dense >= sigma)


class PileScene(NamedTuple):
    """A crowded pile's inputs: ``masks4`` (P, 24, 28) overlapping soft masks under an
    ``image`` (93, 109) padded to ``padded`` (96, 112); random ``classes``, ``scores`` (P,),
    ``active`` (P,) all True, semantic logits ``sem`` (5, 93, 109); the output ``grid``; and the
    generator ``g`` they were drawn from, left to draw more."""

    masks4: torch.Tensor
    padded: Tuple[int, int]
    image: Tuple[int, int]
    classes: torch.Tensor
    scores: torch.Tensor
    active: torch.Tensor
    sem: torch.Tensor
    grid: OutputGrid
    g: torch.Generator


def crowded_pile_scene(seed: int, p: int = 8) -> PileScene:
    """P overlapping detections reaching sigma 0.35 in the same windows (:class:`PileScene`)."""
    padded, image = (96, 112), (93, 109)
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, 3, (p,), generator=g)
    scores = torch.rand(p, generator=g)
    active = torch.ones(p, dtype=torch.bool)
    sem = torch.randn(5, *image, generator=g)
    grid = output_grid((24, 28), padded, image, image)
    return PileScene(_pile(p, 24, 28, seed), padded, image, classes, scores, active, sem, grid, g)


def _banded_candidates(masks4, grid, k, sigma, active, exact):
    """soft_mask_candidates in 4-row bands, with soft masks equal to ``masks4``: P_loc = the
    mask (each query box's own dense boxes give IoU 1 ... replaced by a semantic term)."""
    p, h, w = masks4.shape
    # one class per detection, the semantic probability of class j = masks4[j], P_loc = 1:
    # query boxes equal to every cell's dense box (IoU location term 1 everywhere)
    box = torch.tensor([0.0, 0.0, 8.0, 8.0])
    dense = box.view(4, 1, 1).expand(4, h, w).contiguous()
    query = box.expand(p, 4).contiguous()
    return soft_mask_candidates(
        query, torch.arange(p), dense, masks4, grid, k, sigma, active, "iou", 4, exact
    )


def test_fewer_candidates_are_exact_while_few_detections_reach_sigma():
    # three blobs far apart, each window reached by at most one: K = 1 is already exact
    h4, w4, sigma = 12, 12, 0.5
    masks4 = torch.zeros(3, h4, w4)
    masks4[0, 1:3, 1:3] = 0.9
    masks4[1, 8:11, 2:4] = 0.8
    masks4[2, 5:7, 8:11] = 0.7
    grid = output_grid((h4, w4), (48, 48), (48, 48), (48, 48))
    active = torch.ones(3, dtype=torch.bool)
    dense = _reference_masks(masks4, (48, 48), (48, 48))
    one = sample_candidates(masks4, grid, 1, sigma, active)
    assert torch.equal(instance_masks(one, sigma, 3), dense >= sigma)
    ids = one.per_pixel(one.window_ids)
    assert ids.shape == (1, 48, 48) and set(ids.unique().tolist()) == {0, 1, 2, 3}


def test_active_detections_take_the_slots_first():
    # two detections reach sigma in the same window; K = 1 keeps the active one
    masks4 = torch.full((2, 4, 4), 0.9)
    masks4[1] = 0.95
    grid = output_grid((4, 4), (16, 16), (16, 16), (16, 16))
    c = sample_candidates(masks4, grid, 1, 0.5, torch.tensor([True, False]))
    assert (c.window_ids == 1).all() and torch.allclose(c.values, torch.full_like(c.values, 0.9))


@pytest.mark.parametrize("mode", ["giou_plus1", "iou"])
def test_inplace_location_term_equals_the_autograd_form(mode):
    g = torch.Generator().manual_seed(3)
    q = torch.rand(6, 2, generator=g) * 50
    q = torch.cat([q, q + torch.rand(6, 2, generator=g) * 40], 1)
    d = torch.rand(300, 2, generator=g) * 50
    d = torch.cat([d, d + torch.rand(300, 2, generator=g) * 40], 1)
    d[:5, 2:] = d[:5, :2]  # degenerate dense boxes
    fast = location_term(q, d, mode)
    slow = location_term(q.clone().requires_grad_(), d, mode).detach()
    assert torch.allclose(fast, slow, atol=1e-6) and fast.min() > -1 and fast.max() <= 1 + 1e-6


def test_model_outputs_equal_the_dense_reference_and_channels_last_changes_little():
    """The model's whole post-processing against full-resolution masks of every detection."""
    # box biases in pixels: the released regression parametrisation
    model = get_model(SYNTHETIC_CONFIG, "MODEL.BOX_PANOPTIC.REG_STRIDE_UNITS", False).eval()
    with torch.no_grad():
        model.head.box_cls_logits.bias.fill_(3.0)
        model.head.centerness.bias.fill_(3.0)
        model.head.bbox_pred.weight.zero_()  # every dense box 40 px wide: smooth soft masks
        model.head.bbox_pred.bias.fill_(math.log(20.0))
    image = torch.randint(0, 255, (3, 96, 130), dtype=torch.uint8)
    inputs = [{"image": image}]
    sigma, tau = 0.1, 0.0  # random weights: semantic probabilities near 1 / 6
    post = model.postprocessor
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        out = model.network(images)
        d = post.decode(out, images, [images.image_sizes[0]])[0]
        # query boxes copied from the dense box map: each one's soft mask peaks around its cell
        g = torch.Generator().manual_seed(0)
        h4, w4 = d.dense.shape[-2:]
        ys, xs = torch.randint(0, h4, (12,), generator=g), torch.randint(0, w4, (12,), generator=g)
        d = d.replace(
            boxes=d.dense[:, ys, xs].t().contiguous(), scores=d.scores[:12], classes=d.classes[:12]
        )
        sem_seg, sem_prob4, _ = post.construct(d)
        masks4 = post.soft_masks(d, sem_prob4)
        p = len(d.scores)
        post.candidates, post.exact = 1, True  # K = 1 plus the crowded pixels' overflow: exact
        fast_result = post.panoptic(d, sigma, tau)
        cand, fast = fast_result.candidates, fast_result.segments
        dense = _reference_masks(masks4, d.padded_size, d.image_size)
        ref = post.assemble(d, sem_seg, dense_candidates(dense), sigma, tau)
        model.channels_last = False
        plain = model.network(images)
    reach = (dense >= sigma).sum(dim=0)
    assert p == 12 and (reach > 0).float().mean() > 0.05 and (reach > 1).any()
    assert cand.values.shape[0] == 1 and cand.has_extra  # crowded windows listed the rest
    assert fast.isthing.sum() >= 2
    for key in ref._fields:
        assert torch.equal(getattr(fast, key), getattr(ref, key)), key
    assert torch.equal(instance_masks(cand, sigma, p), dense >= sigma)
    for key in ("sem_seg", "levelness"):
        torch.testing.assert_close(out[key], plain[key], atol=1e-4, rtol=1e-4)


@settings(max_examples=30, deadline=None, derandomize=True)  # reproducible in CI
@given(
    st.integers(0, 6),
    st.integers(1, 4),
    st.integers(0, 2**31 - 1),
    st.floats(0.05, 0.9),
    st.sampled_from(ASSEMBLY_RULES),
)
def test_candidate_assembly_properties_hold_for_any_k(p, k, seed, sigma, fn):
    """With K below the detections per window (approximate), the output stays a valid panoptic
    map: ids <-> segments, no empty segment, things only from thing classes, deterministic."""
    g = torch.Generator().manual_seed(seed)
    masks4 = torch.rand(p, 6, 8, generator=g) ** 2
    grid = output_grid((6, 8), (24, 32), (22, 29), (22, 29))
    active = torch.rand(p, generator=g) > 0.3
    classes = torch.randint(0, 3, (p,), generator=g)
    scores = torch.rand(p, generator=g)
    sem = torch.randn(5, 22, 29, generator=g)
    cand = sample_candidates(masks4, grid, k, sigma, active)
    kw = dict(mask_thresh=sigma, overlap_thresh=0.5, instance_area_min=2, stuff_area_min=5)
    r = fn(cand, classes, scores, active, sem, IS_THING, **kw)
    pan = r.panoptic
    n = len(r.category)
    assert set(pan.unique().tolist()) - {0} == set(range(1, n + 1))
    areas = torch.bincount(pan.reshape(-1).long(), minlength=n + 1)[1:]
    assert torch.equal(areas, r.area) and (areas > 0).all()
    for cat, isthing in zip(r.category.tolist(), r.isthing.tolist()):
        assert bool(IS_THING[cat]) == isthing
    thing_scores = r.score[r.isthing]
    assert set(thing_scores.tolist()) <= set(scores[active].tolist())  # only active detections
    again = fn(
        sample_candidates(masks4, grid, k, sigma, active),
        classes,
        scores,
        active,
        sem,
        IS_THING,
        **kw,
    )
    assert all(torch.equal(a, b) for a, b in zip(again, r))


def _boxes_on_grid(h, w, g, levels=None):
    """Dense XYXY boxes around each stride-4 cell: (4, h, w), or (levels, 4, h, w)."""
    shape = (levels, 2, h, w) if levels else (2, h, w)
    ys, xs = torch.meshgrid(torch.arange(h) * 4.0 + 2, torch.arange(w) * 4.0 + 2, indexing="ij")
    centre = torch.stack([xs, ys]).expand(shape)
    lt, rb = 8 + torch.rand(shape, generator=g) * 24, 8 + torch.rand(shape, generator=g) * 24
    return torch.cat([centre - lt, centre + rb], dim=-3)


@pytest.mark.parametrize(
    "levels, mode, output, band_rows",
    [
        (None, "giou_plus1", (45, 61), 4),
        (None, "iou", (45, 61), 5),  # 11 rows: a short last band
        (3, "giou_plus1", (45, 61), 3),  # no levelness: max over levels (Eq. S3)
        (None, "giou_plus1", (30, 90), 1),  # a test-time resize; one row per band
        (3, "iou", (45, 61), 64),  # one band: the path tracing takes
    ],
)
def test_banded_soft_mask_candidates_equal_the_whole_grid_path_bit_for_bit(
    levels, mode, output, band_rows
):
    """The fused band-by-band path (eager inference) against soft_masks + sample_candidates
    (the traced path): the same bits, not just close."""
    g = torch.Generator().manual_seed(7)
    h4, w4, p, k = 11, 16, 14, 3
    dense = _boxes_on_grid(h4, w4, g, levels)
    query = dense.reshape(-1, 4, h4 * w4)[0, :, torch.randperm(h4 * w4, generator=g)[:p]].t()
    classes = torch.randint(0, 5, (p,), generator=g)
    sem_prob = torch.randn(5, h4, w4, generator=g).softmax(dim=0)
    grid = output_grid((h4, w4), (44, 64), (45 - 2, 61), output)
    active = torch.rand(p, generator=g) > 0.4
    sigma = 0.08
    ref = sample_candidates(
        soft_masks(query, classes, dense, sem_prob, mode), grid, k, sigma, active
    )
    got = soft_mask_candidates(
        query, classes, dense, sem_prob, grid, k, sigma, active, mode, band_rows=band_rows
    )
    assert (ref.window_ids > 0).sum(dim=0).float().mean() > 1.0  # windows hold several
    assert (ref.values >= sigma).any()
    for name in ("window_ids", "rows", "cols", "values"):
        assert torch.equal(getattr(got, name), getattr(ref, name)), name
    # no detections: every slot empty, never accepted
    none = soft_mask_candidates(
        query[:0], classes[:0], dense, sem_prob, grid, k, sigma, active[:0], mode, band_rows
    )
    assert (none.window_ids == 0).all() and (none.values < sigma).all()


@pytest.mark.parametrize("mode", ["giou_plus1", "iou"])
def test_bands_skip_detections_that_cannot_reach_them_and_stay_exact(mode):
    """Small boxes spread over a tall grid: each band evaluates only the detections whose
    boxes meet its dense boxes (and tiny ones, which may reach sigma without overlap)."""
    from box_panoptic.modeling.mask_candidates import _may_reach

    g = torch.Generator().manual_seed(11)
    h4, w4, p, k, sigma = 40, 12, 16, 2, 0.3
    ys, xs = torch.meshgrid(torch.arange(h4) * 4.0 + 2, torch.arange(w4) * 4.0 + 2, indexing="ij")
    half = 2 + torch.rand(2, h4, w4, generator=g) * 6
    dense = torch.stack([xs - half[0], ys - half[1], xs + half[0], ys + half[1]])
    query = dense.reshape(4, -1)[:, torch.randperm(h4 * w4, generator=g)[:p]].t().clone()
    query[:2, 2:] = query[:2, :2] + 0.5  # two tiny boxes: area 0.25 < 1 / sigma
    classes = torch.randint(0, 3, (p,), generator=g)
    sem_prob = torch.rand(3, h4, w4, generator=g).add(2).softmax(dim=0).clamp(max=1)
    sem_prob[:] = 0.9  # the location term decides
    grid = output_grid((h4, w4), (160, 48), (160, 48), (160, 48))
    active = torch.rand(p, generator=g) > 0.3
    band = dense.permute(1, 2, 0)[:5]  # the first band (4 rows) and the row below
    near = _may_reach(query, band, sigma)
    assert near[:2].all() and near.sum() < p - 4  # tiny boxes kept, most others skipped
    assert _may_reach(query, band, 0.0).all()  # sigma 0: every detection reaches
    ref = sample_candidates(
        soft_masks(query, classes, dense, sem_prob, mode), grid, k, sigma, active
    )
    got = soft_mask_candidates(query, classes, dense, sem_prob, grid, k, sigma, active, mode, 4)
    assert len(ref.window_ids.unique()) > p // 2  # most detections are candidates somewhere
    for name in ("window_ids", "values"):
        assert torch.equal(getattr(got, name), getattr(ref, name)), name


def test_bands_stay_exact_with_nan_cells_and_inverted_queries():
    """A band with NaN dense boxes still evaluates the detections its other cells may accept;
    an inverted query box (x2 < x1: its area can be small or negative) is never skipped."""
    g = torch.Generator().manual_seed(4)
    h4, w4, p, k, sigma = 20, 10, 8, 2, 0.3
    dense = _boxes_on_grid(h4, w4, g)
    dense[:, 2, 3] = float("nan")  # one cell of the first band
    query = dense.reshape(4, -1)[:, torch.randperm(h4 * w4, generator=g)[:p]].t().clone()
    query = torch.nan_to_num(query, nan=10.0)
    query[0] = torch.tensor([30.0, 6.0, 10.0, 2.0])  # inverted in x and y: area 80
    classes = torch.randint(0, 3, (p,), generator=g)
    sem_prob = torch.full((3, h4, w4), 0.9)
    grid = output_grid((h4, w4), (80, 40), (80, 40), (80, 40))
    active = torch.ones(p, dtype=torch.bool)
    ref = sample_candidates(
        soft_masks(query, classes, dense, sem_prob, "giou_plus1"), grid, k, sigma, active
    )
    got = soft_mask_candidates(query, classes, dense, sem_prob, grid, k, sigma, active, band_rows=3)
    assert (ref.window_ids > 0).any()
    for name in ("window_ids", "values"):
        assert torch.equal(getattr(got, name), getattr(ref, name)), name
