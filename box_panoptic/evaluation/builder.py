# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""The evaluators of a panoptic dataset, by its metadata's ``evaluator_type`` (yacs Trainer and
LazyConfig configs alike)."""

import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluators

from .cityscapes import CityscapesInstanceEvaluation, CityscapesSemSegEvaluation
from .instances import PanopticInstanceEvaluator
from .panoptic_evaluator import PanopticEvaluatorWithTables
from .sem_seg import PanopticSemSegEvaluator

__all__ = ["build_panoptic_evaluator"]


def build_panoptic_evaluator(dataset_name: str, output_dir: str) -> DatasetEvaluators:
    """PQ (with per-class tables), semantic mIoU and instance AP of ``dataset_name``, writing
    under ``output_dir``: COCO-style datasets get box/mask AP from the panoptic annotation,
    Cityscapes ones cityscapesscripts' semantic and instance evaluation."""
    kind = MetadataCatalog.get(dataset_name).evaluator_type
    if kind == "coco_panoptic_seg":
        evaluators = [
            PanopticEvaluatorWithTables(dataset_name, output_dir),
            PanopticSemSegEvaluator(dataset_name, output_dir=output_dir),
            PanopticInstanceEvaluator(dataset_name, output_dir),
        ]
    elif kind == "cityscapes_panoptic_seg":
        evaluators = [
            PanopticEvaluatorWithTables(dataset_name, output_dir),
            CityscapesSemSegEvaluation(dataset_name),
            CityscapesInstanceEvaluation(dataset_name),
        ]
    else:
        raise NotImplementedError(
            f"no evaluator for dataset {dataset_name} of type {kind!r} (box_panoptic evaluates "
            "coco_panoptic_seg and cityscapes_panoptic_seg datasets)"
        )
    os.makedirs(output_dir, exist_ok=True)
    return DatasetEvaluators(evaluators)
