# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""ResNet + FPN on res3-res5 + P6/P7 computed from P5 (METHOD.md section 2.1); optionally from
res2 (P2) and without P7, for small images and small objects."""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone

__all__ = ["build_box_panoptic_resnet_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_box_panoptic_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet (depth, norm and stride placement from ``cfg.MODEL.RESNETS``) + FPN giving P3-P7.

    Unlike detectron2's RetinaNet builder (P6 from C5), P6 = conv3x3/s2(P5) and
    P7 = conv3x3/s2(ReLU(P6)), as torchvision's ``LastLevelP6P7`` with equal channels in the
    released model. With ``RESNETS.STRIDE_IN_1X1 = False`` the ResNet has the torchvision layout.

    Returns:
        FPN backbone with outputs p3..p7 (strides 8..128, ``FPN.OUT_CHANNELS`` channels); with
        ``FPN.IN_FEATURES`` from res2, p2 (stride 4) too; without "p7" in
        ``MODEL.BOX_PANOPTIC.IN_FEATURES``, P6 = max pool of P5 and no P7.
    """
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    head_levels = cfg.MODEL.BOX_PANOPTIC.IN_FEATURES if "BOX_PANOPTIC" in cfg.MODEL else ["p7"]
    if "p7" in head_levels:
        top_block = LastLevelP6P7(out_channels, out_channels, in_feature="p5")
    else:  # P6 only, as Panoptic FPN's (max pool of P5): no P7 conv left without gradients
        top_block = LastLevelMaxPool()
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
