# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Steps 5 and 6 fused (METHOD.md section 4): soft masks S_j and their per-pixel candidates,
computed band by band of stride-4 grid rows.

The (P, h4, w4) soft masks are the post-processing's largest tensors (100 detections at
1024x2048: 13 M values, 52 MB each temporary). Computed a band of grid rows at a time, each
band's location term, product with P_sem, window maxima, top-K and resampling stay in the CPU's
cache, and no full (P, h4, w4) tensor is ever written to memory. Each band also leaves out the
detections whose boxes cannot reach sigma there (:func:`_may_reach`): they would never be
candidates. The values are the same bits as
:func:`~.mask_construction.soft_masks` followed by :func:`~.upsampling.sample_candidates` (the
reference the tests hold it to). Tracing for export takes the whole grid as one band (the number
of bands would follow the image size).
"""

import torch

from .mask_construction import location_term
from .upsampling import (
    Candidates,
    OutputGrid,
    Taps,
    join_overflows,
    select_last,
    window_candidates,
)

__all__ = ["soft_mask_candidates"]


def _band_soft_masks(
    query: torch.Tensor,
    sem_class: torch.Tensor,
    boxes: torch.Tensor,
    sem_prob: torch.Tensor,
    mode: str,
) -> torch.Tensor:
    """S_j = P_loc * P_sem of a band of n grid rows, detections last.

    Args:
        query: (P, 4) XYXY. sem_class: (P,).
        boxes: (n, w, 4) dense boxes, or (L, n, w, 4) every level's (max over levels, Eq. S3).
        sem_prob: (n, w, C) semantic probabilities.
    Returns:
        (n, w, P).
    """
    n, w = sem_prob.shape[:2]
    if boxes.dim() == 3:
        loc = location_term(boxes.reshape(-1, 4), query, mode)  # symmetric: (n w, P)
    else:
        loc = torch.stack([location_term(b.reshape(-1, 4), query, mode) for b in boxes])
        loc = loc.amax(dim=0)
    return loc.view(n, w, -1).mul_(select_last(sem_prob, sem_class))


def _may_reach(query: torch.Tensor, boxes: torch.Tensor, sigma: float) -> torch.Tensor:
    """(P,) bool: the query boxes whose soft mask may reach ``sigma`` at a cell of the band
    whose dense boxes are ``boxes`` (..., 4). The others cannot: a query box disjoint from a
    cell's dense box has I = 0, so P_loc <= 1 / (U + 1) for GIoU + 1 and 0 for IoU, below
    sigma once the query's own area (<= U) is 1 / sigma or more; and P_sem <= 1. Kept as well:
    small, inverted and NaN query boxes. Cells with a NaN coordinate never reach sigma (their
    P_loc is NaN) and do not widen the band's extent."""
    flat = boxes.reshape(-1, 4)
    nan = torch.isnan(flat)
    lo = flat[:, :2].masked_fill(nan[:, :2], float("inf")).amin(dim=0)
    hi = flat[:, 2:].masked_fill(nan[:, 2:], float("-inf")).amax(dim=0)
    overlaps = ((query[:, :2] <= hi) & (query[:, 2:] >= lo)).all(dim=1)
    if not sigma > 0:  # every soft mask reaches sigma <= 0 somewhere
        return torch.ones_like(overlaps)
    area = (query[:, 2] - query[:, 0]) * (query[:, 3] - query[:, 1])
    inverted = (query[:, 2:] < query[:, :2]).any(dim=1)
    return overlaps | ~(area >= 1.0 / sigma) | inverted


def _band_rows(taps: Taps, start: int, stop: int, first_row: int) -> Taps:
    """Output rows ``start:stop`` of ``taps``, their cells counted from ``first_row``."""
    return Taps(
        taps.lo[start:stop] - first_row,
        taps.hi[start:stop] - first_row,
        taps.w_lo[start:stop],
        taps.w_hi[start:stop],
    )


