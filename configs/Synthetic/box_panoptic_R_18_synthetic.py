# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""LazyConfig twin of box_panoptic_R_18_synthetic.yaml: the same model, data, schedule and seed,
built from explicit modules with no yacs config anywhere.

python train_net.py --config-file configs/Synthetic/box_panoptic_R_18_synthetic.py
python train_net.py --config-file configs/Synthetic/box_panoptic_R_18_synthetic.py --resume
python train_net.py --config-file ... train.max_iter=600 dataloader.train.total_batch_size=2
"""

import torch
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.solver import WarmupParamScheduler, get_default_optimizer_params

from box_panoptic.evaluation.calibration import ThresholdCalibrator
from box_panoptic.lazy_config import set_class_layout

from ..common.data.panoptic import dataloader
from ..common.models.box_panoptic import model

TRAIN, TEST = "synthetic_panoptic_train", "synthetic_panoptic_val"
OUTPUT = "output/synthetic_lazy"

# ---- model: R-18 GN from scratch, FPN 64 on P2-P6, the synthetic yaml's towers and recipe
STRIDES = [4, 8, 16, 32, 64]  # P2..P6
model.backbone.bottom_up.out_features = ["res2", "res3", "res4", "res5"]
model.backbone.in_features = ["res2", "res3", "res4", "res5"]
model.backbone.top_block = L(LastLevelMaxPool)()  # P6 by max pool of P5, no P7
model.head.input_shape = [L(ShapeSpec)(channels=64, stride=s) for s in STRIDES]
model.postprocessor.strides = STRIDES
model.criterion.strides = STRIDES
model.levelness_head.upsample = 1  # P2 is already on the stride-4 grid
model.in_features = ["p2", "p3", "p4", "p5", "p6"]
model.backbone.bottom_up.stem.norm = "GN"
model.backbone.bottom_up.stages.depth = 18
model.backbone.bottom_up.stages.pop("stride_in_1x1")  # basic blocks have no 1x1
model.backbone.bottom_up.stages.norm = "GN"
model.backbone.bottom_up.freeze_at = 0
model.backbone.out_channels = 64
model.head.cls_channels = 64
model.head.bbox_channels = 64
model.head.cls_gn_groups = 8
model.head.bbox_gn_groups = 8
model.head.reg_stride_units = True
model.sem_seg_head.in_channels = 64
model.levelness_head.in_channels = 64
model.criterion.assignment.sizes_of_interest = [8, 16, 32, 64]
model.criterion.assignment.level_assignment = "instance_area"  # the yaml's comment
model.criterion.assignment.range_overlap = 1.4142  # two levels per object (the yaml's comment)
model.criterion.dense_box_loss = True  # the dense box map from P2 everywhere (the yaml's comment)
model.criterion.dense_box_source = "finest"
model.criterion.positives_normalizer = "ema"  # moving average of positives (the yaml's comment)
# thing-class CE at positives, and the semantic CE averaged per thing's box (the yaml's comments)
model.criterion.loss_weights = {"loss_cls_ce": 0.25, "loss_sem_instance": 0.25}
model.criterion.sem_instance_loss = True
model.postprocessor.dense_box_source = "finest"
model.criterion.thing_semantics = "relative"  # P_sem of thing queries (the yaml's comment)
model.postprocessor.thing_semantics = "relative"
model.postprocessor.detection_class = "box_and_semantic"  # box x semantic class (the yaml's)
model.postprocessor.assembly = "assemble_argmax_keep_by_score"
model.postprocessor.stuff_area_min = 64
model.postprocessor.det_score_thresh = 0.1
model.postprocessor.mask_thresh = 0.3
model.pixel_mean = [127.5, 127.5, 127.5]
model.pixel_std = [64.0, 64.0, 64.0]
set_class_layout(model, TRAIN)

# ---- data: native 128x192 images, horizontal flips
dataloader.train.dataset.names = [TRAIN]
dataloader.train.mapper.augmentations[0].short_edge_length = [128]
dataloader.train.mapper.augmentations[0].max_size = 192
dataloader.train.total_batch_size = 4
dataloader.train.seed = 7
dataloader.train.num_workers = 0
dataloader.train.skip_log = f"{OUTPUT}/skipped_samples.jsonl"
dataloader.test.dataset.names = [TEST]
dataloader.test.mapper.augmentations[0].short_edge_length = 128
dataloader.test.mapper.augmentations[0].max_size = 192
dataloader.test.num_workers = 0
dataloader.evaluator.output_dir = f"{OUTPUT}/inference"
# the inference thresholds chosen on the training images before each evaluation (the yaml's
# MODEL.BOX_PANOPTIC.CALIBRATION)
dataloader.calibration = L(ThresholdCalibrator)(
    dataset=TRAIN, mapper="${..test.mapper}", max_images=200, num_workers=0
)

# ---- schedule: 2700 iterations, LR 0.02, x0.1 at 2200 and 2580, 50 warm-up iterations
MAX_ITER = 2700
optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[2200, 2580], num_updates=MAX_ITER
    ),
    warmup_length=50 / MAX_ITER,
    warmup_factor=0.001,
)
train = dict(
    output_dir=OUTPUT,
    init_checkpoint="",
    max_iter=MAX_ITER,
    amp=dict(enabled=False),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=250, max_to_keep=100),
    eval_period=0,  # evaluated once, after training
    log_period=20,
    device="cpu",
    seed=7,
)
