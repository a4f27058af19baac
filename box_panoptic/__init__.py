# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""box_panoptic: "Real-Time Panoptic Segmentation from Dense Detections" (Hou et al., CVPR 2020)
as a detectron2 extension.

Importing the package applies the compatibility shims (:mod:`box_panoptic.compat`), registers the
model components in detectron2's registries and the synthetic datasets in its catalogs, and fixes
detectron2 0.6's builtin panoptic dataset loaders.
"""

from . import compat

compat.apply_all()  # before any detectron2 module that needs the shims is imported

from . import modeling  # noqa: E402,F401  (registration)
from .config import add_box_panoptic_config  # noqa: E402
from .data import (  # noqa: E402
    fix_builtin_panoptic_datasets,
    register_synthetic_panoptic,
)
from .modeling import BoxPanoptic  # noqa: E402

register_synthetic_panoptic()
fix_builtin_panoptic_datasets()

__all__ = ["BoxPanoptic", "add_box_panoptic_config", "register_synthetic_panoptic"]
__version__ = "0.1.0"
