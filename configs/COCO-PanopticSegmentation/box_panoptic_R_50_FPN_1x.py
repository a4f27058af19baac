# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""LazyConfig twin of box_panoptic_R_50_FPN_1x.yaml: COCO panoptic, 90k iterations at batch 16."""

from box_panoptic.lazy_config import set_class_layout

from ..common.data.panoptic import dataloader
from ..common.models.box_panoptic import model
from ..common.schedules.box_panoptic import optimizer, step_schedule, train_settings  # noqa: F401

OUTPUT = "output/coco"

set_class_layout(model, "coco_2017_train_panoptic")
model.postprocessor.stuff_area_min = 4096
dataloader.evaluator.output_dir = f"{OUTPUT}/inference"  # the data defaults are COCO's

lr_multiplier = step_schedule(90000, (60000, 80000))
train = train_settings(OUTPUT, 90000)
