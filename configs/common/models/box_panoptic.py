# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""BoxPanoptic as a LazyConfig: the released R-50 FPN layout (METHOD.md section 2), built from
explicit modules. Class counts are placeholders: a dataset config sets them with
``box_panoptic.lazy_config.set_class_layout(model, dataset_name)``."""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelP6P7

from box_panoptic.modeling import (
    BoxPanoptic,
    BoxPanopticCriterion,
    BoxPanopticPostProcessor,
    LocationAssignment,
)
from box_panoptic.modeling.head import BoxPanopticHead, BoxPanopticSemanticHead, LevelnessHead

STRIDES = [8, 16, 32, 64, 128]  # P3..P7

model = L(BoxPanoptic)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
            out_features=["res3", "res4", "res5"],
            freeze_at=2,
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        top_block=L(LastLevelP6P7)(in_channels=256, out_channels=256, in_feature="p5"),
    ),
    head=L(BoxPanopticHead)(
        input_shape=[L(ShapeSpec)(channels=256, stride=s) for s in STRIDES],
        num_thing_classes=1,  # set_class_layout
        cls_channels=128,
        bbox_channels=256,
    ),
    sem_seg_head=L(BoxPanopticSemanticHead)(in_channels=128, num_levels=5, num_classes=2),
    levelness_head=L(LevelnessHead)(in_channels=256, num_levels=5),
    postprocessor=L(BoxPanopticPostProcessor)(strides=STRIDES, thing_semantic_ids=[0]),
    criterion=L(BoxPanopticCriterion)(
        strides=STRIDES,
        thing_semantic_ids=[0],
        assignment=L(LocationAssignment.from_settings)(
            sizes_of_interest=[64, 128, 256, 512], num_levels=5
        ),
    ),
    in_features=["p3", "p4", "p5", "p6", "p7"],
    pixel_mean=[102.9801, 115.9465, 122.7717],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
    size_divisibility=32,
)
