# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Training losses (METHOD.md section 3): sigmoid focal, GIoU weighted by centerness, centerness
BCE, semantic CE, levelness CE, the optional mask loss on constructed soft masks and the optional
GIoU loss on the stride-4 dense box map."""

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from fvcore.nn import giou_loss, sigmoid_focal_loss
from torch import nn

from detectron2.config import configurable
from detectron2.structures import ImageList
from detectron2.utils import comm

from ..data.class_layout import class_layout_from_config
from .mask_construction import (
    DENSE_BOX_SOURCES,
    THING_SEMANTICS,
    boxes_at_levels,
    dense_boxes,
    finest_level_boxes,
    location_term,
    thing_semantic_probabilities,
)
from .targets import BatchTargets, LocationAssignment, batch_targets, centerness_targets

__all__ = ["BoxPanopticCriterion", "assignment_from_config", "dice_loss", "reduce_mean"]


def assignment_from_config(cfg) -> LocationAssignment:
    """The training assignment MODEL.BOX_PANOPTIC describes (a bad LEVEL_ASSIGNMENT, or both
    POSITIVES_ON_MASK and IGNORE_OFF_MASK, is named)."""
    bp = cfg.MODEL.BOX_PANOPTIC
    try:
        return LocationAssignment.from_settings(
            bp.SIZES_OF_INTEREST,
            len(bp.IN_FEATURES),
            bp.LEVEL_ASSIGNMENT,
            bp.CENTRE_POSITIVE,
            bp.POSITIVES_ON_MASK,
            bp.IGNORE_OFF_MASK,
            bp.LEVEL_RANGE_OVERLAP,
        )
    except ValueError as e:
        raise ValueError(f"MODEL.BOX_PANOPTIC.{e}") from None


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel CE with 255 ignored; 0 (with a graph) when every pixel is ignored."""
    if not (target != 255).any():
        return logits.sum() * 0
    return F.cross_entropy(logits, target, ignore_index=255)


def reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a scalar over data-parallel workers (itself when not distributed)."""
    world = comm.get_world_size()
    if world > 1:
        x = x.clone()
        torch.distributed.all_reduce(x)
        x = x / world
    return x


def _one_of(name: str, value: str, choices) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming the argument."""
    if value not in choices:
        raise ValueError(f"BoxPanopticCriterion: {name} must be one of {choices}, got {value!r}")
    return value


