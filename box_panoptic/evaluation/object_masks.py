# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Per ground-truth thing: how well its mask came out (``tools/sigma_search.py --per-object``).

For every non-crowd ground-truth thing: its area, whether it touches another thing of its class
(a pixel of that thing within ``reach`` pixels, a (2 reach + 1)^2 square), and the IoU of the
predicted thing segment that overlaps it most. Bucketed by size and touching, this says which
objects' masks fail, e.g. with ``--oracle boxes`` which ones the masks lose even with perfect
detections. Intersections come from one joint histogram of (ground-truth id, predicted id)
pairs, so the cost does not grow with the number of segments.
"""

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["ObjectMask", "SIZE_BUCKETS", "object_masks", "summarize_object_masks"]

# Object area ranges in pixels of the evaluated image (the diagnosis tools' small / medium / large).
SIZE_BUCKETS: Tuple[Tuple[float, float], ...] = ((0, 400), (400, 1500), (1500, float("inf")))


@dataclass(frozen=True)
class ObjectMask:
    """One ground-truth thing: its area (px), whether it touches a thing of its class, and the
    best IoU of a predicted thing segment with it (0 when none overlaps)."""

    area: int
    touches_same_class: bool
    iou: float


def _pair_counts(a: np.ndarray, b: np.ndarray) -> Dict[Tuple[int, int], int]:
    """{(a id, b id): pixels} over the pixels of two (H, W) id maps."""
    codes = a.astype(np.int64) * (1 << 32) + b.astype(np.int64)
    values, counts = np.unique(codes, return_counts=True)
    return {(int(v >> 32), int(v & 0xFFFFFFFF)): int(c) for v, c in zip(values, counts)}


def _neighbour_pairs(ids: np.ndarray, reach: int) -> set:
    """{(id, other id)}: segments with pixels within ``reach`` of each other (ids != 0)."""
    h, w = ids.shape
    padded = np.pad(ids, reach)
    pairs = set()
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            shifted = padded[reach + dy : reach + dy + h, reach + dx : reach + dx + w]
            near = (ids != shifted) & (ids != 0) & (shifted != 0)
            if near.any():
                pairs.update(zip(ids[near].tolist(), shifted[near].tolist()))
    return pairs


def object_masks(
    gt_ids: np.ndarray,
    gt_segments: Sequence[Dict],
    pred_ids: np.ndarray,
    pred_segments: Sequence[Dict],
    reach: int = 2,
) -> List[ObjectMask]:
    """The :class:`ObjectMask` of every non-crowd ground-truth thing of one image.

    Args:
        gt_ids, pred_ids: (H, W) segment id maps (0 = void). gt_segments / pred_segments: their
            segments_info (``id``, ``category_id``, ``isthing``; ``iscrowd`` for the ground truth).
    """
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(
            f"object_masks: ground truth {gt_ids.shape} vs prediction {pred_ids.shape}"
        )
    things = [s for s in gt_segments if s.get("isthing") and not s.get("iscrowd", 0)]
    pred_things = {s["id"] for s in pred_segments if s.get("isthing")}
    gt_area = dict(zip(*np.unique(gt_ids, return_counts=True)))
    pred_area = dict(zip(*np.unique(pred_ids, return_counts=True)))
    inter = _pair_counts(gt_ids, pred_ids)
    category = {s["id"]: s["category_id"] for s in gt_segments}
    touching = {a for a, b in _neighbour_pairs(gt_ids, reach) if category.get(a) == category.get(b)}
    best = {s["id"]: 0.0 for s in things}
    for (g, p), n in inter.items():
        if g in best and p in pred_things:
            best[g] = max(best[g], n / (gt_area[g] + pred_area[p] - n))
    return [
        ObjectMask(int(gt_area.get(s["id"], 0)), s["id"] in touching, best[s["id"]]) for s in things
    ]


def summarize_object_masks(objects: Sequence[ObjectMask]) -> List[Dict]:
    """Per size bucket and touching or not: count, mean IoU, share with IoU > 0.5."""
    rows = []
    for lo, hi in SIZE_BUCKETS:
        for touching in (False, True):
            ious = [
                o.iou for o in objects if lo <= o.area < hi and o.touches_same_class == touching
            ]
            if ious:
                rows.append(
                    {
                        "area": (lo, hi),
                        "touching": touching,
                        "n": len(ious),
                        "mean_iou": float(np.mean(ious)),
                        "matched": float(np.mean([i > 0.5 for i in ious])),
                    }
                )
    return rows
