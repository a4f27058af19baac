# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""A detection's thing class from its box classifier and the semantic head together
(``MODEL.BOX_PANOPTIC.DETECTION_CLASS`` "box_and_semantic"; not in the paper or the release).

The box classifier reads one location; the semantic head labels every pixel of the object. Early
in training the two disagree most on objects that differ only in outline, and each is right on
objects the other misses. The product of the box classifier's class probabilities and the mean
semantic probability of each thing class inside the box picks the class both find likeliest.

Pure tensor functions, no loops over boxes.
"""

import torch

__all__ = [
    "box_cells",
    "box_mean_probabilities",
    "box_mean_probabilities_reference",
    "location_class_probabilities",
    "vote_thing_classes",
]


def box_cells(boxes: torch.Tensor, stride: int, h: int, w: int):
    """The grid cells each (D, 4) XYXY box (input pixels, x1 and y1 inclusive) touches, as
    half-open ranges x0 <= x < x1, y0 <= y < y1 on an (h, w) grid of ``stride``; at least one
    cell, inside the grid."""
    x0 = torch.div(boxes[:, 0], stride, rounding_mode="floor").long().clamp(0, w - 1)
    y0 = torch.div(boxes[:, 1], stride, rounding_mode="floor").long().clamp(0, h - 1)
    x1 = (torch.div(boxes[:, 2], stride, rounding_mode="floor").long() + 1).clamp(max=w)
    y1 = (torch.div(boxes[:, 3], stride, rounding_mode="floor").long() + 1).clamp(max=h)
    return x0, y0, torch.maximum(x1, x0 + 1), torch.maximum(y1, y0 + 1)


def box_mean_probabilities(prob: torch.Tensor, boxes: torch.Tensor, stride: int) -> torch.Tensor:
    """Mean of each channel of ``prob`` over the grid cells each box covers.

    Args:
        prob: (C, h, w) values on a grid of ``stride`` input pixels per cell (cell (i, j) covers
            input pixels [s j, s j + s) x [s i, s i + s)).
        boxes: (D, 4) XYXY in input pixels (inclusive of x1, y1, as detections are).
    Returns:
        (D, C): the mean over the cells that the box touches (at least one cell per box), from a
        summed-area table.
    """
    c, h, w = prob.shape
    table = prob.new_zeros(c, h + 1, w + 1)
    table[:, 1:, 1:] = prob.cumsum(1).cumsum(2)
    x0, y0, x1, y1 = box_cells(boxes, stride, h, w)
    flat = table.reshape(c, -1)

    def corner(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return flat[:, y * (w + 1) + x]  # (C, D)

    total = corner(y1, x1) - corner(y0, x1) - corner(y1, x0) + corner(y0, x0)
    area = ((y1 - y0) * (x1 - x0)).to(prob.dtype)
    return (total / area).t()


def box_mean_probabilities_reference(prob: torch.Tensor, boxes: torch.Tensor, stride: int):
    """:func:`box_mean_probabilities` box by box, a slice mean each (the tests' reference)."""
    x0, y0, x1, y1 = box_cells(boxes, stride, *prob.shape[-2:])
    means = [
        prob[:, a:b, c:d].mean(dim=(1, 2))
        for a, b, c, d in zip(y0.tolist(), y1.tolist(), x0.tolist(), x1.tolist())
    ]
    return torch.stack(means) if means else prob.new_zeros(0, prob.shape[0])


def location_class_probabilities(box_cls, levels: torch.Tensor, loc_idx: torch.Tensor):
    """Every thing class's box-classifier probability at each detection's location.

    Args:
        box_cls: per level, (K, H_l, W_l) logits of one image.
        levels: (D,) 0-based level of each detection; loc_idx: (D,) its cell in that level.
    Returns:
        (D, K) sigmoid probabilities. Read level by level (no offsets from the levels' sizes, so
        a traced model keeps it for every image size).
    """
    logits = None
    for level, cls in enumerate(box_cls):
        on = levels == level
        here = cls.reshape(cls.shape[0], -1)[:, torch.where(on, loc_idx, 0)].t()  # (D, K)
        logits = here if logits is None else torch.where(on[:, None], here, logits)
    return logits.sigmoid()


def vote_thing_classes(box_prob: torch.Tensor, sem_box_prob: torch.Tensor) -> torch.Tensor:
    """(D,) 0-based thing label: argmax over the K thing classes of box_prob * sem_box_prob,
    both (D, K)."""
    return (box_prob * sem_box_prob).argmax(dim=1)
