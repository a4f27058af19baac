# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Model components; importing this module registers them in detectron2's registries."""

from .assembly import PANOPTIC_ASSEMBLY_REGISTRY, assemble_panoptic  # noqa: F401
from .backbone import build_box_panoptic_resnet_fpn_backbone  # noqa: F401
from .head import (  # noqa: F401
    BOX_PANOPTIC_HEADS_REGISTRY,
    LEVELNESS_HEAD_REGISTRY,
    BoxPanopticHead,
    BoxPanopticSemanticHead,
    LevelnessHead,
)
from .losses import BoxPanopticCriterion  # noqa: F401
from .meta_arch import BoxPanoptic  # noqa: F401
from .postprocess import BoxPanopticPostProcessor, DecodedImage, ImagePanoptic  # noqa: F401
from .targets import LocationAssignment  # noqa: F401
