# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Process launching and training hooks."""

from .launch import launch  # noqa: F401
from .preemption import PREEMPTED_EXIT_CODE, PreemptionCheckpoint  # noqa: F401
