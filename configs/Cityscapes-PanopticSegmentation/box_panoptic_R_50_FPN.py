# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""LazyConfig twin of box_panoptic_R_50_FPN.yaml: the released Cityscapes model and recipe
(65k iterations at batch 16, multi-scale training with 512x1024 crops that keep things)."""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from box_panoptic.data.augmentation import ThingAwareCrop
from box_panoptic.lazy_config import set_class_layout

from ..common.data.panoptic import dataloader
from ..common.models.box_panoptic import model
from ..common.schedules.box_panoptic import optimizer, step_schedule, train_settings  # noqa: F401

TRAIN, TEST = "cityscapes_fine_panoptic_train", "cityscapes_fine_panoptic_val"
OUTPUT = "output/cityscapes"

set_class_layout(model, TRAIN)
model.postprocessor.pre_nms_thresh = 0.06
model.postprocessor.mask_thresh = 0.4
model.postprocessor.stuff_area_min = 2048

dataloader.train.dataset.names = [TRAIN]
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(
        short_edge_length=list(range(512, 2049, 128)), max_size=4096, sample_style="choice"
    ),
    L(ThingAwareCrop)(crop_type="absolute", crop_size=(512, 1024)),
    L(T.RandomFlip)(horizontal=True, vertical=False),
]
dataloader.test.dataset.names = [TEST]
dataloader.test.mapper.augmentations[0].short_edge_length = 1024
dataloader.test.mapper.augmentations[0].max_size = 2048
dataloader.evaluator.output_dir = f"{OUTPUT}/inference"

lr_multiplier = step_schedule(65000, (48750, 58500))
train = train_settings(OUTPUT, 65000)
