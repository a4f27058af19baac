# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Process launching."""

from .launch import launch  # noqa: F401