def dice_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of 1 - 2 sum(p t) / (sum(p^2) + sum(t^2)) (V-Net's Dice loss).

    Args:
        pred: (P, M) soft masks in [0, 1]. target: (P, M) binary masks.
    Returns:
        a scalar over the rows whose target is not empty (an object too thin to cover a cell of
        the grid has nothing to match); 0 with a graph if there are none.
    """
    keep = target.sum(dim=1) > 0
    if not keep.any():
        return pred.sum() * 0
    pred, target = pred[keep], target[keep]
    inter = (pred * target).sum(dim=1)
    denom = (pred * pred).sum(dim=1) + (target * target).sum(dim=1)
    return (1 - 2 * inter / denom).mean()


class BoxPanopticCriterion(nn.Module):
    """Every ``loss_*`` of BoxPanoptic (METHOD 3) from the network outputs and the inputs'
    "instances" (gt_boxes, gt_classes, gt_masks unless weak), "sem_seg" (H, W) (255 = ignore)
    and optional "crowd_mask" (H, W) bool. Targets come from :func:`~.targets.batch_targets`."""

    LOSS_NAMES = (
        "loss_cls",
        "loss_box",
        "loss_ctr",
        "loss_sem_seg",
        "loss_levelness",
        "loss_mask",
        "loss_dense_box",
        "loss_sem_instance",
        "loss_cls_ce",
    )
    BOX_LOSS_WEIGHTINGS = ("centerness", "uniform")
    MASK_LOSS_TYPES = ("bce", "dice")
    DENSE_BOX_LOSS_NORMS = ("cells", "instance")
    POSITIVES_NORMALIZERS = ("batch", "ema")
    NORMALIZER_MOMENTUM = 0.9

    @configurable
    def __init__(
        self,
        *,
        strides: Sequence[int],
        thing_semantic_ids: Sequence[int],
        assignment: LocationAssignment,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        weak_supervision: bool = False,
        mask_loss: bool = False,
        location_term: str = "giou_plus1",
        box_loss_weighting: str = "centerness",
        mask_loss_type: str = "bce",
        mask_loss_semantic_grad: bool = True,
        dense_box_loss: bool = False,
        dense_box_source: str = "levelness",
        thing_semantics: str = "class",
        dense_box_loss_norm: str = "cells",
        positives_normalizer: str = "batch",
        sem_instance_loss: bool = False,
        loss_weights: Optional[Dict[str, float]] = None,
    ):
        """
        Args:
            strides: stride of each FPN level the dense head predicts on.
            thing_semantic_ids: semantic class index of each thing label (K_th entries).
            assignment: how locations become positives (:class:`~.targets.LocationAssignment`).
            focal_alpha, focal_gamma: the classifier's sigmoid focal loss.
            weak_supervision: boxes and semantic labels only (supplementary 3); no mask loss.
            mask_loss: add ``loss_mask`` on the soft masks built from GT boxes (METHOD 3.4).
            location_term: the mask loss's P_loc (``mask_construction.location_term``).
            mask_loss_type: "bce" (mean over the image's stride-4 cells) or "dice" (per
                instance, size-independent).
            mask_loss_semantic_grad: the mask loss's gradient reaches the semantic logits too
                (METHOD 3.4); False: P_sem is a constant in it, so it trains the dense box map
                (regressions through the levelness-chosen level) and leaves the semantic head to
                its cross-entropy.
            dense_box_loss: add ``loss_dense_box``, the GIoU loss of the stride-4 dense box map
                at each thing cell's true level (:meth:`_dense_box_loss`).
            dense_box_source: where mask construction reads B(p) (``DENSE_BOX_SOURCES``): the
                mask loss and ``loss_dense_box`` read it there too; "finest" needs
                ``dense_box_loss`` (the finest level's regression is otherwise trained only on
                its own positives).
            thing_semantics: the mask loss's P_sem for thing queries
                (``mask_construction.thing_semantic_probabilities``), as inference reads it.
            dense_box_loss_norm: "cells" (``loss_dense_box`` is the mean over thing cells) or
                "instance" (the mean over instances of each instance's mean over its cells).
            positives_normalizer: what ``loss_cls`` and ``loss_ctr`` are divided by: "batch"
                (the batch's positives averaged over workers, at least 1: FCOS) or "ema" (their
                moving average, :meth:`_positives_normalizer`).
            sem_instance_loss: add ``loss_sem_instance`` (:func:`instance_semantic_loss`).
            box_loss_weighting: "centerness" (FCOS: each positive's GIoU weighted by its
                centerness target) or "uniform" (every positive alike, normalised by positives).
            loss_weights: {loss name: weight}; missing names weigh 1, except ``loss_cls_ce``,
                which is computed only with a positive weight.
        """
        super().__init__()
        weights = dict(loss_weights or {})
        unknown = sorted(set(weights) - set(self.LOSS_NAMES))
        if unknown:
            raise ValueError(f"BoxPanopticCriterion: unknown losses {unknown} in loss_weights")
        if len(assignment.ranges) != len(strides):
            raise ValueError(
                f"BoxPanopticCriterion: {len(assignment.ranges)} size ranges for "
                f"{len(strides)} levels"
            )
        self.strides = [int(s) for s in strides]
        self.num_thing_classes = len(thing_semantic_ids)
        self.assignment = assignment
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.weak = weak_supervision
        self.mask_loss = mask_loss and not weak_supervision
        self.location_term = location_term
        self.box_loss_weighting = _one_of(
            "box_loss_weighting", box_loss_weighting, self.BOX_LOSS_WEIGHTINGS
        )
        self.mask_loss_type = _one_of("mask_loss_type", mask_loss_type, self.MASK_LOSS_TYPES)
        self.mask_loss_semantic_grad = bool(mask_loss_semantic_grad)
        self.dense_box_loss = bool(dense_box_loss)
        self.dense_box_source = _one_of("dense_box_source", dense_box_source, DENSE_BOX_SOURCES)
        if self.dense_box_source == "finest" and not self.dense_box_loss:
            raise ValueError(
                "BoxPanoptic: DENSE_BOX_SOURCE 'finest' needs DENSE_BOX_LOSS True (it is what "
                "trains the finest level's regression at every thing cell)"
            )
        self.thing_semantics = _one_of("thing_semantics", thing_semantics, THING_SEMANTICS)
        self.dense_box_loss_norm = _one_of(
            "dense_box_loss_norm", dense_box_loss_norm, self.DENSE_BOX_LOSS_NORMS
        )
        self.positives_normalizer = _one_of(
            "positives_normalizer", positives_normalizer, self.POSITIVES_NORMALIZERS
        )
        if self.positives_normalizer == "ema":  # in checkpoints: a resumed run divides alike
            self.register_buffer("positives_average", torch.tensor(-1.0))  # -1: no batch yet
        self.sem_instance_loss = bool(sem_instance_loss)
        self.weights = {k: float(weights.get(k, 1.0)) for k in self.LOSS_NAMES}
        self.weights["loss_cls_ce"] = float(weights.get("loss_cls_ce", 0.0))
        self.register_buffer("thing_ids", torch.tensor(thing_semantic_ids).long(), False)

    @classmethod
    def from_config(cls, cfg, strides: Sequence[int]):
        bp = cfg.MODEL.BOX_PANOPTIC
        return {
            "strides": strides,
            "thing_semantic_ids": list(class_layout_from_config(cfg).thing_ids),
            "assignment": assignment_from_config(cfg),
            "focal_alpha": bp.FOCAL_ALPHA,
            "focal_gamma": bp.FOCAL_GAMMA,
            "weak_supervision": bp.WEAK_SUPERVISION,
            "mask_loss": bp.MASK_LOSS,
            "location_term": bp.LOCATION_TERM,
            "box_loss_weighting": bp.BOX_LOSS_WEIGHTING,
            "mask_loss_type": bp.MASK_LOSS_TYPE,
            "mask_loss_semantic_grad": bp.MASK_LOSS_SEMANTIC_GRAD,
            "dense_box_loss": bp.DENSE_BOX_LOSS,
            "dense_box_source": bp.DENSE_BOX_SOURCE,
            "thing_semantics": bp.THING_SEMANTICS,
            "dense_box_loss_norm": bp.DENSE_BOX_LOSS_NORM,
            "positives_normalizer": bp.POSITIVES_NORMALIZER,
            "sem_instance_loss": bp.SEM_INSTANCE_LOSS,
            "loss_weights": {
                "loss_cls": bp.LOSS_WEIGHT_CLS,
                "loss_box": bp.LOSS_WEIGHT_BOX,
                "loss_ctr": bp.LOSS_WEIGHT_CTR,
                "loss_sem_seg": bp.LOSS_WEIGHT_SEM,
                "loss_levelness": bp.LOSS_WEIGHT_LEVELNESS,
                "loss_mask": bp.LOSS_WEIGHT_MASK,
                "loss_dense_box": bp.LOSS_WEIGHT_DENSE_BOX,
                "loss_sem_instance": bp.LOSS_WEIGHT_SEM_INSTANCE,
                "loss_cls_ce": bp.LOSS_WEIGHT_CLS_CE,
            },
        }

    def forward(self, out: Dict, batched_inputs: List[Dict], images: ImageList) -> Dict:
        padded = tuple(images.tensor.shape[-2:])
        t = batch_targets(
            batched_inputs,
            padded,
            [tuple(c.shape[-2:]) for c in out["box_cls"]],
            self.strides,
            tuple(out["levelness"].shape[-2:]),
            self.assignment,
            self.num_thing_classes,
            images.tensor.device,
            self.weak,
        )
        losses = self._detection_losses(out, t)
        sem_logits = F.interpolate(
            out["sem_seg"], size=padded, mode="bilinear", align_corners=False
        )
        losses["loss_sem_seg"] = _cross_entropy(sem_logits, t.sem_seg)
        if self.sem_instance_loss:
            boxes = [gt.boxes for gt in t.instances]
            losses["loss_sem_instance"] = instance_semantic_loss(sem_logits, t.sem_seg, boxes)
        losses["loss_levelness"] = _cross_entropy(out["levelness"], t.levelness)
        if self.mask_loss:
            losses["loss_mask"] = self._mask_loss(out, t)
        if self.dense_box_loss:
            losses["loss_dense_box"] = self._dense_box_loss(out, t)
        return {k: v * self.weights[k] for k, v in losses.items()}

    def _detection_losses(self, out: Dict, t: BatchTargets) -> Dict[str, torch.Tensor]:
        """Focal classification over all locations, GIoU weighted by the centerness target and
        centerness BCE over positives; normalised by positives averaged over workers (FCOS)."""
        n, k = t.labels.shape[0], self.num_thing_classes

        def flat(maps, c):  # per level (N, c, H, W) -> (N, M, c)
            return torch.cat([m.permute(0, 2, 3, 1).reshape(n, -1, c) for m in maps], dim=1)

        cls_logits = flat(out["box_cls"], k)
        reg = flat(out["box_reg"], 4)
        ctr = flat(out["centerness"], 1)[..., 0]
        pos = t.labels < k
        num_pos = self._positives_normalizer(reduce_mean(pos.sum().float()))
        valid = ~t.crowd  # crowd regions: ignored, not negatives
        if t.cls_ignored is not None:  # IGNORE_OFF_MASK: off-mask positives, neither pos nor neg
            valid = valid & ~t.cls_ignored
        onehot = F.one_hot(t.labels, k + 1)[..., :-1].to(cls_logits.dtype)
        loss_cls = (
            sigmoid_focal_loss(  # eager: the scripted variant rounds its first calls differently
                cls_logits[valid],
                onehot[valid],
                alpha=self.focal_alpha,
                gamma=self.focal_gamma,
                reduction="sum",
            )
            / num_pos
        )
        ctr_t = centerness_targets(t.ltrb[pos])
        # every worker joins both reductions, with or without positives (a collective skipped
        # on one worker hangs or aborts the others)
        ctr_norm = reduce_mean(ctr_t.sum()).clamp(min=1e-6)
        losses = {"loss_cls": loss_cls}
        if self.weights["loss_cls_ce"] > 0:
            losses["loss_cls_ce"] = positive_class_cross_entropy(
                cls_logits, t.labels, pos & valid, num_pos
            )
        if not pos.any():
            return {**losses, "loss_box": reg.sum() * 0, "loss_ctr": ctr.sum() * 0}
        p = t.points[None].expand(n, -1, -1)[pos]

        def to_box(d):
            return torch.stack(
                [p[:, 0] - d[:, 0], p[:, 1] - d[:, 1], p[:, 0] + d[:, 2], p[:, 1] + d[:, 3]], dim=1
            )

        giou = giou_loss(to_box(reg[pos]), to_box(t.ltrb[pos]), reduction="none")
        if self.box_loss_weighting == "uniform":
            loss_box = giou.sum() / num_pos
        else:
            loss_box = (giou * ctr_t).sum() / ctr_norm
        return {
            **losses,
            "loss_box": loss_box,
            "loss_ctr": F.binary_cross_entropy_with_logits(ctr[pos], ctr_t, reduction="sum")
            / num_pos,
        }

    def _positives_normalizer(self, count: torch.Tensor) -> torch.Tensor:
        """What the focal and centerness sums are divided by, given the batch's positives
        ``count`` (averaged over workers, so the same on each): ``max(count, 1)`` ("batch"); or
        ("ema") the moving average ``a <- m a + (1 - m) max(count, 1)`` with m =
        ``NORMALIZER_MOMENTUM``, which starts at the first batch with positives (batches before
        it divide by 1, as "batch" does). A batch with few or no positives is then divided by
        about the usual count, not by 1."""
        count = count.detach()
        clamped = count.clamp(min=1.0)
        if self.positives_normalizer == "batch":
            return clamped
        avg, m = self.positives_average, self.NORMALIZER_MOMENTUM
        with torch.no_grad():
            started = avg >= 0
            updated = torch.where(started, m * avg + (1 - m) * clamped, clamped)
            avg.copy_(torch.where(started | (count > 0), updated, avg))
        return torch.where(avg >= 0, avg, clamped)

    def _mask_loss(self, out: Dict, t: BatchTargets) -> torch.Tensor:
        """BCE or Dice (``mask_loss_type``) between S_k built from GT boxes as queries (METHOD
        3.4, simpler variant) and the GT masks sampled on the stride-4 grid."""
        size4 = tuple(t.levelness.shape[-2:])
        dense = dense_boxes(out["box_reg"], out["levelness"], self.dense_box_source)  # (N,4,h4,w4)
        sem_prob = F.interpolate(
            out["sem_seg"], size=size4, mode="bilinear", align_corners=False
        ).softmax(dim=1)
        sem_prob = thing_semantic_probabilities(sem_prob, self.thing_ids, self.thing_semantics)
        yi, xi = t.points4[:, 1].long(), t.points4[:, 0].long()
        terms = []
        for i, gt in enumerate(t.instances):
            boxes, classes, masks = gt.boxes, gt.classes, gt.masks
            if boxes.shape[0] == 0:
                continue
            loc = location_term(boxes, dense[i].reshape(4, -1).t(), self.location_term)
            psem = sem_prob[i].reshape(sem_prob.shape[1], -1)[self.thing_ids[classes]]
            if not self.mask_loss_semantic_grad:  # the mask loss trains the dense boxes only
                psem = psem.detach()
            s = (loc * psem).clamp(1e-4, 1 - 1e-4)
            target = masks[:, yi.clamp(max=masks.shape[1] - 1), xi.clamp(max=masks.shape[2] - 1)]
            if self.mask_loss_type == "dice":
                terms.append(dice_loss(s, target.float()))
            else:
                terms.append(F.binary_cross_entropy(s, target.float()))
        if not terms:
            return out["levelness"].sum() * 0
        return torch.stack(terms).mean()

    def _dense_box_loss(self, out: Dict, t: BatchTargets) -> torch.Tensor:
        """Mean GIoU loss of B(p) (Eq. 15, read at the levelness *target*; the finest level with
        ``dense_box_source`` "finest") against the box of p's owner, over the stride-4 cells
        with a thing owner (levelness target 1..L), averaged over workers. B(p) comes from
        :func:`~.mask_construction.boxes_at_levels`, as at inference, so the loss sees the blend
        between neighbouring objects' resized regressions too."""
        level, num_levels = t.levelness, len(out["box_reg"])  # (N, h4, w4): 0, 1..L, 255
        owned = ((level >= 1) & (level <= num_levels)).flatten(1)  # (N, h4 w4)
        if self.dense_box_source == "finest":
            dense = finest_level_boxes(out["box_reg"], tuple(level.shape[-2:]), 4)
        else:
            dense = boxes_at_levels(out["box_reg"], (level - 1).clamp(0, num_levels - 1), 4)
        pred = dense.flatten(2).transpose(1, 2)  # (N, h4 w4, 4)
        if self.dense_box_loss_norm == "instance":
            weight = _per_instance_weights(owned, t.owner_boxes4)  # (N, h4 w4)
        else:
            weight = owned.float()
        count = reduce_mean(weight.sum()).clamp(min=1.0)  # cells or instances, as num_pos
        if not owned.any():
            return pred.sum() * 0
        loss = giou_loss(pred[owned], t.owner_boxes4[owned], reduction="none")
        return (loss * weight[owned]).sum() / count


def positive_class_cross_entropy(
    cls_logits: torch.Tensor, labels: torch.Tensor, positive: torch.Tensor, normalizer: torch.Tensor
) -> torch.Tensor:
    """``loss_cls_ce``: softmax cross-entropy over the K_th box-class logits at the positive
    locations, summed and divided by ``normalizer`` (loss_cls's). Adding a constant to a
    location's K_th logits leaves it unchanged, so it trains which thing class a positive is and
    leaves the score's level to the focal loss, whose per-class sigmoid terms for the wrong classes
    scale with p^gamma and so barely separate classes while scores are low (early training).

    Args:
        cls_logits: (N, M, K_th) logits over all locations. labels: (N, M) in [0, K_th], K_th =
            background. positive: (N, M) bool. normalizer: scalar.
    Returns:
        scalar; 0 with the graph kept where there is no positive.
    """
    logits = cls_logits[positive]
    if logits.numel() == 0:
        return cls_logits.sum() * 0
    return F.cross_entropy(logits, labels[positive], reduction="sum") / normalizer


def instance_semantic_loss(
    logits: torch.Tensor, target: torch.Tensor, boxes: List[torch.Tensor]
) -> torch.Tensor:
    """Semantic cross-entropy averaged over each thing's box, then over the instances (of all
    workers): sum_g mean_{p in box g} CE(p) / G. Pixels with the ignore label 255 count in no box.

    The pixel weights sum_g [p in box g] / area_g are an outer product per box, so the (H, W)
    weight map is one (H, G) x (G, W) product, never a (G, H, W) tensor.

    Args:
        logits: (N, C, H, W). target: (N, H, W) long, 255 = ignore.
        boxes: per image (G_i, 4) XYXY on the same pixel grid (pixel j covers [j, j + 1)).
    """
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")  # (N, H, W)
    valid = (target != 255).to(ce.dtype)
    h, w = ce.shape[-2:]
    ys = torch.arange(h, device=ce.device, dtype=ce.dtype) + 0.5
    xs = torch.arange(w, device=ce.device, dtype=ce.dtype) + 0.5
    total, count = ce.sum() * 0, ce.new_zeros(())
    for i, b in enumerate(boxes):
        b = b.to(ce.dtype)
        rows = ((ys >= b[:, 1:2]) & (ys < b[:, 3:4])).to(ce.dtype)  # (G, H)
        cols = ((xs >= b[:, 0:1]) & (xs < b[:, 2:3])).to(ce.dtype)  # (G, W)
        area = ((rows @ valid[i]) * cols).sum(dim=1)  # (G,) valid pixels in each box
        keep = area > 0
        weight = (rows[keep] / area[keep, None]).t() @ cols[keep]  # (H, W)
        total = total + (ce[i] * weight).sum()
        count = count + keep.sum()
    return total / reduce_mean(count).clamp(min=1.0)


def _per_instance_weights(owned: torch.Tensor, owner_boxes: torch.Tensor) -> torch.Tensor:
    """(N, M) weights that sum to 1 over each instance's owned cells, 0 elsewhere.

    Args:
        owned: (N, M) bool, the cells with a thing owner. owner_boxes: (N, M, 4) XYXY owner box
            of each cell; cells of one image with the same owner box belong to one instance.
    """
    n, m = owned.shape
    image = torch.arange(n, device=owned.device, dtype=owner_boxes.dtype)[:, None, None]
    keys = torch.cat([image.expand(n, m, 1), owner_boxes], dim=2)[owned]  # (P, 5)
    weight = torch.zeros((n, m), dtype=owner_boxes.dtype, device=owned.device)
    if keys.shape[0] == 0:
        return weight
    _, inverse, counts = torch.unique(keys, dim=0, return_inverse=True, return_counts=True)
    weight[owned] = 1.0 / counts[inverse].to(weight.dtype)
    return weight
