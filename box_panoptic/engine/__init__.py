# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Process launching, the trainer and its hooks, config setup."""

from ..checkpoint import SafeCheckpointer  # noqa: F401
from .launch import launch  # noqa: F401
from .preemption import PREEMPTED_EXIT_CODE, PreemptionCheckpoint  # noqa: F401
from .trainer import (  # noqa: F401
    Trainer,
    build_eval_model,
    report_skipped_samples,
    setup,
    setup_for_tool,
    skip_log_path,
)
