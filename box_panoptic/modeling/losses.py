# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Training losses (METHOD.md section 3): sigmoid focal, GIoU weighted by centerness, centerness
BCE, semantic CE, levelness CE and the optional mask loss on constructed soft masks."""

from typing import Dict, List

import torch
import torch.nn.functional as F
from fvcore.nn import giou_loss, sigmoid_focal_loss
from torch import nn

from detectron2.utils import comm

from ..data.class_layout import class_layout_from_config
from .inference import level_locations
from .mask_construction import dense_box_map, location_term
from .targets import LocationAssignment, centerness_targets

__all__ = ["BoxPanopticCriterion", "assignment_from_config", "reduce_mean"]


def assignment_from_config(cfg) -> LocationAssignment:
    """The training assignment MODEL.BOX_PANOPTIC describes (a bad LEVEL_ASSIGNMENT is named)."""
    bp = cfg.MODEL.BOX_PANOPTIC
    try:
        return LocationAssignment.from_settings(
            bp.SIZES_OF_INTEREST, len(bp.IN_FEATURES), bp.LEVEL_ASSIGNMENT, bp.CENTRE_POSITIVE
        )
    except ValueError as e:
        raise ValueError(f"MODEL.BOX_PANOPTIC.LEVEL_ASSIGNMENT: {e}") from None


def reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a scalar over data-parallel workers (itself when not distributed)."""
    world = comm.get_world_size()
    if world > 1:
        x = x.clone()
        torch.distributed.all_reduce(x)
        x = x / world
    return x


