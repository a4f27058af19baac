# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""detectron2's Panoptic FPN trained and evaluated on the same data path as BoxPanoptic, the peer
of ``tools/learning_curve.py``.

* Config (:func:`panoptic_fpn_config`): detectron2's ``panoptic_fpn_R_50_1x`` with BoxPanoptic's
  backbone (ResNet depth, widths, norms, FPN channels, frozen stages), input, solver, data and
  seed; GN in the RoI heads (detectron2's from-scratch recipe); anchor sizes scaled like
  BoxPanoptic's sizes of interest (both at their defaults / 64).
* Data: box_panoptic's mapper; the semantic target goes to Panoptic FPN's own layout (0 = any
  thing, stuff 1..S, 255 ignore).
* Outputs: back to the dataset's contiguous ids, so box_panoptic's evaluators score both models
  the same way (:class:`PanopticFPNOnLayout`).
* Assembly: stuff segments below BoxPanoptic's ``STUFF_AREA_MIN`` become void, as in
  BoxPanoptic's assembly (detectron2's 4096 px is an eighth of a 128x256 image). When
  BoxPanoptic's threshold calibration is on, the peer's instance confidence threshold is chosen
  on the same training images before each evaluation (:func:`calibrate_instance_confidence`).
"""

import dataclasses
import logging
import os
from typing import Dict, List, Sequence

import torch
from torch import nn

from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluators
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs

from ..data.class_layout import ClassLayout, class_layout_from_config
from ..data.mapper import BoxPanopticDatasetMapper
from ..evaluation import PanopticEvaluatorWithTables, PanopticInstanceEvaluator
from ..evaluation.calibration import (
    ThresholdCalibrator,
    calibration_records,
    calibrator_from_config,
)
from ..evaluation.sigma_search import ground_truth, panoptic_quality
from .trainer import Trainer

__all__ = [
    "PEER_CONFIDENCES",
    "PanopticFPNOnLayout",
    "PanopticFPNTrainer",
    "calibrate_instance_confidence",
    "panoptic_fpn_config",
]

logger = logging.getLogger("detectron2." + __name__)  # shown by detectron2's logger setup

# The instance confidence thresholds the peer's calibration tries (detectron2's default: 0.5).
PEER_CONFIDENCES = (0.2, 0.3, 0.4, 0.5, 0.6)


def object_scale(bp) -> float:
    """How the config's objects compare with FCOS's (the P3 / P4 boundary at 64 px): the
    size-of-interest boundary above the stride-8 level over 64. The same whichever level the
    head starts at (P3-P7 with [16, 32, ...] or P2-P6 with [8, 16, ...] give 0.25)."""
    strides = [int(s) for s in bp.FPN_STRIDES]
    if 8 not in strides or strides.index(8) >= len(bp.SIZES_OF_INTEREST):
        raise ValueError(
            f"Panoptic FPN peer: needs a stride-8 level below the coarsest in FPN_STRIDES "
            f"{strides} to scale its anchors"
        )
    return float(bp.SIZES_OF_INTEREST[strides.index(8)]) / 64.0


def panoptic_fpn_config(box_cfg):
    """A Panoptic FPN config with the backbone, input, solver, data and seed of ``box_cfg``."""
    layout = class_layout_from_config(box_cfg)
    cfg = get_cfg()
    cfg.merge_from_file(
        model_zoo.get_config_file("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml")
    )
    m, b = cfg.MODEL, box_cfg.MODEL
    m.WEIGHTS = b.WEIGHTS
    m.DEVICE = b.DEVICE
    m.PIXEL_MEAN, m.PIXEL_STD = list(b.PIXEL_MEAN), list(b.PIXEL_STD)
    m.BACKBONE.FREEZE_AT = b.BACKBONE.FREEZE_AT
    for key in ("DEPTH", "RES2_OUT_CHANNELS", "NORM", "STRIDE_IN_1X1"):
        setattr(m.RESNETS, key, getattr(b.RESNETS, key))
    m.FPN.OUT_CHANNELS, m.FPN.NORM = b.FPN.OUT_CHANNELS, b.FPN.NORM
    m.ROI_BOX_HEAD.NAME, m.ROI_BOX_HEAD.NUM_CONV, m.ROI_BOX_HEAD.NUM_FC = "FastRCNNConvFCHead", 4, 1
    m.ROI_BOX_HEAD.NORM = m.ROI_MASK_HEAD.NORM = m.SEM_SEG_HEAD.NORM = "GN"
    m.ROI_HEADS.NUM_CLASSES = layout.num_thing_classes
    m.SEM_SEG_HEAD.NUM_CLASSES = layout.num_classes - layout.num_thing_classes + 1
    scale = object_scale(b.BOX_PANOPTIC)
    m.ANCHOR_GENERATOR.SIZES = [[s * scale] for s in (32, 64, 128, 256, 512)]
    m.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = b.BOX_PANOPTIC.STUFF_AREA_MIN
    cfg.INPUT = box_cfg.INPUT.clone()
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.SOLVER = box_cfg.SOLVER.clone()
    cfg.DATASETS = box_cfg.DATASETS.clone()
    cfg.DATALOADER = box_cfg.DATALOADER.clone()
    cfg.TEST.EVAL_PERIOD = box_cfg.TEST.EVAL_PERIOD
    cfg.SEED, cfg.OUTPUT_DIR = box_cfg.SEED, box_cfg.OUTPUT_DIR
    cfg.BOX_PANOPTIC_LAYOUT_SOURCE = box_cfg.clone()  # the layout and mapper settings
    return cfg


def _stuff_to_separated(layout: ClassLayout) -> torch.Tensor:
    """(C + 1,) model class -> Panoptic FPN semantic label (things 0, stuff 1..S); 255 -> 255."""
    table = torch.full((256,), 255, dtype=torch.long)
    for c in layout.thing_ids:
        table[c] = 0
    for rank, c in enumerate(layout.stuff_ids):
        table[c] = rank + 1
    return table


class PanopticFPNOnLayout(nn.Module):
    """A Panoptic FPN whose inputs and outputs follow a :class:`ClassLayout`: training
    ``sem_seg`` in model classes, outputs in the dataset's contiguous ids."""

    def __init__(self, model: nn.Module, layout: ClassLayout):
        super().__init__()
        self.model = model
        self.register_buffer("sem_table", _stuff_to_separated(layout), persistent=False)
        self.thing_out = [layout.output_ids[c] for c in layout.thing_ids]
        self.stuff_out = [None] + [layout.output_ids[c] for c in layout.stuff_ids]

    @property
    def device(self):
        return self.model.device

    def to_layout(self, segments: List[Dict]) -> List[Dict]:
        """Panoptic FPN's segments_info (thing classes; stuff 1..S) in the dataset's contiguous
        ids, in place."""
        for s in segments:
            s["category_id"] = (self.thing_out if s["isthing"] else self.stuff_out)[
                s["category_id"]
            ]
        return segments

    def panoptic_at(self, output: Dict, confidence: float):
        """detectron2's combination of one image's inner outputs ("sem_seg", "instances") with
        instance confidence threshold ``confidence``, in the dataset's contiguous ids."""
        inner = self.model
        pan, segments = combine_semantic_and_instance_outputs(
            output["instances"],
            output["sem_seg"].argmax(dim=0),
            inner.combine_overlap_thresh,
            inner.combine_stuff_area_thresh,
            confidence,
        )
        return pan, self.to_layout(segments)

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            inputs = [
                dict(x, sem_seg=self.sem_table.to(x["sem_seg"].device)[x["sem_seg"]])
                for x in batched_inputs
            ]
            return self.model(inputs)
        outputs = self.model(batched_inputs)
        for out in outputs:
            self.to_layout(out["panoptic_seg"][1])
            inst = out["instances"]
            inst.pred_classes = inst.pred_classes.new_tensor(self.thing_out)[inst.pred_classes]
            del out["sem_seg"]  # Panoptic FPN's own layout; not scored
        return outputs


