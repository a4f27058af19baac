# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Oracle parts for a decomposition of PQ_th: replace, in an image's decoded network outputs, the
detections, the semantic logits and/or the dense box map by what the ground truth says, then
run mask construction and assembly as usual (``tools/sigma_search.py --oracle``).

What each oracle puts in (all on the network input's grid, METHOD.md section 4):
* ``boxes``: the ground-truth things (non-crowd) as detections, score 1, their own class;
* ``semantics``: logits log(f + 1e-4) where f is the fraction of each semantic-grid cell's
  labelled pixels that hold the class (void pixels left out);
* ``dense``: every stride-4 cell whose centre lies on a thing's mask gets that thing's box; the
  other cells a zero-size box at their centre.

The gap between two rows then says how much PQ_th a part costs: e.g. ``boxes`` against
``boxes+dense`` is what the learned dense box map (regressions + levelness) loses.
"""

from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ORACLE_PARTS",
    "apply_oracles",
    "oracle_detections",
    "oracle_semantics",
    "oracle_dense_boxes",
    "GroundTruthImage",
]

ORACLE_PARTS = ("boxes", "semantics", "dense")


class GroundTruthImage:
    """One image's panoptic ground truth on the network input's grid.

    Args:
        pan_ids: (H0, W0) segment ids at the original size. record: the detectron2 dict
            (``segments_info`` with contiguous ``category_id``, ``isthing``, COCO ``bbox``).
        semantic_of: dataset contiguous id -> the model's semantic index.
        image_size, padded_size: the network input (H, W), unpadded and padded.
    """

    def __init__(self, pan_ids, record: Dict, semantic_of: Dict[int, int], image_size, padded_size):
        segs = record["segments_info"]
        if any("bbox" not in s for s in segs):
            raise ValueError(f"oracle: {record['file_name']} has segments without 'bbox'")
        h0, w0 = pan_ids.shape
        ih, iw = image_size
        ids = torch.from_numpy(np.asarray(pan_ids, dtype=np.int64))
        ids = F.interpolate(ids[None, None].double(), size=(ih, iw), mode="nearest")[0, 0].long()
        self.ids = F.pad(ids, (0, padded_size[1] - iw, 0, padded_size[0] - ih))  # 0 = void
        self.scale = torch.tensor([iw / w0, ih / h0, iw / w0, ih / h0])
        self.segments = segs
        self.semantic_of = semantic_of
        self.things = [s for s in segs if s["isthing"] and not s.get("iscrowd", 0)]

    def thing_boxes(self) -> torch.Tensor:
        """(G, 4) XYXY boxes of the non-crowd things, in input pixels."""
        xywh = torch.tensor([s["bbox"] for s in self.things], dtype=torch.float32).reshape(-1, 4)
        return torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1) * self.scale

    def thing_classes(self) -> torch.Tensor:
        return torch.tensor(
            [self.semantic_of[int(s["category_id"])] for s in self.things], dtype=torch.long
        )

    def semantic_labels(self) -> torch.Tensor:
        """(Hp, Wp) semantic index of each input pixel, -1 for void and padding."""
        lut_ids = torch.tensor([s["id"] for s in self.segments], dtype=torch.long)
        lut_cls = torch.tensor(
            [self.semantic_of[int(s["category_id"])] for s in self.segments], dtype=torch.long
        )
        index = segment_index(self.ids, lut_ids)
        return torch.where(index >= 0, lut_cls[index.clamp(min=0)], index)


def segment_index(ids: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """Position in ``segment_ids`` (S,) of each entry of ``ids`` (any shape), -1 where absent
    (void, padding, or no segments at all)."""
    if segment_ids.numel() == 0:
        return torch.full_like(ids, -1)
    match = ids[..., None] == segment_ids  # (..., S)
    return torch.where(match.any(dim=-1), match.long().argmax(dim=-1), torch.full_like(ids, -1))


def oracle_detections(decoded, gt: GroundTruthImage):
    """``decoded`` with its detections replaced by the ground-truth things, score 1."""
    device = decoded.boxes.device
    boxes = gt.thing_boxes()
    return decoded.replace(
        boxes=boxes.to(device),
        scores=torch.ones(boxes.shape[0], device=device),
        classes=gt.thing_classes().to(device),
    )


def oracle_semantics(decoded, gt: GroundTruthImage):
    """``decoded`` with semantic logits log(f + 1e-4) on its own semantic grid."""
    sem = decoded.sem_seg_stride8
    c, hs, ws = sem.shape
    labels = gt.semantic_labels()
    ph, pw = labels.shape
    onehot = F.one_hot(labels.clamp(min=0), c).permute(2, 0, 1).float()
    onehot = onehot * (labels >= 0).float()[None]
    counts = F.adaptive_avg_pool2d(onehot[None], (hs, ws))[0]
    frac = counts / counts.sum(dim=0, keepdim=True).clamp(min=1e-12)
    return decoded.replace(sem_seg_stride8=torch.log(frac + 1e-4).to(sem.device, sem.dtype))


def oracle_dense_boxes(decoded, gt: GroundTruthImage):
    """``decoded`` with the dense box map of the ground truth on its stride-4 grid."""
    h4, w4 = decoded.dense.shape[-2:]
    ys = (torch.arange(h4) * 4 + 2).clamp(max=gt.ids.shape[0] - 1)
    xs = (torch.arange(w4) * 4 + 2).clamp(max=gt.ids.shape[1] - 1)
    at_centres = gt.ids[ys][:, xs]  # (h4, w4) segment ids
    thing_ids = torch.tensor([s["id"] for s in gt.things], dtype=torch.long)
    owner = segment_index(at_centres, thing_ids)  # (h4, w4), -1 off the things
    cy = (torch.arange(h4, dtype=torch.float32) * 4 + 2)[:, None].expand(h4, w4)
    cx = (torch.arange(w4, dtype=torch.float32) * 4 + 2)[None].expand(h4, w4)
    point = torch.stack([cx, cy, cx, cy])  # (4, h4, w4) zero-size boxes
    # a zero box in front of the things' boxes serves the unowned cells (owner -1 -> row 0)
    boxes = torch.cat([torch.zeros(1, 4), gt.thing_boxes()])
    dense = torch.where(owner[None] >= 0, boxes[owner + 1].permute(2, 0, 1), point)
    if decoded.dense.dim() == 4:  # every level's boxes (USE_LEVELNESS False): the same on each
        dense = dense[None].expand_as(decoded.dense)
    return decoded.replace(dense=dense.to(decoded.dense.device, decoded.dense.dtype))


def apply_oracles(decoded, gt: GroundTruthImage, parts: Sequence[str]):
    """``decoded`` with the named parts (of :data:`ORACLE_PARTS`) replaced."""
    unknown = sorted(set(parts) - set(ORACLE_PARTS))
    if unknown:
        raise ValueError(f"oracle: unknown parts {unknown} (known: {list(ORACLE_PARTS)})")
    if "boxes" in parts:
        decoded = oracle_detections(decoded, gt)
    if "semantics" in parts:
        decoded = oracle_semantics(decoded, gt)
    if "dense" in parts:
        decoded = oracle_dense_boxes(decoded, gt)
    return decoded
