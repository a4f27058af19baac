# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Small CPU models built from the project's configs, for tests."""

import importlib.util
import os
import socket
import sys

import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from box_panoptic import add_box_panoptic_config
from box_panoptic.data.class_layout import class_layout_from_config
from box_panoptic.modeling.assembly import (
    assemble_argmax,
    assemble_argmax_keep_by_score,
    assemble_paste,
)

# every registered panoptic assembly rule, for the tests that must hold for each
ASSEMBLY_RULES = [assemble_argmax, assemble_paste, assemble_argmax_keep_by_score]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
SYNTHETIC_CONFIG = os.path.join(CONFIGS, "Synthetic", "box_panoptic_R_18_synthetic.yaml")
CITYSCAPES_CONFIG = os.path.join(
    CONFIGS, "Cityscapes-PanopticSegmentation", "box_panoptic_R_50_FPN.yaml"
)


def free_port() -> int:
    """A TCP port free on localhost now (for a rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_tool(name: str):
    """The module ``tools/<name>.py`` (tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


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
    if not datasets:  # the class layout the datasets' metadata gives, then no datasets
        layout = class_layout_from_config(cfg)
        bp = cfg.MODEL.BOX_PANOPTIC
        bp.NUM_CLASSES, bp.NUM_THING_CLASSES = layout.num_classes, layout.num_thing_classes
        bp.INSTANCE_ID_RANGE = [layout.thing_ids[0], layout.thing_ids[-1]]
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (), ()
    cfg.merge_from_list(list(opts))
    return cfg


def get_model(path=SYNTHETIC_CONFIG, *opts, seed=0):
    torch.manual_seed(seed)
    return build_model(get_cfg_from(path, *opts))


def train_net_command(args, root, out_dir):
    """(argv, env) of train_net.py on the synthetic fixture at ``root``, at a tiny size (96 px,
    batch 2, no test set), writing to ``out_dir``."""
    tiny = [
        "INPUT.MIN_SIZE_TRAIN",
        "(96,)",
        "INPUT.MAX_SIZE_TRAIN",
        "160",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "DATASETS.TEST",
        "()",
        "OUTPUT_DIR",
        str(out_dir),
    ]
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train_net.py"),
        "--config-file",
        SYNTHETIC_CONFIG,
        *args,
        *tiny,
    ]
    return cmd, dict(os.environ, DETECTRON2_DATASETS=str(root))


def synthetic_batch(root, n: int):
    """The first ``n`` synthetic training records, mapped for training at their own size (no
    resize, no flip): a fixed batch. ``root``: the synthetic fixture (the ``synthetic_root``
    fixture, which registers it)."""
    from detectron2.data import DatasetCatalog

    from box_panoptic.data import BoxPanopticDatasetMapper

    mapper = BoxPanopticDatasetMapper(
        get_cfg_from(SYNTHETIC_CONFIG, *IDENTITY_TRAIN_TRANSFORM), True
    )
    return [mapper(r) for r in DatasetCatalog.get("synthetic_panoptic_train")[:n]]


def sgd_with_warmup(model, lr: float = 0.005, warmup_steps: int = 5):
    """SGD (momentum 0.9) and a linear warm-up over ``warmup_steps`` steps, as every config's
    schedule has (from scratch, the P2 level's first steps at the full LR overshoot). Call the
    scheduler's ``step()`` after each optimizer step.

    LR 0.005 for the tests that fit one fixed batch: at 0.01 with a 5-step warm-up their
    loss_sem_seg spikes (to 2-6x its value a few steps before) for two of the three
    LEVEL_ASSIGNMENTs, and which two changes with the warm-up's length; at 0.005 the three end at
    0.39-0.79 of their start in test_training_reduces_loss (the synthetic config's instance_area
    at 0.39-0.42 on 1 and 2 threads, and 0.37 in test_weak_training_reduces_loss)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    warmup = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / warmup_steps)
    )
    return opt, warmup