class PanopticFPNTrainer(Trainer):
    """box_panoptic's Trainer (data stream, checkpoints, evaluators) around Panoptic FPN; the
    cfg is :func:`panoptic_fpn_config`'s."""

    @classmethod
    def build_model(cls, cfg):
        layout = class_layout_from_config(cfg.BOX_PANOPTIC_LAYOUT_SOURCE)
        return PanopticFPNOnLayout(build_model(cfg), layout).to(cfg.MODEL.DEVICE)

    @classmethod
    def build_train_mapper(cls, cfg):
        return BoxPanopticDatasetMapper(cfg.BOX_PANOPTIC_LAYOUT_SOURCE, True)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return super().build_test_loader(cfg.BOX_PANOPTIC_LAYOUT_SOURCE, dataset_name)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's test, with the instance confidence threshold chosen on BoxPanoptic's
        calibration images when BoxPanoptic's config calibrates its own thresholds (the
        model's own threshold is given back afterwards)."""
        calibrator = calibrator_from_config(cfg.BOX_PANOPTIC_LAYOUT_SOURCE)
        if calibrator is None:
            return super().test(cfg, model, evaluators)
        inner = getattr(model, "module", model).model
        own = inner.combine_instances_score_thresh
        try:
            result = calibrate_instance_confidence(model, calibrator)
            logger.info(result.describe())
            return super().test(cfg, model, evaluators)
        finally:
            inner.combine_instances_score_thresh = own

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return DatasetEvaluators(
            [
                PanopticEvaluatorWithTables(dataset_name, folder),
                PanopticInstanceEvaluator(dataset_name, folder),
            ]
        )


