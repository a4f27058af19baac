# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Detection decoding and NMS (METHOD.md section 4, steps 1-2). Pure tensor functions."""

from typing import List, Tuple

import torch
from torchvision.ops import batched_nms, nms

__all__ = ["level_locations", "decode_level", "decode_detections", "select_detections"]


def level_locations(h: int, w: int, stride: int, device=None) -> torch.Tensor:
    """Pixel centres of an (h, w) map of ``stride`` (METHOD 2.3): cell (i, j) -> (s j + s // 2,
    s i + s // 2). Returns (h * w, 2) float (x, y), row-major."""
    ys = torch.arange(h, device=device, dtype=torch.float32) * stride + stride // 2
    xs = torch.arange(w, device=device, dtype=torch.float32) * stride + stride // 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def decode_level(
    box_cls: torch.Tensor,
    box_reg: torch.Tensor,
    centerness: torch.Tensor,
    stride: int,
    image_size: Tuple[int, int],
    pre_nms_thresh: float,
    pre_nms_top_n: int,
):
    """Candidates of one level of one image (step 1).

    Args:
        box_cls: (K, H, W) class logits. box_reg: (4, H, W) ltrb pixels. centerness: (1, H, W).
        stride: the level's stride. image_size: (h, w) of the unpadded image, for clipping.
        pre_nms_thresh: threshold on sigmoid(class logit) (before centerness).
        pre_nms_top_n: at most this many candidates, by score = prob * centerness.

    Returns:
        boxes (M, 4) XYXY clipped to [0, w - 1] x [0, h - 1], scores (M,), labels (M,) 0-based,
        location index (M,) into this level's H * W grid.
    """
    k, h, w = box_cls.shape
    prob = box_cls.sigmoid().reshape(k, -1).t()  # (HW, K)
    ctr = centerness.sigmoid().reshape(-1, 1)
    candidate = prob > pre_nms_thresh
    score = torch.where(candidate, prob * ctr, torch.full_like(prob, -1.0)).reshape(-1)
    # top-k with a constant k over the scores padded by k non-candidates: the same result as
    # topk(min(k, numel)), and a traced model keeps it for every image size
    padded = torch.cat([score, score.new_full((pre_nms_top_n,), -1.0)])
    top_scores, top_idx = padded.topk(pre_nms_top_n, sorted=True)
    keep = top_scores > -1.0
    top_scores, top_idx = top_scores[keep], top_idx[keep]
    loc_idx = torch.div(top_idx, k, rounding_mode="floor")
    labels = top_idx % k
    loc = level_locations(h, w, stride, box_cls.device)[loc_idx]
    reg = box_reg.reshape(4, -1).t()[loc_idx]
    boxes = torch.stack(
        [
            loc[:, 0] - reg[:, 0],
            loc[:, 1] - reg[:, 1],
            loc[:, 0] + reg[:, 2],
            loc[:, 1] + reg[:, 3],
        ],
        dim=1,
    )
    ih, iw = image_size
    boxes = torch.stack(
        [
            boxes[:, 0].clamp(0, iw - 1),
            boxes[:, 1].clamp(0, ih - 1),
            boxes[:, 2].clamp(0, iw - 1),
            boxes[:, 3].clamp(0, ih - 1),
        ],
        dim=1,
    )
    return boxes, top_scores, labels, loc_idx


def select_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    nms_thresh: float,
    agnostic_nms_thresh: float,
    post_nms_top_n: int,
) -> torch.Tensor:
    """Per-class NMS, then class-agnostic NMS, then top-N by k-th value (step 2).

    Args:
        boxes (M, 4), scores (M,), labels (M,): all levels' candidates of one image.
    Returns:
        (D,) indices into the inputs, by descending score. The k-th value threshold keeps ties,
        as the release does, so D can exceed ``post_nms_top_n`` by ties.
    """
    keep = batched_nms(boxes, scores, labels, nms_thresh)
    if agnostic_nms_thresh < 1.0:
        keep = keep[nms(boxes[keep], scores[keep], agnostic_nms_thresh)]
    kept = scores[keep]
    order = kept.argsort(descending=True)
    keep, kept = keep[order], kept[order]
    if post_nms_top_n > 0:
        # k-th value threshold written with tensor ops only (no data-dependent Python branch,
        # so a traced model keeps it): index min(N, D) - 1 of the sorted scores.
        last = (torch.ones_like(kept).sum() - 1).clamp(min=0, max=post_nms_top_n - 1).long()
        kth = torch.cat([kept, kept.new_full((1,), -1.0)]).gather(0, last.view(1))
        keep = keep[kept >= kth]
    return keep


def decode_detections(
    box_cls: List[torch.Tensor],
    box_reg: List[torch.Tensor],
    centerness: List[torch.Tensor],
    strides: List[int],
    image_size: Tuple[int, int],
    pre_nms_thresh: float,
    pre_nms_top_n: int,
    nms_thresh: float,
    agnostic_nms_thresh: float,
    post_nms_top_n: int,
):
    """Steps 1-2 for one image. Per-level inputs are (K, H_l, W_l), (4, ...), (1, ...).

    Returns:
        boxes (D, 4), scores (D,), labels (D,), levels (D,) 0-based FPN level of each detection,
        loc_idx (D,) location index in its level's grid.
    """
    parts = [
        decode_level(c, r, t, s, image_size, pre_nms_thresh, pre_nms_top_n)
        for c, r, t, s in zip(box_cls, box_reg, centerness, strides)
    ]
    boxes = torch.cat([p[0] for p in parts])
    scores = torch.cat([p[1] for p in parts])
    labels = torch.cat([p[2] for p in parts])
    loc_idx = torch.cat([p[3] for p in parts])
    levels = torch.cat([torch.full_like(p[2], i) for i, p in enumerate(parts)])
    keep = select_detections(boxes, scores, labels, nms_thresh, agnostic_nms_thresh, post_nms_top_n)
    return boxes[keep], scores[keep], labels[keep], levels[keep], loc_idx[keep]
