# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""LazyConfig: the python configs build the yacs configs' models, and train and resume exactly
with no yacs config anywhere."""

import os
import subprocess
import sys
from unittest import mock

import pytest
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model

from box_panoptic.engine.lazy import lazy_train

from .helpers import CONFIGS, ROOT, get_cfg_from, get_model

LAZY_SYNTHETIC = os.path.join(CONFIGS, "Synthetic", "box_panoptic_R_18_synthetic.py")


def _no_yacs():
    """Building a yacs config during the block fails the test."""

    def refuse(*a, **k):
        raise AssertionError("a yacs config was built")

    return mock.patch.multiple(
        "detectron2.config", get_cfg=mock.DEFAULT, CfgNode=mock.DEFAULT, new_callable=lambda: refuse
    )


def test_lazy_synthetic_model_equals_the_yacs_one(synthetic_root):
    cfg = LazyConfig.load(LAZY_SYNTHETIC)
    torch.manual_seed(0)
    with _no_yacs():
        lazy = instantiate(cfg.model).eval()
    ref = get_model().eval()
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in lazy.state_dict().items()} == shapes
    ref.load_state_dict(lazy.state_dict())
    x = [{"image": torch.randint(0, 255, (3, 128, 192), dtype=torch.uint8)}]
    with torch.no_grad():
        a, b = lazy(x)[0], ref(x)[0]
    assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0])
    assert a["panoptic_seg"][1] == b["panoptic_seg"][1]
    assert lazy.criterion.assignment == ref.criterion.assignment
    for key in (
        "mask_thresh",
        "det_score_thresh",
        "stuff_area_min",
        "output_category_ids",
        "detection_class",
        "assembly",
    ):
        assert getattr(lazy.postprocessor, key) == getattr(ref.postprocessor, key), key
    for key in (
        "dense_box_loss",
        "dense_box_source",
        "thing_semantics",
        "positives_normalizer",
        "sem_instance_loss",
        "weights",
    ):
        assert getattr(lazy.criterion, key) == getattr(ref.criterion, key), key
    assert lazy.criterion.positives_normalizer == "ema"
    assert lazy.criterion.weights["loss_cls_ce"] == 0.25
    assert lazy.criterion.sem_instance_loss and lazy.criterion.weights["loss_sem_instance"] == 0.25
    assert lazy.state_dict().keys() == ref.state_dict().keys()  # the average's buffer in both
    assert lazy.postprocessor.dense_box_source == ref.postprocessor.dense_box_source == "finest"
    assert lazy.postprocessor.thing_semantics == ref.postprocessor.thing_semantics == "relative"
    assert lazy.postprocessor.detection_class == "box_and_semantic"
    assert lazy.postprocessor.assembly == "assemble_argmax_keep_by_score"
    # the LazyConfig sets the source twice; the two set apart would train one map and read another
    cfg.model.postprocessor.dense_box_source = "levelness"
    with _no_yacs(), pytest.raises(ValueError, match="dense_box_source 'finest' but"):
        instantiate(cfg.model)


def _tiny(out_dir, max_iter):
    cfg = LazyConfig.load(LAZY_SYNTHETIC)
    return LazyConfig.apply_overrides(
        cfg,
        [
            f"train.output_dir={out_dir}",
            f"train.max_iter={max_iter}",
            "train.checkpointer.period=3",
            "dataloader.train.total_batch_size=2",
            "dataloader.train.num_workers=2",
            f"dataloader.train.skip_log={out_dir}/skipped.jsonl",
            "dataloader.evaluator=null",
        ],
    )


@pytest.mark.parametrize("resume_at", [3])
def test_lazy_training_resumes_exactly_without_yacs(synthetic_root, tmp_path, resume_at):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    with _no_yacs():
        torch.manual_seed(1)
        lazy_train(_tiny(straight, 6))
        torch.manual_seed(1)  # the same init as the straight run
        lazy_train(_tiny(resumed, resume_at))
        assert (resumed / "last_checkpoint").read_text() == "model_final.pth"
        torch.manual_seed(3)  # another init: the checkpoint must restore everything
        lazy_train(_tiny(resumed, 6), resume=True)
    a = torch.load(straight / "model_final.pth", map_location="cpu", weights_only=False)
    b = torch.load(resumed / "model_final.pth", map_location="cpu", weights_only=False)
    assert a["iteration"] == b["iteration"] == 5
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    # one copy of the optimizer (inside the trainer's state), the stream seed beside it
    assert "optimizer" not in b and "momentum_buffer" in str(b["trainer"]["optimizer"])
    assert b["data_stream"] == {"seed": 7}
    assert b["trainer"]["hooks"]["LRScheduler"]  # the LR schedule resumed, not restarted


@pytest.mark.parametrize(
    "lazy, yacs",
    [
        (
            "Cityscapes-PanopticSegmentation/box_panoptic_R_50_FPN.py",
            "Cityscapes-PanopticSegmentation/box_panoptic_R_50_FPN.yaml",
        ),
        (
            "COCO-PanopticSegmentation/box_panoptic_R_50_FPN_1x.py",
            "COCO-PanopticSegmentation/box_panoptic_R_50_FPN_1x.yaml",
        ),
    ],
)
def test_lazy_released_configs_build_the_yaml_models(lazy, yacs):
    """Same parameters (the released checkpoint's layout), settings and schedule."""
    cfg = LazyConfig.load(os.path.join(CONFIGS, lazy))
    model = instantiate(cfg.model)
    ycfg = get_cfg_from(os.path.join(CONFIGS, yacs))
    ref = build_model(ycfg)
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    for key, value in vars(ref.postprocessor).items():
        if not key.startswith("_"):
            assert getattr(model.postprocessor, key) == value, key
    assert model.criterion.assignment == ref.criterion.assignment
    assert [m.__class__ for m in model.modules()] == [m.__class__ for m in ref.modules()]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == [n for n, p in ref.named_parameters() if not p.requires_grad]
    assert cfg.train.max_iter == ycfg.SOLVER.MAX_ITER
    assert list(cfg.lr_multiplier.scheduler.milestones) == list(ycfg.SOLVER.STEPS)
    assert cfg.optimizer.lr == ycfg.SOLVER.BASE_LR


def test_lazy_training_with_two_processes_on_cpu(synthetic_root, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train_net.py"),
        "--config-file",
        LAZY_SYNTHETIC,
        "--num-gpus",
        "2",
        f"train.output_dir={out}",
        "train.max_iter=3",
        "dataloader.train.total_batch_size=2",
        "dataloader.evaluator=null",
        f"dataloader.train.skip_log={out}/skipped.jsonl",
    ]
    env = dict(os.environ, DETECTRON2_DATASETS=str(synthetic_root))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])  # DDP wrapper stripped
