# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Datasets (synthetic generator, registration, builtin fixes) and the dataset mapper."""

from .datasets import (  # noqa: F401
    PanopticDatasetError,
    check_panoptic_png,
    fix_builtin_panoptic_datasets,
    register_synthetic_panoptic,
)
from .mapper import BoxPanopticDatasetMapper  # noqa: F401
from .synthetic import SyntheticSpec, generate_synthetic_panoptic  # noqa: F401
