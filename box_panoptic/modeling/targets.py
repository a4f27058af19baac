# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Training targets (METHOD.md section 3), vectorized over locations and instances.

Ownership of a location p: with instance masks (full supervision) the instance whose mask contains
p; locations inside boxes but on no mask, and every location in weak supervision, go to the
smallest-area box containing p (FCOS's ambiguity rule, supplementary section 3).
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .inference import level_locations

__all__ = [
    "BatchTargets",
    "GroundTruth",
    "LocationAssignment",
    "batch_targets",
    "size_ranges",
    "INSTANCE_SCALES",
    "instance_half_size",
    "assign_locations",
    "fcos_targets",
    "levelness_and_owner_boxes",
    "levelness_targets",
    "centerness_targets",
    "off_mask_positives",
]

INF = float("inf")


def size_ranges(sizes_of_interest: Sequence[float], num_levels: int) -> List[Tuple[float, float]]:
    """[64, 128, 256, 512] -> [(0, 64), (64, 128), (128, 256), (256, 512), (512, inf)]."""
    bounds = [0.0] + [float(s) for s in sizes_of_interest] + [INF]
    if len(bounds) - 1 != num_levels:
        raise ValueError(
            f"SIZES_OF_INTEREST has {len(sizes_of_interest)} boundaries for {num_levels} levels "
            f"(needs {num_levels - 1})"
        )
    return list(zip(bounds[:-1], bounds[1:]))


@dataclass(frozen=True)
class LocationAssignment:
    """How training locations become positives (METHOD section 3.1 and two training options).

    Attributes:
        ranges: per FPN level, the (lo, hi] size-of-interest range (:func:`size_ranges`).
        by_instance: one level per instance, from its box size (see :func:`assign_locations`).
        centre_positive: each instance also owns the location nearest its box centre.
        instance_scale: with ``by_instance``, the box size that picks the level
            (:func:`instance_half_size`).
        positives_on_mask: with masks, an instance's positives are only its level's locations
            on its mask (see :func:`assign_locations`).
        ignore_off_mask: with masks, the classification loss ignores an instance's positives
            that lie on no mask of it (:func:`off_mask_positives`); box and centerness keep them.
        range_overlap: f >= 1; the classification, box and centerness targets take each level's
            range (lo, hi] widened to (lo / f, hi * f] (:meth:`positive_ranges`), so an object
            may be a positive on two adjacent levels (f = sqrt(2) is FoveaBox's eta = 2). The
            levelness targets keep the ranges as they are: one level per location.
    """

    ranges: Tuple[Tuple[float, float], ...]
    by_instance: bool = False
    centre_positive: bool = False
    instance_scale: str = "max_side"
    positives_on_mask: bool = False
    ignore_off_mask: bool = False
    range_overlap: float = 1.0

    def __post_init__(self):
        if not self.range_overlap >= 1.0:
            raise ValueError(
                f"LEVEL_RANGE_OVERLAP must be >= 1 (1 = disjoint level ranges), got "
                f"{self.range_overlap!r}"
            )
        if self.positives_on_mask and self.ignore_off_mask:
            raise ValueError(
                "POSITIVES_ON_MASK (off-mask locations are negatives) and IGNORE_OFF_MASK "
                "(they are ignored) exclude each other; set at most one"
            )

    # LEVEL_ASSIGNMENT value -> (by_instance, instance_scale)
    LEVEL_MODES = {
        "location": (False, "max_side"),
        "instance": (True, "max_side"),
        "instance_area": (True, "sqrt_area"),
    }

    @classmethod
    def from_settings(
        cls,
        sizes_of_interest: Sequence[float],
        num_levels: int,
        level_assignment: str = "location",
        centre_positive: bool = False,
        positives_on_mask: bool = False,
        ignore_off_mask: bool = False,
        range_overlap: float = 1.0,
    ) -> "LocationAssignment":
        if level_assignment not in cls.LEVEL_MODES:
            raise ValueError(
                f"LEVEL_ASSIGNMENT must be one of {tuple(cls.LEVEL_MODES)}, "
                f"got {level_assignment!r}"
            )
        by_instance, scale = cls.LEVEL_MODES[level_assignment]
        return cls(
            tuple(size_ranges(sizes_of_interest, num_levels)),
            by_instance,
            bool(centre_positive),
            scale,
            bool(positives_on_mask),
            bool(ignore_off_mask),
            float(range_overlap),
        )

    def positive_ranges(self) -> Tuple[Tuple[float, float], ...]:
        """Per level, the (lo, hi] range of the positives: ``ranges`` widened by
        ``range_overlap`` at both ends (the first level's 0 and the last's inf stay)."""
        f = self.range_overlap
        return tuple((lo / f, hi * f) for lo, hi in self.ranges)

    def fcos(self, points, level_of_point, gt_boxes, gt_classes, gt_masks, num_classes):
        """:func:`fcos_targets` under this assignment."""
        return fcos_targets(
            points,
            level_of_point,
            self.positive_ranges(),
            gt_boxes,
            gt_classes,
            gt_masks,
            num_classes,
            by_instance=self.by_instance,
            centre_positive=self.centre_positive,
            instance_scale=self.instance_scale,
            positives_on_mask=self.positives_on_mask,
        )

    def levelness(self, points, gt_boxes, gt_masks, ignore=None):
        """:func:`levelness_and_owner_boxes` under this assignment (the centre rule does not
        apply): (levelness targets (M,), owner boxes (M, 4))."""
        return levelness_and_owner_boxes(
            points,
            self.ranges,
            gt_boxes,
            gt_masks,
            ignore,
            by_instance=self.by_instance,
            instance_scale=self.instance_scale,
        )


INSTANCE_SCALES = ("max_side", "sqrt_area")


def instance_half_size(gt_boxes: torch.Tensor, scale: str = "max_side") -> torch.Tensor:
    """(G,) the size m that picks an instance's level under per-instance assignment, from its
    (G, 4) XYXY box of width w and height h: "max_side", max(w, h) / 2 (what FCOS's max(ltrb)
    is at the box centre), or "sqrt_area", sqrt(w h) / 2 (the box's scale, as FoveaBox assigns
    levels and Mask R-CNN's FPN picks an RoI's level): a tall thin object goes to the level of
    its area, where its width still holds locations, not to the level of its height."""
    wh = (gt_boxes[:, 2:] - gt_boxes[:, :2]).clamp(min=0)
    if scale == "max_side":
        return wh.max(dim=1).values / 2
    if scale == "sqrt_area":
        return wh.prod(dim=1).sqrt() / 2
    raise ValueError(f"instance_half_size: unknown scale {scale!r} (one of {INSTANCE_SCALES})")


def assign_locations(
    points: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_masks: Optional[torch.Tensor],
    lo: torch.Tensor,
    hi: torch.Tensor,
    *,
    by_instance: bool = False,
    centre_positive: bool = False,
    instance_scale: str = "max_side",
    positives_on_mask: bool = False,
):
    """Owner of each point and its ltrb distances to the owner's box.

    Args:
        points: (M, 2) float (x, y) pixel positions.
        gt_boxes: (G, 4) XYXY. gt_masks: (G, H, W) bool or None (weak supervision).
        lo, hi: (M,) the size-of-interest range of each point; m must lie in (lo, hi]. Pass
            lo = -inf, hi = inf to ignore ranges.
        by_instance: m is the instance's half box size (:func:`instance_half_size` by
            ``instance_scale``; max(w, h) / 2 is what max(ltrb) is at its box centre), the same
            at every point: all of an instance's points go to one level. Else m = max(ltrb) of
            each point (FCOS): points near the box edges go to a coarser level than the centre,
            and small objects get few positives on either.
        centre_positive: every instance may also own the point nearest its box centre among the
            points inside its box and in its size range, even off its mask (a thin or small
            object whose mask holds no point of its level still gets a positive). The
            smallest-area rule still settles points claimed twice.
        positives_on_mask: with ``gt_masks``, an instance owns only points on its own mask, so
            points inside its box on the background (beside a thin object, inside a ring) are
            negatives; an instance whose mask holds none of its in-range points keeps the
            in-box points the default rule gives it.
    Returns:
        owner (M,) long, -1 where the point is no positive; ltrb (M, 4) to the owner (0 if none);
        m (M,) to the owner.
    """
    m_pts = points.shape[0]
    g = gt_boxes.shape[0]
    if g == 0:
        return (
            torch.full((m_pts,), -1, dtype=torch.long, device=points.device),
            points.new_zeros((m_pts, 4)),
            points.new_zeros(m_pts),
        )
    x, y = points[:, 0:1], points[:, 1:2]
    ltrb = torch.stack(
        [x - gt_boxes[:, 0], y - gt_boxes[:, 1], gt_boxes[:, 2] - x, gt_boxes[:, 3] - y], dim=2
    )  # (M, G, 4)
    inside = ltrb.min(dim=2).values > 0
    if by_instance:
        m = instance_half_size(gt_boxes, instance_scale)[None].expand(m_pts, g)
    else:
        m = ltrb.max(dim=2).values
    in_range = inside & (m > lo[:, None]) & (m <= hi[:, None])
    cand = in_range
    if gt_masks is not None:
        h, w = gt_masks.shape[-2:]
        xi = points[:, 0].long().clamp(0, w - 1)
        yi = points[:, 1].long().clamp(0, h - 1)
        on = gt_masks[:, yi, xi].t()  # (M, G)
        on_any = on.any(dim=1, keepdim=True)
        cand = cand & torch.where(on_any, on, torch.ones_like(on))
        if positives_on_mask:
            on_own = in_range & on
            cand = torch.where(on_own.any(dim=0, keepdim=True), on_own, cand)
    if centre_positive:
        cand = cand | _nearest_to_centre(points, gt_boxes, in_range)
    area = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    area = torch.where(cand, area[None].expand(m_pts, g), torch.full_like(m, INF))
    best_area, owner = area.min(dim=1)
    pos = torch.isfinite(best_area)
    owner = torch.where(pos, owner, torch.full_like(owner, -1))
    idx = owner.clamp(min=0)
    rows = torch.arange(m_pts, device=points.device)
    own_ltrb = ltrb[rows, idx] * pos[:, None]
    return owner, own_ltrb, m[rows, idx] * pos


def _nearest_to_centre(points, gt_boxes, allowed):
    """(M, G) bool: for each box, the allowed point nearest its centre (none if none allowed)."""
    centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    dist = (points[:, None, :] - centre[None]).abs().sum(dim=2)  # (M, G) L1
    dist = torch.where(allowed, dist, torch.full_like(dist, INF))
    best, idx = dist.min(dim=0)  # (G,)
    chosen = torch.zeros_like(allowed)
    has = torch.isfinite(best)
    chosen[idx[has], torch.arange(gt_boxes.shape[0], device=points.device)[has]] = True
    return chosen


def centerness_targets(ltrb: torch.Tensor) -> torch.Tensor:
    """(M, 4) positive ltrb -> (M,) sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))."""
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ratio = (lr.min(1).values / lr.max(1).values.clamp(min=1e-6)) * (
        tb.min(1).values / tb.max(1).values.clamp(min=1e-6)
    )
    return ratio.clamp(min=0).sqrt()


def off_mask_positives(
    points: torch.Tensor, owner: torch.Tensor, gt_masks: Optional[torch.Tensor]
) -> torch.Tensor:
    """(M,) bool: the positives that lie on no pixel of their owner's mask (the background
    beside a thin object, inside a ring, in a box's corners), except those of an owner none of
    whose positives lie on its mask (an object thinner than its level's stride keeps them all).

    Args:
        points: (M, 2) float (x, y). owner: (M,) long, -1 where negative (:func:`assign_locations`).
        gt_masks: (G, H, W) bool, or None (weak supervision: nothing is off a mask).
    """
    pos = owner >= 0
    if gt_masks is None or gt_masks.shape[0] == 0 or not bool(pos.any()):
        return torch.zeros_like(pos)
    h, w = gt_masks.shape[-2:]
    xi = points[:, 0].long().clamp(0, w - 1)
    yi = points[:, 1].long().clamp(0, h - 1)
    idx = owner.clamp(min=0)
    on_own = gt_masks[idx, yi, xi] & pos  # (M,)
    has_on = torch.zeros(gt_masks.shape[0], dtype=torch.bool, device=owner.device)
    has_on[idx[on_own]] = True
    return pos & ~on_own & has_on[idx]


def fcos_targets(
    points,
    level_of_point,
    ranges,
    gt_boxes,
    gt_classes,
    gt_masks,
    num_classes,
    *,
    by_instance=False,
    centre_positive=False,
    instance_scale="max_side",
    positives_on_mask=False,
):
    """FCOS targets for all locations of one image (``by_instance``, ``centre_positive``,
    ``instance_scale``, ``positives_on_mask``: see :func:`assign_locations`).

    Args:
        points: (M, 2) all levels' locations, finest level first. level_of_point: (M,) long.
        ranges: per level (lo, hi). gt_boxes (G, 4), gt_classes (G,), gt_masks (G, H, W) or None.
    Returns:
        labels (M,) in [0, K] (K = background), ltrb (M, 4), owner (M,) (-1 = negative).
    """
    lo = points.new_tensor([r[0] for r in ranges])[level_of_point]
    hi = points.new_tensor([r[1] for r in ranges])[level_of_point]
    owner, ltrb, _ = assign_locations(
        points,
        gt_boxes,
        gt_masks,
        lo,
        hi,
        by_instance=by_instance,
        centre_positive=centre_positive,
        instance_scale=instance_scale,
        positives_on_mask=positives_on_mask,
    )
    labels = torch.full_like(owner, num_classes)
    if gt_classes.numel():
        labels = torch.where(owner >= 0, gt_classes[owner.clamp(min=0)], labels)
    return labels, ltrb, owner


def levelness_and_owner_boxes(
    points,
    ranges,
    gt_boxes,
    gt_masks,
    ignore: Optional[torch.Tensor] = None,
    *,
    by_instance=False,
    instance_scale="max_side",
):
    """Levelness target of each stride-4 location (M,): 0 background, l in 1..L the level whose
    size-of-interest range holds m(p, owner(p)), 255 where ``ignore`` (M,) is set; and the
    (M, 4) XYXY box of each location's owner (a zero-size box at the location where it has none).

    The owner is chosen without size ranges (every location of an instance has one level).
    """
    m_pts = points.shape[0]
    free = points.new_full((m_pts,), -INF), points.new_full((m_pts,), INF)
    owner, ltrb, m = assign_locations(
        points, gt_boxes, gt_masks, *free, by_instance=by_instance, instance_scale=instance_scale
    )
    bounds = points.new_tensor([r[1] for r in ranges[:-1]])
    level = torch.bucketize(m, bounds, right=False) + 1  # (lo, hi] -> index of hi
    target = torch.where(owner >= 0, level, torch.zeros_like(level))
    if ignore is not None:
        target = torch.where(ignore, torch.full_like(target, 255), target)
    return target, torch.cat([points - ltrb[:, :2], points + ltrb[:, 2:]], dim=1)


def levelness_targets(
    points, ranges, gt_boxes, gt_masks, ignore: Optional[torch.Tensor] = None, *, by_instance=False
):
    """The levelness targets (M,) of :func:`levelness_and_owner_boxes`."""
    return levelness_and_owner_boxes(
        points, ranges, gt_boxes, gt_masks, ignore, by_instance=by_instance
    )[0]


# ---- a batch's targets ---------------------------------------------------------------------------
@dataclass
class GroundTruth:
    """One image's instances on the padded input: boxes (G, 4) XYXY, classes (G,) thing label,
    masks (G, H, W) bool or None (weak supervision)."""

    boxes: torch.Tensor
    classes: torch.Tensor
    masks: Optional[torch.Tensor]


@dataclass
class BatchTargets:
    """Every training target of a batch, on the network's grids (METHOD section 3).

    Attributes:
        points: (M, 2) all FPN levels' locations, finest first (the same for every image).
        labels: (N, M) thing label of each location, K (= background) where negative.
        ltrb: (N, M, 4) distances to the owner's box (0 where negative).
        crowd: (N, M) bool, negative locations in crowd regions (ignored, not negatives).
        cls_ignored: (N, M) bool, positives the classification loss ignores
            (``LocationAssignment.ignore_off_mask``); box and centerness keep them.
        sem_seg: (N, H, W) long semantic labels on the padded input, 255 = ignore.
        levelness: (N, h4, w4) long levelness labels on the stride-4 grid, 255 = ignore.
        owner_boxes4: (N, h4 w4, 4) XYXY box of each stride-4 location's owner (the levelness
            targets' owner; a zero-size box at the location where it has none).
        points4: (h4 w4, 2) the stride-4 grid's locations.
        instances: per image, its :class:`GroundTruth`.
    """

    points: torch.Tensor
    labels: torch.Tensor
    ltrb: torch.Tensor
    crowd: torch.Tensor
    sem_seg: torch.Tensor
    levelness: torch.Tensor
    owner_boxes4: torch.Tensor
    points4: torch.Tensor
    instances: List[GroundTruth]
    cls_ignored: Optional[torch.Tensor] = None


def _pad_to(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    return F.pad(x, (0, size[1] - x.shape[-1], 0, size[0] - x.shape[-2]))


def ground_truth(x: Dict, padded: Tuple[int, int], device, weak: bool) -> GroundTruth:
    """The "instances" of one mapped input (gt_boxes, gt_classes, gt_masks unless weak)."""
    inst = x["instances"].to(device)
    masks = None
    if not weak:
        if inst.has("gt_masks"):
            m = inst.gt_masks
            masks = _pad_to((m.tensor if hasattr(m, "tensor") else m).bool(), padded)
        else:
            masks = torch.zeros((0,) + tuple(padded), dtype=torch.bool, device=device)
    return GroundTruth(inst.gt_boxes.tensor, inst.gt_classes, masks)


def batch_targets(
    batched_inputs: List[Dict],
    padded: Tuple[int, int],
    level_sizes: Sequence[Tuple[int, int]],
    strides: Sequence[int],
    size4: Tuple[int, int],
    assignment: LocationAssignment,
    num_thing_classes: int,
    device: torch.device,
    weak: bool = False,
) -> BatchTargets:
    """Targets of every input: its "instances", "sem_seg" (H, W) (255 = ignore) and optional
    "crowd_mask" (H, W) bool, on the grids of a network input padded to ``padded`` (H, W) whose
    levels are ``level_sizes`` (h, w) at ``strides``, and whose stride-4 grid is ``size4``;
    built on ``device``."""
    pts = [level_locations(h, w, s, device) for (h, w), s in zip(level_sizes, strides)]
    points = torch.cat(pts)
    level_of_point = torch.cat(
        [torch.full((len(p),), i, device=device, dtype=torch.long) for i, p in enumerate(pts)]
    )
    pts4 = level_locations(size4[0], size4[1], 4, device)
    yi4, xi4 = pts4[:, 1].long(), pts4[:, 0].long()  # the same pixels for every image
    yi = points[:, 1].long().clamp(max=padded[0] - 1)
    xi = points[:, 0].long().clamp(max=padded[1] - 1)
    n = len(batched_inputs)
    sem_t = torch.full((n,) + tuple(padded), 255, dtype=torch.long, device=device)
    labels, ltrbs, lev_t, boxes4, crowd_pts, gts, ignored = [], [], [], [], [], [], []
    for i, x in enumerate(batched_inputs):
        gt = ground_truth(x, padded, device, weak)
        gts.append(gt)
        lab, ltrb, owner = assignment.fcos(
            points, level_of_point, gt.boxes, gt.classes, gt.masks, num_thing_classes
        )
        if assignment.ignore_off_mask:
            ignored.append(off_mask_positives(points, owner, gt.masks))
        sem = x["sem_seg"].to(device).long()
        sem_t[i, : sem.shape[0], : sem.shape[1]] = sem
        crowd = x.get("crowd_mask")
        crowd = (
            _pad_to(crowd.to(device).bool(), padded)
            if crowd is not None
            else torch.zeros(padded, dtype=torch.bool, device=device)
        )
        ignore4 = (sem_t[i, yi4, xi4] == 255) | crowd[yi4, xi4]
        lev, owner_boxes = assignment.levelness(pts4, gt.boxes, gt.masks, ignore4)
        lev_t.append(lev)
        boxes4.append(owner_boxes)
        crowd_pts.append(crowd[yi, xi] & (lab == num_thing_classes))
        labels.append(lab)
        ltrbs.append(ltrb)
    return BatchTargets(
        points=points,
        labels=torch.stack(labels),
        ltrb=torch.stack(ltrbs),
        crowd=torch.stack(crowd_pts),
        sem_seg=sem_t,
        levelness=torch.stack(lev_t).view(n, *size4),
        owner_boxes4=torch.stack(boxes4),
        points4=pts4,
        instances=gts,
        cls_ignored=torch.stack(ignored) if ignored else None,
    )
