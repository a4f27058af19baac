# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Evaluation helpers."""

from .sem_seg import PanopticSemSegEvaluator  # noqa: F401
