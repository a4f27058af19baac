# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""The parameter-free mask construction (METHOD.md section 4, steps 3-6). Pure tensor functions.

S_j(p) = P_loc(B(p), B_j) * P_sem(p, c_j): every query box B_j attends to the global dense box map
B(p) with a box-overlap kernel, weighted by the semantic probability of the query's class.
"""

from typing import List, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "boxes_from_ltrb",
    "resized_level_regressions",
    "boxes_at_levels",
    "dense_box_map",
    "DENSE_BOX_SOURCES",
    "dense_boxes",
    "finest_level_boxes",
    "location_term",
    "soft_masks",
    "THING_SEMANTICS",
    "THING_PIXELS",
    "thing_semantic_probabilities",
]


def boxes_from_ltrb(ltrb: torch.Tensor, stride: int) -> torch.Tensor:
    """(..., 4, h, w) ltrb distances on a grid of ``stride`` -> (..., 4, h, w) XYXY boxes.

    Grid cell (i, j) sits at (stride j + stride // 2, stride i + stride // 2) (METHOD 2.3).
    """
    h, w = ltrb.shape[-2:]
    off = stride // 2
    xs = torch.arange(w, device=ltrb.device, dtype=ltrb.dtype) * stride + off
    ys = torch.arange(h, device=ltrb.device, dtype=ltrb.dtype) * stride + off
    x = xs.view(1, w).expand(h, w)
    y = ys.view(h, 1).expand(h, w)
    l, t, r, b = ltrb.unbind(-3)
    return torch.stack([x - l, y - t, x + r, y + b], dim=-3)


def resized_level_regressions(box_reg: List[torch.Tensor], size: Tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize each level's (N, 4, H_l, W_l) regression to ``size``: (N, L, 4, h, w)."""
    return torch.stack(
        [F.interpolate(r, size=size, mode="bilinear", align_corners=False) for r in box_reg], dim=1
    )


def boxes_at_levels(box_reg: List[torch.Tensor], level: torch.Tensor, stride: int = 4):
    """B(x, y) = B_{level(x, y)}(x, y): at each cell of a grid of ``stride``, the box regressed
    by the given level, each level's regressions bilinearly resized to the grid (Eq. 15).

    Args:
        box_reg: per level (N, 4, H_l, W_l) ltrb pixels, finest first.
        level: (N, h, w) long level index in [0, L).
        stride: stride of the grid.
    Returns:
        (N, 4, h, w) XYXY boxes.
    """
    n, h, w = level.shape
    regs = resized_level_regressions(box_reg, (h, w))  # (N, L, 4, h, w)
    index = level[:, None, None].expand(n, 1, 4, h, w)
    return boxes_from_ltrb(regs.gather(1, index).squeeze(1), stride)


def dense_box_map(box_reg: List[torch.Tensor], levelness: torch.Tensor, stride: int = 4):
    """The global dense box map chosen by levelness (Eq. 15): :func:`boxes_at_levels` at
    the argmax of ``levelness`` (N, L + 1, h, w) logits over channels 1..L (channel 0, the
    background, is ignored at inference). Returns (N, 4, h, w) XYXY boxes."""
    return boxes_at_levels(box_reg, levelness[:, 1:].argmax(dim=1), stride)


DENSE_BOX_SOURCES = ("levelness", "finest")


def dense_boxes(
    box_reg: List[torch.Tensor], levelness: torch.Tensor, source: str = "levelness", stride: int = 4
) -> torch.Tensor:
    """The dense box map B(p) on the levelness grid, (N, 4, h, w) XYXY, from ``source``:
    "levelness" (:func:`dense_box_map`, Eq. 15) or "finest" (the finest level's regression at
    every cell, bilinearly resized to the grid if coarser; the levelness logits give only the
    grid's size). ``levelness``: (N, L + 1, h, w)."""
    if source == "levelness":
        return dense_box_map(box_reg, levelness, stride)
    if source != "finest":
        raise ValueError(f"dense_boxes: unknown source {source!r} (one of {DENSE_BOX_SOURCES})")
    return finest_level_boxes(box_reg, tuple(levelness.shape[-2:]), stride)


def finest_level_boxes(box_reg: List[torch.Tensor], size: Tuple[int, int], stride: int = 4):
    """The finest level's (N, 4, H_0, W_0) regression as boxes on a ``size`` grid of ``stride``
    (bilinearly resized if coarser): (N, 4, h, w) XYXY, the "finest" dense box map."""
    n, (h, w) = box_reg[0].shape[0], size
    finest = torch.zeros((n, h, w), dtype=torch.long, device=box_reg[0].device)
    return boxes_at_levels(box_reg[:1], finest, stride)


def location_term(query: torch.Tensor, dense: torch.Tensor, mode: str = "giou_plus1"):
    """P_loc between query boxes and dense boxes (step 5).

    Args:
        query: (P, 4) XYXY. dense: (M, 4) XYXY.
        mode: "giou_plus1", the released (I + 1) / (U + 1) - (C - U) / C with C the enclosing
            box area (+1e-7), in (-1, 1]; or "iou", I / U as in the paper's text.
    Returns:
        (P, M).
    """
    if mode not in ("giou_plus1", "iou"):
        raise ValueError(f"location_term: unknown mode {mode!r} (giou_plus1 or iou)")
    if torch.is_grad_enabled() and (query.requires_grad or dense.requires_grad):
        return _location_term_autograd(query, dense, mode)
    return _location_term_inplace(query, dense, mode)


def _location_term_autograd(query: torch.Tensor, dense: torch.Tensor, mode: str):
    """The readable form, for training (the mask loss backpropagates through it)."""
    q = query[:, None, :]
    d = dense[None, :, :]
    area_q = (q[..., 2] - q[..., 0]) * (q[..., 3] - q[..., 1])
    area_d = (d[..., 2] - d[..., 0]) * (d[..., 3] - d[..., 1])
    iw = (torch.minimum(q[..., 2], d[..., 2]) - torch.maximum(q[..., 0], d[..., 0])).clamp(min=0)
    ih = (torch.minimum(q[..., 3], d[..., 3]) - torch.maximum(q[..., 1], d[..., 1])).clamp(min=0)
    inter = iw * ih
    union = area_q + area_d - inter
    if mode == "iou":
        return inter / union.clamp(min=1e-7)
    cw = torch.maximum(q[..., 2], d[..., 2]) - torch.minimum(q[..., 0], d[..., 0])
    ch = torch.maximum(q[..., 3], d[..., 3]) - torch.minimum(q[..., 1], d[..., 1])
    enclose = cw * ch + 1e-7
    return (inter + 1) / (union + 1) - (enclose - union) / enclose


def _location_term_inplace(query: torch.Tensor, dense: torch.Tensor, mode: str):
    """The same values in place, a third of the (P, M) temporaries (inference: the term is
    evaluated for every detection at every stride-4 cell). The enclosing extent is
    w_q + w_d - (min of right edges - max of left edges)."""
    qx1, qy1, qx2, qy2 = query.t()[:, :, None]  # (P, 1) each
    dx1, dy1, dx2, dy2 = dense.t()[:, None, :]  # (1, M) each

    def overlap_and_extent(a1, a2, b1, b2):
        overlap = torch.minimum(a2, b2)
        overlap -= torch.maximum(a1, b1)
        extent = torch.add(a2 - a1, b2 - b1)
        extent -= overlap
        return overlap.clamp_(min=0), extent

    iw, cw = overlap_and_extent(qx1, qx2, dx1, dx2)
    ih, ch = overlap_and_extent(qy1, qy2, dy1, dy2)
    inter = iw.mul_(ih)
    union = torch.add((qx2 - qx1) * (qy2 - qy1), (dx2 - dx1) * (dy2 - dy1))
    union -= inter
    if mode == "iou":
        return inter.div_(union.clamp_(min=1e-7))
    enclose = cw.mul_(ch).add_(1e-7)
    # (I + 1) / (U + 1) - (C - U) / C  ==  (I + 1) / (U + 1) - 1 + U / C
    out = inter.add_(1).div_(union + 1).sub_(1)
    return out.add_(union.div_(enclose))


def soft_masks(
    query: torch.Tensor,
    sem_class: torch.Tensor,
    dense: torch.Tensor,
    sem_prob: torch.Tensor,
    mode: str = "giou_plus1",
) -> torch.Tensor:
    """S_j = P_loc * P_sem on the dense grid (step 5; Eqs. S1-S3 when ``dense`` has levels).

    Args:
        query: (P, 4) XYXY query boxes. sem_class: (P,) semantic index of each query's class.
        dense: (4, h, w) dense box map, or (L, 4, h, w) every level's boxes (no levelness: the
            location term is the max over levels, supplementary Eq. S3).
        sem_prob: (C, h, w) semantic probabilities on the same grid.
    Returns:
        (P, h, w) soft masks.
    """
    h, w = sem_prob.shape[-2:]
    if dense.dim() == 3:
        loc = location_term(query, dense.reshape(4, -1).t(), mode)
    else:
        flat = dense.reshape(dense.shape[0], 4, -1).permute(0, 2, 1)  # (L, M, 4)
        loc = torch.stack([location_term(query, f, mode) for f in flat]).amax(dim=0)
    psem = sem_prob.reshape(sem_prob.shape[0], -1)[sem_class]
    return (loc * psem).reshape(-1, h, w)


THING_SEMANTICS = ("class", "relative")
# Where a thing query may take output pixels (MODEL.BOX_PANOPTIC.THING_PIXELS): wherever its
# soft mask reaches sigma (the release), or only where the semantic argmax is a thing class too.
THING_PIXELS = ("soft_mask", "semantic_things")


def thing_semantic_probabilities(
    sem_prob: torch.Tensor, thing_ids: torch.Tensor, mode: str = "class"
) -> torch.Tensor:
    """The P_sem(p, c) that soft masks read for a query of thing class c (step 5).

    Args:
        sem_prob: (..., C, h, w) semantic probabilities (softmax over C).
        thing_ids: (K_th,) semantic index of each thing class.
        mode: "class" (the release and the paper: P_sem(p, c) = p(c | p), returned unchanged) or
            "relative": P_sem(p, c) = P_thing(p) * p(c | p) / max_{c' thing} p(c' | p), with
            P_thing(p) the summed probability of the thing classes. Where c is the semantic
            head's most likely thing class this is the probability that p is a thing at all;
            where another thing class is likelier it falls by their ratio, so touching things
            of different classes still part by semantics. Not in the paper (README, "Learning
            things").
    Returns:
        (..., C, h, w): stuff rows unchanged, thing rows as ``mode`` says.
    """
    if mode == "class":
        return sem_prob
    if mode != "relative":
        raise ValueError(
            f"thing_semantic_probabilities: unknown mode {mode!r} (one of {THING_SEMANTICS})"
        )
    things = sem_prob.index_select(-3, thing_ids)  # (..., K_th, h, w)
    p_thing = things.sum(dim=-3, keepdim=True)
    relative = things / things.amax(dim=-3, keepdim=True).clamp(min=1e-12) * p_thing
    return sem_prob.index_copy(-3, thing_ids, relative)
