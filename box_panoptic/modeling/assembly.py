# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Panoptic assembly (METHOD.md section 4 step 7; not in the released code). Pure functions, no
cfg access, no Python loops over pixels or detections.

Three rules, registered in ``PANOPTIC_ASSEMBLY_REGISTRY``:

* ``assemble_argmax`` (default): each pixel goes to the detection with the highest S_j(p) among
  those with S_j(p) >= sigma (the probabilistic reading of Eq. 8).
* ``assemble_paste``: each pixel goes to the highest-scoring detection that accepts it (Panoptic
  FPN's paste-by-descending-score, done in one pass).
* ``assemble_argmax_keep_by_score``: the instances ``assemble_paste`` keeps, their pixels shared
  as ``assemble_argmax`` shares them. Under ``assemble_argmax`` alone, detections of one object
  that each win part of the others' pixels can all fall below ``overlap_thresh`` and all go,
  leaving the object void; here the highest-scoring of them stays, as under ``assemble_paste``,
  and touching objects that both stay still split where their S_j cross.

Each drops an instance whose visible area is below ``overlap_thresh`` of its accepted area or
below ``instance_area_min`` pixels, and reassigns once. Free pixels take the semantic argmax if
it is a stuff class (a thing-class argmax with no instance stays void); stuff segments below
``stuff_area_min`` pixels become void.

Both read the soft masks as per-pixel candidates (:class:`~.upsampling.Candidates`): the K
strongest detections of each pixel's window, or every detection (``dense_candidates``).
"""

from typing import NamedTuple, Optional

import torch

from detectron2.utils.registry import Registry

from .upsampling import Candidates

__all__ = [
    "PANOPTIC_ASSEMBLY_REGISTRY",
    "PanopticSegments",
    "assemble_panoptic",
    "assemble_argmax",
    "assemble_paste",
    "assemble_argmax_keep_by_score",
]

PANOPTIC_ASSEMBLY_REGISTRY = Registry("PANOPTIC_ASSEMBLY")
PANOPTIC_ASSEMBLY_REGISTRY.__doc__ = """Panoptic assembly rules: functions with the signature of
:func:`assemble_panoptic` minus ``priority``, returning :class:`PanopticSegments`."""


class PanopticSegments(NamedTuple):
    """An assembled panoptic image: ``panoptic`` (H, W) int32 ids (0 = void, 1..S) and, per
    segment s (id s + 1), ``category`` (S,) semantic index, ``isthing`` (S,) bool, ``score``
    (S,) (0 for stuff) and ``area`` (S,) pixels."""

    panoptic: torch.Tensor
    category: torch.Tensor
    isthing: torch.Tensor
    score: torch.Tensor
    area: torch.Tensor


def _assign(priority: torch.Tensor, accepted: torch.Tensor, candidates: Candidates):
    """(K, H, W) priority and accepted -> (H, W) detection id (0 none, j + 1): the accepted
    candidate of highest priority (the first on ties); and that priority (-1 where none)."""
    # max(dim).indices: the first maximum, like argmax, at a third of argmax's CPU time
    best, slot = torch.where(accepted, priority, -1.0).max(dim=0)
    ids = candidates.window_ids[slot, candidates.rows[:, None], candidates.cols[None, :]]
    return ids.masked_fill_(best < 0, 0), best


def _assign_extra(ids, best, priority_x, accepted_x, candidates: Candidates) -> torch.Tensor:
    """``ids`` (H, W) with the crowded pixels' further candidates taken into account: one wins
    where its priority beats the first K's best (ties stay with the first K)."""
    best_x, slot = torch.where(accepted_x, priority_x, -1.0).max(dim=0)  # (Q,)
    id_x = candidates.extra_ids.gather(0, slot[None])[0]
    flat_ids, flat_best = ids.view(-1), best.view(-1)
    pixels = candidates.extra_pixels
    wins = best_x > flat_best[pixels]
    flat_ids[pixels] = torch.where(wins, id_x, flat_ids[pixels])
    return ids


def _padded(flags: torch.Tensor) -> torch.Tensor:
    """(P,) per-detection flags -> (1 + P,) indexable by candidate id (id 0, none, is False)."""
    return torch.cat([flags.new_zeros(1), flags])


def _score_priorities(candidates: Candidates, det_scores: torch.Tensor):
    """Each candidate's detection score as its priority: (K, H, W) for the first K, and (E, Q)
    for the further candidates (None without them)."""
    scores = _padded(det_scores)
    priority = candidates.per_pixel(scores[candidates.window_ids])
    extra = scores[candidates.extra_ids] if candidates.has_extra else None
    return priority, extra


def _counts(labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Occurrences of each value 0..len(like)-1 in ``labels``; shaped like ``like`` (1-D).

    A scatter-add rather than ``bincount``: its length follows a tensor, so tracing keeps it
    dynamic, and it exports to ONNX (ScatterElements).
    """
    flat = labels.reshape(-1)
    return torch.zeros_like(like, dtype=torch.long).scatter_add_(0, flat, torch.ones_like(flat))


def assemble_panoptic(
    candidates: Candidates,
    priority: torch.Tensor,
    det_classes: torch.Tensor,
    det_scores: torch.Tensor,
    det_active: torch.Tensor,
    sem_seg: torch.Tensor,
    is_thing_class: torch.Tensor,
    mask_thresh: float,
    overlap_thresh: float,
    instance_area_min: int,
    stuff_area_min: int,
    priority_extra: Optional[torch.Tensor] = None,
    keep_priority: Optional[torch.Tensor] = None,
    keep_priority_extra: Optional[torch.Tensor] = None,
) -> PanopticSegments:
    """Combine detections, their soft masks and the semantic prediction into a panoptic map.

    Args:
        candidates: per output pixel, K candidate detections and their soft masks S_j
            (:func:`~box_panoptic.modeling.upsampling.sample_candidates`, or all P detections
            with :func:`~box_panoptic.modeling.upsampling.dense_candidates`).
        priority: (K, H, W) per-pixel priority of each candidate (S_j or its score);
            priority_extra: (E, Q) that of the further candidates (``candidates.extra_*``).
        keep_priority, keep_priority_extra: the priorities of the pass that decides which
            instances stay (visible >= overlap_thresh of accepted, and >= instance_area_min);
            default: ``priority`` and ``priority_extra``. The pixels of those that stay go by
            ``priority`` either way.
        det_classes: (P,) semantic class index of each detection. det_scores: (P,).
        det_active: (P,) bool, the detections that may form segments (score >= tau).
        sem_seg: (C, H, W) semantic logits or probabilities, or (H, W) long their argmax.
        is_thing_class: (C,) bool.
        mask_thresh: sigma; a pixel accepts detection j when S_j >= sigma.
    Returns:
        :class:`PanopticSegments`.
    """
    slots = torch.cat([det_scores.new_zeros(1), det_scores])  # 1 + P counting slots: 0 = none
    accepted = candidates.values >= mask_thresh
    accepted_area = candidates.accepted_area(accepted, slots)
    extra = candidates.has_extra
    if extra:  # the crowded windows' further candidates (exact mode)
        accepted_x = candidates.extra_values >= mask_thresh
        more = torch.zeros_like(slots, dtype=torch.long)
        ids_x = candidates.extra_ids[accepted_x]
        accepted_area = accepted_area + more.scatter_add_(0, ids_x, torch.ones_like(ids_x))[1:]
    allowed = det_active & (accepted_area > 0)

    def winners(allowed: torch.Tensor, priority=priority, priority_extra=priority_extra):
        usable = accepted & candidates.per_pixel(_padded(allowed)[candidates.window_ids])
        ids, best = _assign(priority, usable, candidates)
        if extra:
            usable_x = accepted_x & _padded(allowed)[candidates.extra_ids]
            ids = _assign_extra(ids, best, priority_extra, usable_x, candidates)
        return ids

    if keep_priority is None:
        keep_priority, keep_priority_extra = priority, priority_extra
    visible = _counts(winners(allowed, keep_priority, keep_priority_extra), slots)[1:]
    allowed = allowed & (visible >= overlap_thresh * accepted_area) & (visible >= instance_area_min)
    inst = winners(allowed)  # pixels of dropped instances go to the next accepted candidate
    visible = _counts(inst, slots)[1:]
    keep = allowed & (visible > 0)

    c = is_thing_class.shape[0]
    sem = sem_seg.max(dim=0)[1] if sem_seg.dim() == 3 else sem_seg
    free_stuff = (inst == 0) & ~is_thing_class[sem]
    stuff_label = torch.where(free_stuff, sem, c)  # c: not a stuff segment
    stuff_area = _counts(stuff_label, torch.cat([is_thing_class, is_thing_class[:1]]))[:c]
    stuff_keep = (stuff_area >= max(stuff_area_min, 1)) & ~is_thing_class

    n_inst = keep.sum()
    inst_id = torch.cumsum(keep.long(), 0) * keep
    stuff_id = (torch.cumsum(stuff_keep.long(), 0) + n_inst) * stuff_keep
    inst_id = torch.cat([inst_id.new_zeros(1), inst_id]).to(torch.int32)
    stuff_id = torch.cat([stuff_id, stuff_id.new_zeros(1)]).to(torch.int32)
    panoptic = torch.where(inst > 0, inst_id[inst], stuff_id[stuff_label])

    stuff_classes = torch.arange(c, device=sem.device)[stuff_keep]
    return PanopticSegments(
        panoptic=panoptic,
        category=torch.cat([det_classes[keep].long(), stuff_classes]),
        isthing=torch.cat(
            [
                torch.ones_like(det_classes[keep], dtype=torch.bool),
                torch.zeros_like(stuff_classes, dtype=torch.bool),
            ]
        ),
        score=torch.cat([det_scores[keep], det_scores.new_zeros(stuff_classes.shape)]),
        area=torch.cat([visible[keep], stuff_area[stuff_keep]]),
    )


@PANOPTIC_ASSEMBLY_REGISTRY.register()
def assemble_argmax(candidates: Candidates, *args, **kwargs) -> PanopticSegments:
    """Each pixel to the detection with the highest accepted S_j."""
    return assemble_panoptic(
        candidates, candidates.values, *args, priority_extra=candidates.extra_values, **kwargs
    )


@PANOPTIC_ASSEMBLY_REGISTRY.register()
def assemble_paste(
    candidates: Candidates, det_classes, det_scores, *args, **kwargs
) -> PanopticSegments:
    """Each pixel to the highest-scoring detection that accepts it."""
    priority, extra = _score_priorities(candidates, det_scores)
    return assemble_panoptic(
        candidates, priority, det_classes, det_scores, *args, priority_extra=extra, **kwargs
    )


@PANOPTIC_ASSEMBLY_REGISTRY.register()
def assemble_argmax_keep_by_score(
    candidates: Candidates, det_classes, det_scores, *args, **kwargs
) -> PanopticSegments:
    """The instances ``assemble_paste`` keeps, each pixel to the one of them with the highest
    accepted S_j."""
    by_score, extra = _score_priorities(candidates, det_scores)
    return assemble_panoptic(
        candidates,
        candidates.values,
        det_classes,
        det_scores,
        *args,
        priority_extra=candidates.extra_values,
        keep_priority=by_score,
        keep_priority_extra=extra,
        **kwargs,
    )
