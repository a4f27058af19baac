# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Small CPU models built from the project's configs, for tests."""

import os

import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from box_panoptic import add_box_panoptic_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
SYNTHETIC_CONFIG = os.path.join(CONFIGS, "Synthetic", "box_panoptic_R_18_synthetic.yaml")
CITYSCAPES_CONFIG = os.path.join(
    CONFIGS, "Cityscapes-PanopticSegmentation", "box_panoptic_R_50_FPN.yaml"
)


# mapper settings that make the training transforms the identity on the 128x192 fixtures
IDENTITY_TRAIN_TRANSFORM = (
    "INPUT.RANDOM_FLIP",
    "none",
    "INPUT.MIN_SIZE_TRAIN",
    (128,),
    "INPUT.MAX_SIZE_TRAIN",
    192,
)


def get_cfg_from(path, *opts, datasets=False):
    cfg = get_cfg()
    add_box_panoptic_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    if not datasets:
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (), ()
    cfg.merge_from_list(list(opts))
    return cfg


def get_model(path=SYNTHETIC_CONFIG, *opts, seed=0):
    torch.manual_seed(seed)
    return build_model(get_cfg_from(path, *opts))