class BoxPanopticCriterion(nn.Module):
    """Computes every ``loss_*`` of BoxPanoptic from the network outputs and the inputs'
    "instances" (gt_boxes, gt_classes, gt_masks unless weak), "sem_seg" (H, W) (255 = ignore) and
    optional "crowd_mask" (H, W) bool."""

    def __init__(self, cfg):
        super().__init__()
        bp = cfg.MODEL.BOX_PANOPTIC
        # fmt: off
        layout = class_layout_from_config(cfg)
        self.num_thing_classes = layout.num_thing_classes
        self.assignment        = assignment_from_config(cfg)
        self.focal_alpha       = bp.FOCAL_ALPHA
        self.focal_gamma       = bp.FOCAL_GAMMA
        self.weak              = bp.WEAK_SUPERVISION
        self.mask_loss         = bp.MASK_LOSS and not bp.WEAK_SUPERVISION
        self.location_term     = bp.LOCATION_TERM
        self.register_buffer("thing_ids", torch.tensor(layout.thing_ids), persistent=False)
        self.weights = {"loss_cls": bp.LOSS_WEIGHT_CLS, "loss_box": bp.LOSS_WEIGHT_BOX,
                        "loss_ctr": bp.LOSS_WEIGHT_CTR, "loss_sem_seg": bp.LOSS_WEIGHT_SEM,
                        "loss_levelness": bp.LOSS_WEIGHT_LEVELNESS,
                        "loss_mask": bp.LOSS_WEIGHT_MASK}
        # fmt: on

    def _gt(self, x: Dict, padded, device):
        inst = x["instances"].to(device)
        boxes = inst.gt_boxes.tensor
        masks = None
        if not self.weak:
            if inst.has("gt_masks"):
                m = inst.gt_masks
                m = m.tensor if hasattr(m, "tensor") else m
                masks = F.pad(m.bool(), (0, padded[1] - m.shape[-1], 0, padded[0] - m.shape[-2]))
            else:
                masks = torch.zeros((0,) + tuple(padded), dtype=torch.bool, device=device)
        return boxes, inst.gt_classes, masks

    def forward(self, out: Dict, batched_inputs: List[Dict], images, strides) -> Dict:
        device = images.tensor.device
        padded = tuple(images.tensor.shape[-2:])
        n = images.tensor.shape[0]
        sizes = [tuple(c.shape[-2:]) for c in out["box_cls"]]
        pts = [level_locations(h, w, s, device) for (h, w), s in zip(sizes, strides)]
        points = torch.cat(pts)
        level_of_point = torch.cat(
            [torch.full((len(p),), i, device=device, dtype=torch.long) for i, p in enumerate(pts)]
        )
        h4, w4 = out["levelness"].shape[-2:]
        pts4 = level_locations(h4, w4, 4, device)
        # pixel indices of the grids' locations (the same for every image of the batch)
        yi4, xi4 = pts4[:, 1].long(), pts4[:, 0].long()
        yi = points[:, 1].long().clamp(max=padded[0] - 1)
        xi = points[:, 0].long().clamp(max=padded[1] - 1)

        sem_t = torch.full((n,) + padded, 255, dtype=torch.long, device=device)
        labels, ltrbs, lev_t, crowd_pts = [], [], [], []
        gts = []
        for i, x in enumerate(batched_inputs):
            boxes, classes, masks = self._gt(x, padded, device)
            gts.append((boxes, classes, masks))
            lab, ltrb, _ = self.assignment.fcos(
                points, level_of_point, boxes, classes, masks, self.num_thing_classes
            )
            sem = x["sem_seg"].to(device).long()
            sem_t[i, : sem.shape[0], : sem.shape[1]] = sem
            crowd = x.get("crowd_mask")
            crowd = (
                F.pad(
                    crowd.to(device).bool(),
                    (0, padded[1] - crowd.shape[-1], 0, padded[0] - crowd.shape[-2]),
                )
                if crowd is not None
                else torch.zeros(padded, dtype=torch.bool, device=device)
            )
            ignore4 = (sem_t[i, yi4, xi4] == 255) | crowd[yi4, xi4]
            lev_t.append(self.assignment.levelness(pts4, boxes, masks, ignore4))
            crowd_pts.append(crowd[yi, xi] & (lab == self.num_thing_classes))
            labels.append(lab)
            ltrbs.append(ltrb)
        labels = torch.stack(labels)  # (N, M)
        ltrbs = torch.stack(ltrbs)  # (N, M, 4)
        crowd_pts = torch.stack(crowd_pts)

        def flat(maps, c):  # per level (N, c, H, W) -> (N, M, c)
            return torch.cat([m.permute(0, 2, 3, 1).reshape(n, -1, c) for m in maps], dim=1)

        cls_logits = flat(out["box_cls"], self.num_thing_classes)
        reg = flat(out["box_reg"], 4)
        ctr = flat(out["centerness"], 1)[..., 0]

        pos = labels < self.num_thing_classes
        num_pos = reduce_mean(pos.sum().float()).clamp(min=1.0)
        valid = ~crowd_pts  # crowd regions: ignored, not negatives
        onehot = F.one_hot(labels, self.num_thing_classes + 1)[..., :-1].to(cls_logits.dtype)
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

        ctr_t = centerness_targets(ltrbs[pos])
        ctr_norm = reduce_mean(ctr_t.sum()).clamp(min=1e-6)
        p = points[None].expand(n, -1, -1)[pos]

        def to_box(d):
            return torch.stack(
                [p[:, 0] - d[:, 0], p[:, 1] - d[:, 1], p[:, 0] + d[:, 2], p[:, 1] + d[:, 3]], dim=1
            )

        if pos.any():
            loss_box = (
                giou_loss(to_box(reg[pos]), to_box(ltrbs[pos]), reduction="none") * ctr_t
            ).sum() / ctr_norm
            loss_ctr = (
                F.binary_cross_entropy_with_logits(ctr[pos], ctr_t, reduction="sum") / num_pos
            )
        else:
            loss_box = reg.sum() * 0
            loss_ctr = ctr.sum() * 0

        sem_logits = F.interpolate(
            out["sem_seg"], size=padded, mode="bilinear", align_corners=False
        )
        loss_sem = F.cross_entropy(sem_logits, sem_t, ignore_index=255)
        lev_t = torch.stack(lev_t).view(n, h4, w4)
        loss_lev = F.cross_entropy(out["levelness"], lev_t, ignore_index=255)
        if not (sem_t != 255).any():
            loss_sem = sem_logits.sum() * 0
        if not (lev_t != 255).any():
            loss_lev = out["levelness"].sum() * 0

        losses = {
            "loss_cls": loss_cls,
            "loss_box": loss_box,
            "loss_ctr": loss_ctr,
            "loss_sem_seg": loss_sem,
            "loss_levelness": loss_lev,
        }
        if self.mask_loss:
            losses["loss_mask"] = self._mask_loss(out, gts, pts4, (h4, w4))
        return {k: v * self.weights[k] for k, v in losses.items()}

    def _mask_loss(self, out, gts, pts4, size4):
        """BCE between S_k built from GT boxes as queries (METHOD 3.4, simpler variant) and the GT
        masks sampled on the stride-4 grid."""
        dense = dense_box_map(out["box_reg"], out["levelness"], stride=4)  # (N, 4, h4, w4)
        sem_prob = F.interpolate(
            out["sem_seg"], size=size4, mode="bilinear", align_corners=False
        ).softmax(dim=1)
        yi, xi = pts4[:, 1].long(), pts4[:, 0].long()
        terms = []
        for i, (boxes, classes, masks) in enumerate(gts):
            if boxes.shape[0] == 0:
                continue
            loc = location_term(boxes, dense[i].reshape(4, -1).t(), self.location_term)
            psem = sem_prob[i].reshape(sem_prob.shape[1], -1)[self.thing_ids[classes]]
            s = (loc * psem).clamp(1e-4, 1 - 1e-4)
            target = masks[:, yi.clamp(max=masks.shape[1] - 1), xi.clamp(max=masks.shape[2] - 1)]
            terms.append(F.binary_cross_entropy(s, target.float()))
        if not terms:
            return out["levelness"].sum() * 0
        return torch.stack(terms).mean()
