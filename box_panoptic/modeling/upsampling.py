# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Soft masks from the stride-4 grid to output pixels (METHOD.md section 4, step 6), without a
full-resolution float mask per detection.

Bilinear resampling is separable and each output pixel reads a 2 x 2 window of grid cells, so a
detection can be accepted at a pixel (S_j >= sigma) only if it reaches sigma somewhere in that
window. :func:`sample_candidates` therefore keeps, per window, the K detections with the highest
window maximum and evaluates only those at full resolution: (K, H, W) instead of (P, H, W). With
K >= the number of detections reaching sigma in every window this is exactly the dense
upsampling followed by thresholding. In exact mode (the model's default) the windows where more
than K reach sigma also list their further detections at their pixels (``Candidates.extra_*``),
so it is always exact at a cost that grows with the crowded area only; without it (and in traced
exports) the K strongest per window are kept.

Coordinates follow ``F.interpolate(mode="bilinear", align_corners=False)``: the stride-4 grid
covers the padded input, the output covers the unpadded image, resized to the output size in
the same step (one resampling, not two).
"""

from typing import List, NamedTuple, Optional, Tuple

import torch

__all__ = [
    "Taps",
    "OutputGrid",
    "bilinear_taps",
    "output_grid",
    "resample",
    "Candidates",
    "dense_candidates",
    "select_last",
    "join_overflows",
    "window_candidates",
    "sample_candidates",
]


class Taps(NamedTuple):
    """One axis of a bilinear resampling: output position i reads cells ``lo[i]`` and ``hi[i]``
    with weights ``w_lo[i]`` and ``w_hi[i]``. lo, hi: (n_out,) long; w_lo, w_hi: (n_out,)."""

    lo: torch.Tensor
    hi: torch.Tensor
    w_lo: torch.Tensor
    w_hi: torch.Tensor


class OutputGrid(NamedTuple):
    """Rows and columns of the output pixels on the stride-4 grid."""

    y: Taps
    x: Taps


def bilinear_taps(n_out: int, n_in: int, scale: float, device=None) -> Taps:
    """Taps of ``F.interpolate``'s bilinear rule (align_corners=False) for ``n_out`` outputs read
    from ``n_in`` cells, ``scale`` input cells per output position: source position
    scale * (i + 0.5) - 0.5, clamped at 0; the upper neighbour clamped at n_in - 1."""
    i = torch.arange(n_out, device=device, dtype=torch.float32)
    src = ((i + 0.5) * scale - 0.5).clamp(min=0)  # float32, as F.interpolate computes it
    lo = src.long().clamp(max=n_in - 1)
    hi = torch.where(lo < n_in - 1, lo + 1, lo)
    w_hi = (src - lo.float()).clamp(0, 1)
    return Taps(lo, hi, 1 - w_hi, w_hi)


def output_grid(
    grid_size: Tuple[int, int],
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    device=None,
) -> OutputGrid:
    """Where the output pixels fall on the (h4, w4) grid that covers the padded input.

    Without a test-time resize (output == image size) this is ``F.interpolate`` from the grid to
    the padded size, cropped to the image; otherwise the same map scaled to the output size.
    """
    axes = []
    for n_grid, n_pad, n_img, n_out in zip(grid_size, padded_size, image_size, output_size):
        # (n_img / n_out) is exactly 1 without a resize; sizes stay traced when exporting
        scale = (n_grid / n_pad) * (n_img / n_out)
        axes.append(bilinear_taps(n_out, n_grid, scale, device))
    return OutputGrid(*axes)


def _blend(lo: torch.Tensor, hi: torch.Tensor, taps: Taps, dim: int) -> torch.Tensor:
    """w_lo * lo + w_hi * hi, the weights laid along ``dim``; in place in ``lo`` and ``hi``
    (fresh tensors at every call site) unless autograd records."""
    shape = [1] * lo.dim()
    shape[dim] = -1
    if torch.is_grad_enabled() and (lo.requires_grad or hi.requires_grad):
        return lo * taps.w_lo.view(shape) + hi * taps.w_hi.view(shape)
    return lo.mul_(taps.w_lo.view(shape)).add_(hi.mul_(taps.w_hi.view(shape)))


def select_last(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values.index_select(-1, index)`` as a gather: the same values, about 9x faster on CPU
    (index_select copies element by element along the last dimension)."""
    return values.gather(-1, index.expand(values.shape[:-1] + index.shape))


def _along(values: torch.Tensor, dim: int, taps: Taps) -> torch.Tensor:
    """Resample ``values`` along ``dim`` with ``taps``."""
    if dim == -1 or dim == values.dim() - 1:
        return _blend(select_last(values, taps.lo), select_last(values, taps.hi), taps, dim)
    return _blend(values.index_select(dim, taps.lo), values.index_select(dim, taps.hi), taps, dim)


def resample(values: torch.Tensor, grid: OutputGrid) -> torch.Tensor:
    """(..., h4, w4) -> (..., H, W) bilinear resampling onto the output pixels (columns first,
    as ``F.interpolate`` does)."""
    return _along(_along(values, -1, grid.x), -2, grid.y)


class Candidates(NamedTuple):
    """Per output pixel, K candidate detections and their upsampled soft mask values, plus, in
    exact mode, every further detection that reaches sigma where a window is crowded.

    window_ids: (K, h, w) long, j + 1 for detection j and 0 for an empty slot, per window of
    the grid; rows: (H,) and cols: (W,) long, each output pixel's window; values: (K, H, W),
    the candidates' S_j at each pixel, -1 for an empty slot (never accepted).
    extra_pixels: (Q,) long flat indices y * W + x of the output pixels whose window has more
    than K detections reaching sigma; extra_ids: (E, Q) long, their further detections (j + 1,
    0 = empty); extra_values: (E, Q) their S_j (-1 = empty). Empty (Q = 0) when no window is
    crowded or in the fixed-K mode."""

    window_ids: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    extra_pixels: Optional[torch.Tensor] = None
    extra_ids: Optional[torch.Tensor] = None
    extra_values: Optional[torch.Tensor] = None

    @property
    def has_extra(self) -> bool:
        """Whether some pixels have further candidates (a Python bool: never while tracing)."""
        return self.extra_pixels is not None and self.extra_pixels.numel() > 0

    def per_pixel(self, window_table: torch.Tensor) -> torch.Tensor:
        """(K, h, w) per-window entries -> (K, H, W) per-pixel entries."""
        return select_last(window_table.index_select(1, self.rows), self.cols)

    def ids_at(self, k: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Detection ids (0 or j + 1) of candidate slots ``k`` at pixels (``y``, ``x``)."""
        return self.window_ids[k, self.rows[y], self.cols[x]]

    def restricted_to(self, allowed: torch.Tensor) -> "Candidates":
        """The candidates with every value set to 0 (below any sigma > 0, never accepted) at
        the output pixels where ``allowed`` (H, W) bool is False; the ids stay, so the
        per-window tables are unchanged."""
        values = self.values * allowed.to(self.values.dtype)
        extra_values = self.extra_values
        if self.extra_pixels is not None and self.extra_values is not None:
            keep = allowed.reshape(-1)[self.extra_pixels].to(self.extra_values.dtype)
            extra_values = self.extra_values * keep
        return self._replace(values=values, extra_values=extra_values)

    def accepted_area(self, accepted: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """(P,) long: at how many pixels each detection is accepted, given ``accepted``
        (K, H, W) bool and ``slots`` (1 + P,), any tensor with one entry per id (its length
        stays traced). Eager: summed per window, then per detection (a third of the time of
        listing the accepted pixels, which tracing keeps: ONNX's index_add drops repeats)."""
        counts = torch.zeros_like(slots, dtype=torch.long)
        if torch.jit.is_tracing():
            ids = self.ids_at(*accepted.nonzero(as_tuple=True))
            return counts.scatter_add_(0, ids, torch.ones_like(ids))[1:]
        k, h, w = self.window_ids.shape
        per_row = accepted.new_zeros((k, h, accepted.shape[2]), dtype=torch.float32)
        per_row.index_add_(1, self.rows, accepted.float())  # exact: < 2^24 pixels a window
        per_window = per_row.new_zeros((k, h, w)).index_add_(2, self.cols, per_row)
        return counts.scatter_add_(0, self.window_ids.reshape(-1), per_window.view(-1).long())[1:]


def dense_candidates(masks: torch.Tensor) -> Candidates:
    """Every detection at every pixel: (P, H, W) full-resolution soft masks as candidates (the
    reference path; plus one empty slot, so that P = 0 works)."""
    p, h, w = masks.shape
    values = torch.cat([masks, masks.new_full((1, h, w), -1.0)])
    ids = torch.arange(1, p + 2, device=masks.device).view(p + 1, 1, 1) % (p + 1)
    rows, cols = torch.arange(h, device=masks.device), torch.arange(w, device=masks.device)
    return Candidates(ids.expand(values.shape), rows, cols, values)


def window_candidates(
    masks: torch.Tensor,
    rows: Taps,
    cols: Taps,
    k: int,
    sigma: float,
    rank_first: torch.Tensor,
    exact: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, Optional["Overflow"]]:
    """The K detections per 2 x 2 window with the highest window maximum, resampled at each
    output pixel, for one band of b grid rows (the whole grid, or a band of it).

    Args:
        masks: (b + 1, w, P) soft masks S_j of the band's grid rows and the row below it (the
            caller repeats the last grid row at the bottom edge), detections last.
        rows: taps of the band's output rows, ``lo`` counted from the band's first grid row.
        cols: taps of every output column.
        k: candidates kept per window (a constant: the cost and the exported graph follow it).
        sigma: acceptance threshold; a detection below it in the whole window is no candidate.
        rank_first: (P,) bool, detections that take the slots before the others (those the
            panoptic assembly uses).
        exact: also list, for the output pixels of every window where more than K detections
            reach sigma, those further detections (:class:`Overflow`; never while tracing).
    Returns:
        ids (K, b, w) long, j + 1 for detection j and 0 for an empty slot; values
        (k, len(rows.lo), len(cols.lo)), each slot's S_j at each output pixel.
    """
    b, w = masks.shape[0] - 1, masks.shape[1]
    # k empty planes in front keep top-k valid for any P (and no P in the traced graph)
    planes = torch.cat([masks.new_full((b + 1, w, k), -1.0), masks], dim=2)
    planes = torch.cat([planes, planes[:, -1:]], dim=1)  # the last column repeated
    cols_max = torch.maximum(planes[:, :-1], planes[:, 1:])
    window_max = torch.maximum(cols_max[:-1], cols_max[1:])  # over cells {a, a+1} x {c, c+1}
    reaches = window_max >= sigma
    first = torch.cat([rank_first.new_zeros(k), rank_first])
    key = window_max + reaches * (2.0 + 2.0 * first)  # reaching and ranked first, then reaching
    ids = key.topk(k, dim=2).indices  # (b, w, k), detections last: a contiguous top-k
    ids = torch.where(reaches.gather(2, ids), ids, torch.zeros_like(ids))  # 0: an empty plane
    # the window's four corners for each candidate, then columns and rows resampled
    c00, c01, c10, c11 = (
        select_last(planes[dy : dy + b, dx : dx + w].gather(2, ids).permute(2, 0, 1), cols.lo)
        for dy in (0, 1)
        for dx in (0, 1)
    )
    top, bottom = _blend(c00, c01, cols, 2), _blend(c10, c11, cols, 2)
    values = _blend(top.index_select(1, rows.lo), bottom.index_select(1, rows.lo), rows, 1)
    det = (ids - (k - 1)).clamp(min=0).permute(2, 0, 1)  # empty planes -> 0, j -> j + 1
    overflow = None
    if exact and not torch.jit.is_tracing():
        overflow = _overflow(planes, key, reaches, rows, cols, k)
    return det, values, overflow


class Overflow(NamedTuple):
    """A band's further candidates: ``pixels`` (Q, 2) long (band output row, column),
    ``ids`` (E, Q) long (j + 1, 0 = empty), ``values`` (E, Q)."""

    pixels: torch.Tensor
    ids: torch.Tensor
    values: torch.Tensor


def _overflow(planes, key, reaches, rows: Taps, cols: Taps, k: int) -> Optional[Overflow]:
    """The detections ranked after the first K in windows where more than K reach sigma, at
    those windows' output pixels, resampled with the same arithmetic as the first K (the same
    bits as the dense upsampling)."""
    count = reaches.sum(dim=2)  # (b, w)
    crowded = count > k
    if not bool(crowded.any()):
        return None
    win = crowded.nonzero()  # (n, 2) window (row, column) in the band
    a, c = win[:, 0], win[:, 1]
    e = int(count.max()) - k
    ids = key[a, c].topk(k + e, dim=1).indices[:, k:]  # (n, E) plane index, ranks k..k+E-1
    ids = torch.where(reaches[a, c].gather(1, ids), ids, torch.zeros_like(ids))
    a1, c1, i = a[:, None], c[:, None], ids
    c00, c01 = planes[a1, c1, i], planes[a1, c1 + 1, i]
    c10, c11 = planes[a1 + 1, c1, i], planes[a1 + 1, c1 + 1, i]
    index = torch.full(crowded.shape, -1, dtype=torch.long, device=key.device)
    index[a, c] = torch.arange(len(a), device=key.device)
    at = index.index_select(0, rows.lo).index_select(1, cols.lo)  # (n_rows, W) window or -1
    pixels = (at >= 0).nonzero()  # (Q, 2)
    y, x = pixels[:, 0], pixels[:, 1]
    w = at[y, x]
    wx_lo, wx_hi = cols.w_lo[x][:, None], cols.w_hi[x][:, None]
    wy_lo, wy_hi = rows.w_lo[y][:, None], rows.w_hi[y][:, None]
    top = c00[w] * wx_lo + c01[w] * wx_hi
    bottom = c10[w] * wx_lo + c11[w] * wx_hi
    values = top * wy_lo + bottom * wy_hi  # (Q, E)
    det = (ids[w] - (k - 1)).clamp(min=0)
    return Overflow(pixels, det.t().contiguous(), values.t().contiguous())


def join_overflows(parts: List[Tuple[int, Overflow]], width: int, like: torch.Tensor):
    """(extra_pixels, extra_ids, extra_values) of :class:`Candidates` from the bands'
    overflows, each with the band's first output row; empty tensors when there is none."""
    if not parts:
        return (
            torch.zeros(0, dtype=torch.long, device=like.device),
            torch.zeros((0, 0), dtype=torch.long, device=like.device),
            like.new_zeros((0, 0)),
        )
    e = max(o.ids.shape[0] for _, o in parts)
    pixels, ids, values = [], [], []
    for row0, o in parts:
        pixels.append((o.pixels[:, 0] + row0) * width + o.pixels[:, 1])
        pad = e - o.ids.shape[0]
        ids.append(torch.cat([o.ids, o.ids.new_zeros((pad, o.ids.shape[1]))]))
        values.append(torch.cat([o.values, o.values.new_full((pad, o.values.shape[1]), -1.0)]))
    return torch.cat(pixels), torch.cat(ids, dim=1), torch.cat(values, dim=1)


def sample_candidates(
    masks4: torch.Tensor,
    grid: OutputGrid,
    k: int,
    sigma: float,
    rank_first: torch.Tensor,
    exact: bool = False,
) -> Candidates:
    """:func:`window_candidates` over the whole grid.

    Args:
        masks4: (P, h4, w4) soft masks S_j on the stride-4 grid.
        grid: the output pixels on that grid (:func:`output_grid`).
        k, sigma, rank_first, exact: as in :func:`window_candidates`.
    Returns:
        :class:`Candidates`.
    """
    cells = masks4.permute(1, 2, 0)  # (h4, w4, P)
    ids, values, overflow = window_candidates(
        torch.cat([cells, cells[-1:]]), grid.y, grid.x, k, sigma, rank_first, exact
    )
    extra = join_overflows([(0, overflow)] if overflow else [], len(grid.x.lo), values)
    return Candidates(ids, grid.y.lo, grid.x.lo, values, *extra)
