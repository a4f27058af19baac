# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Measurements of how well the dense detector has learned things (``tools/diagnose_detector.py``).

On a labelled dataset and a trained model: recall of the ground-truth things by size (a
detection of IoU >= 0.5, any class and the right class, above the panoptic score threshold and at
any score), the scores of matched and unmatched detections, training positives per FPN level and
the objects that get none, and whether centerness is learned (its correlation with the target
on the positives, its BCE against the target's own entropy, the floor BCE can reach).
"""

from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from detectron2.structures import pairwise_iou

from .modeling.inference import level_locations
from .modeling.targets import LocationAssignment, centerness_targets

__all__ = ["DetectorDiagnosis", "diagnose_detector", "SIZE_BUCKETS"]

# object area buckets in pixels (at the model's input resolution)
SIZE_BUCKETS = (
    ("small <400", 0, 400),
    ("medium 400-1500", 400, 1500),
    ("large >=1500", 1500, 1e12),
)


@dataclass
class DetectorDiagnosis:
    """Sums over a dataset; :meth:`report` prints them."""

    found: Dict[str, List[int]] = field(default_factory=dict)  # bucket -> [thresh, any, total]
    found_right_class: Dict[str, int] = field(default_factory=dict)
    positives_per_level: List[int] = field(default_factory=list)
    level_names: List[str] = field(default_factory=list)  # "P3", ... from the strides
    objects_without_positive: int = 0
    objects: int = 0
    images: int = 0
    matched_scores: List[float] = field(default_factory=list)
    unmatched_scores: List[float] = field(default_factory=list)
    ctr_pred: List[float] = field(default_factory=list)
    ctr_target: List[float] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"{self.images} images, {self.objects} thing objects (non-crowd)"]
        for name, _, _ in SIZE_BUCKETS:
            at_t, anyscore, total = self.found.get(name, [0, 0, 0])
            right = self.found_right_class.get(name, 0)
            if total:
                pct = [100 * v / total for v in (at_t, right, anyscore)]
                lines.append(
                    f"  recall {name:16s}: {pct[0]:5.1f} % above the score threshold "
                    f"({pct[1]:5.1f} % with the right class), {pct[2]:5.1f} % at any score "
                    f"({total} objects)"
                )
        per_image = [p / max(self.images, 1) for p in self.positives_per_level]
        names = self.level_names or [f"level {i}" for i in range(len(per_image))]
        lines.append(
            "  positives per image by level: "
            + ", ".join(f"{name} {p:.1f}" for name, p in zip(names, per_image))
        )
        lines.append(f"  objects without any positive location: {self.objects_without_positive}")
        if self.matched_scores:
            lines.append(
                f"  scores: matched detections median {np.median(self.matched_scores):.3f}, "
                f"unmatched median {np.median(self.unmatched_scores or [0]):.3f}"
            )
        if self.ctr_pred:
            p, t = np.array(self.ctr_pred), np.array(self.ctr_target)
            eps = 1e-6
            bce = -np.mean(t * np.log(p + eps) + (1 - t) * np.log(1 - p + eps))
            floor = -np.mean(t * np.log(t + eps) + (1 - t) * np.log(1 - t + eps))
            corr = np.corrcoef(p, t)[0, 1]
            lines.append(
                f"  centerness on positives: correlation with the target {corr:.3f}, "
                f"BCE {bce:.3f} (floor {floor:.3f}: the target's entropy; 0.693 untrained)"
            )
        return "\n".join(lines)


@torch.no_grad()
def diagnose_detector(
    model, mapped: List[Dict], score_thresh: float, assignment: LocationAssignment
) -> DetectorDiagnosis:
    """``mapped``: training-mapper outputs (with "instances" holding gt_masks) at test size;
    ``assignment``: the training assignment of positives."""
    d = DetectorDiagnosis(
        positives_per_level=[0] * len(model.strides),
        level_names=[f"P{int(s).bit_length() - 1}" for s in model.strides],  # stride 2^k: Pk
    )
    d.found = {name: [0, 0, 0] for name, _, _ in SIZE_BUCKETS}
    d.found_right_class = {name: 0 for name, _, _ in SIZE_BUCKETS}
    out_ids = model.output_category_ids
    for x in mapped:
        d.images += 1
        images = model.preprocess_image([x])
        out = model.network(images)
        inst = x["instances"].to(model.device)
        boxes, classes = inst.gt_boxes.tensor, inst.gt_classes
        masks = inst.gt_masks.tensor
        padded = tuple(images.tensor.shape[-2:])
        masks_p = F.pad(masks, (0, padded[1] - masks.shape[-1], 0, padded[0] - masks.shape[-2]))
        sizes = [tuple(c.shape[-2:]) for c in out["box_cls"]]
        pts = [level_locations(h, w, s, model.device) for (h, w), s in zip(sizes, model.strides)]
        level = torch.cat([torch.full((len(p),), i) for i, p in enumerate(pts)]).to(model.device)
        labels, ltrb, owner = assignment.fcos(
            torch.cat(pts), level, boxes, classes, masks_p, model.head.box_cls_logits.out_channels
        )
        pos = owner >= 0
        for i in range(len(pts)):
            d.positives_per_level[i] += int((pos & (level == i)).sum())
        d.objects += len(boxes)
        d.objects_without_positive += len(boxes) - len(set(owner[pos].tolist()))
        if pos.any():
            ctr = torch.cat([c[0].reshape(-1) for c in out["centerness"]])[pos].sigmoid()
            d.ctr_pred += ctr.tolist()
            d.ctr_target += centerness_targets(ltrb[pos]).tolist()
        result = model.inference(out, [x], images)[0]["instances"]
        area = masks.flatten(1).sum(1).float()
        iou = pairwise_iou(inst.gt_boxes, result.pred_boxes) if len(result) else None
        gt_sem = model.postprocessor.thing_semantic_ids[classes]
        gt_out = gt_sem if out_ids is None else gt_sem.new_tensor(out_ids)[gt_sem]
        matched = torch.zeros(len(result), dtype=torch.bool)
        for g in range(len(boxes)):
            bucket = next(n for n, lo, hi in SIZE_BUCKETS if lo <= area[g] < hi)
            d.found[bucket][2] += 1
            if iou is None:
                continue
            hit = iou[g] >= 0.5
            if hit.any():
                d.found[bucket][1] += 1
                strong = hit & (result.scores >= score_thresh)
                if strong.any():
                    d.found[bucket][0] += 1
                    matched |= strong.cpu()
                    if (result.pred_classes[strong] == gt_out[g]).any():
                        d.found_right_class[bucket] += 1
        above = (result.scores >= score_thresh).cpu()
        d.matched_scores += result.scores[matched].tolist()
        d.unmatched_scores += result.scores[above & ~matched].tolist()
    return d