@dataclasses.dataclass(frozen=True)
class PeerCalibration:
    """The peer's instance confidence threshold chosen on ``num_images`` of ``dataset``: PQ
    there per threshold tried (``pq``), the one chosen and the one it had before."""

    dataset: str
    num_images: int
    confidence: float
    before: float
    pq: Dict[float, float]

    def describe(self) -> str:
        return (
            f"Panoptic FPN instance confidence calibrated on {self.num_images} images of "
            f"{self.dataset}: {self.confidence:g} (PQ {self.pq[self.confidence]:.2f} there; "
            f"{self.before:g} gave {self.pq[self.before]:.2f})"
        )


def calibrate_instance_confidence(
    model: PanopticFPNOnLayout,
    calibrator: ThresholdCalibrator,
    confidences: Sequence[float] = PEER_CONFIDENCES,
) -> PeerCalibration:
    """Set the threshold of ``confidences`` (and the model's own, which wins ties) that gives
    the highest PQ on the calibrator's images: the peer's counterpart of BoxPanoptic's sigma and
    score threshold calibration, on the same images read by the same mapper."""
    net = getattr(model, "module", model)
    inner = net.model
    records = calibration_records(calibrator.dataset, calibrator.max_images)
    meta = MetadataCatalog.get(calibrator.dataset)
    before = float(inner.combine_instances_score_thresh)
    was_training = net.training
    net.eval()
    outputs = {}  # the network once per image; each threshold re-runs the combination only
    try:
        with torch.no_grad():
            for r in records:
                outputs[r["image_id"]] = inner([calibrator.mapper(r)])[0]
    finally:
        net.train(was_training)
    truth, pq = ground_truth(records, meta), {}
    for c in [before] + sorted(set(map(float, confidences)) - {before}):
        panoptic = {i: net.panoptic_at(out, c) for i, out in outputs.items()}
        pq[c] = panoptic_quality(panoptic, meta, truth)["PQ"]
    best = max(pq, key=lambda c: (pq[c], c == before))  # ties: the model's own
    inner.combine_instances_score_thresh = best
    return PeerCalibration(calibrator.dataset, len(records), best, before, pq)
