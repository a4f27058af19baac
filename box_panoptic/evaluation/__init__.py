# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Evaluation: per-class panoptic quality (panopticapi-equal), evaluators for detectron2."""

from .builder import build_panoptic_evaluator  # noqa: F401
from .cityscapes import CityscapesInstanceEvaluation, CityscapesSemSegEvaluation  # noqa: F401
from .instances import PanopticInstanceEvaluator, instances_from_panoptic  # noqa: F401
from .panoptic_evaluator import PanopticEvaluatorWithTables  # noqa: F401
from .panoptic_quality import format_class_table, pq_from_files  # noqa: F401
from .sem_seg import PanopticSemSegEvaluator  # noqa: F401