def soft_mask_candidates(
    query: torch.Tensor,
    sem_class: torch.Tensor,
    dense: torch.Tensor,
    sem_prob: torch.Tensor,
    grid: OutputGrid,
    k: int,
    sigma: float,
    rank_first: torch.Tensor,
    mode: str = "giou_plus1",
    band_rows: int = 16,
    exact: bool = False,
) -> Candidates:
    """Per output pixel, the K candidate detections and their soft masks (steps 5-6).

    Args:
        query: (P, 4) XYXY query boxes. sem_class: (P,) semantic index of each query's class.
        dense: (4, h, w) dense box map, or (L, 4, h, w) every level's boxes.
        sem_prob: (C, h, w) semantic probabilities (in [0, 1]) on the same grid.
        grid: the output pixels on that grid (:func:`~.upsampling.output_grid`).
        k, sigma, rank_first, exact: as in :func:`~.upsampling.window_candidates`.
        mode: the location term (:func:`~.mask_construction.location_term`).
        band_rows: grid rows per band (on CPU; other devices take the whole grid at once).
    Returns:
        :class:`~.upsampling.Candidates`, equal to ``sample_candidates(soft_masks(...), ...)``.
    """
    h, w = sem_prob.shape[-2:]
    lead = list(range(dense.dim() - 3))  # [] or [0] (levels); positive dims for ONNX
    boxes = dense.permute(lead + [dense.dim() - 2, dense.dim() - 1, dense.dim() - 3])
    boxes = boxes.contiguous()  # (h, w, 4) or (L, h, w, 4)
    sem = sem_prob.permute(1, 2, 0).contiguous()  # (h, w, C)
    # bands pay off where caches are small next to the tensors: CPUs, not GPUs (where the
    # loop's many small kernels would cost more than the memory traffic they save)
    if torch.jit.is_tracing() or h <= band_rows or sem.device.type != "cpu":
        masks = _band_soft_masks(query, sem_class, boxes, sem, mode)  # one band: the grid
        ids, values, overflow = window_candidates(
            torch.cat([masks, masks[-1:]]), grid.y, grid.x, k, sigma, rank_first, exact
        )
        extra = join_overflows([(0, overflow)] if overflow else [], len(grid.x.lo), values)
        return Candidates(ids, grid.y.lo, grid.x.lo, values, *extra)
    ids = torch.empty((k, h, w), dtype=torch.long, device=sem.device)
    values = sem.new_empty((k, len(grid.y.lo), len(grid.x.lo)))
    overflows = []  # (first output row, Overflow) of the crowded bands
    starts = list(range(0, h, band_rows))
    bounds = torch.tensor(starts + [h], device=sem.device)
    out_rows = torch.searchsorted(grid.y.lo, bounds).tolist()  # output rows of each band
    for r0, i0, i1 in zip(starts, out_rows[:-1], out_rows[1:]):
        r1 = min(r0 + band_rows, h)
        below = min(r1 + 1, h)  # the band's rows and the one below it
        cells = boxes[..., r0:below, :, :]
        near = _may_reach(query, cells, sigma).nonzero().view(-1)  # the others: no candidate
        masks = _band_soft_masks(query[near], sem_class[near], cells, sem[r0:below], mode)
        if below == r1:  # the bottom edge: the last row repeated
            masks = torch.cat([masks, masks[-1:]])
        band_ids, band_values, overflow = window_candidates(
            masks, _band_rows(grid.y, i0, i1, r0), grid.x, k, sigma, rank_first[near], exact
        )
        to_image = torch.cat([near.new_zeros(1), near + 1])  # band ids -> image ids
        ids[:, r0:r1] = to_image[band_ids]
        values[:, i0:i1] = band_values
        if overflow is not None:
            overflows.append((i0, overflow._replace(ids=to_image[overflow.ids])))
    extra = join_overflows(overflows, len(grid.x.lo), values)
    return Candidates(ids, grid.y.lo, grid.x.lo, values, *extra)
