# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Checkpoints cross between detectron2 versions: training started under one (0.6 or main)
resumes under the other and back. Needs a second environment with the other version:
BOX_PANOPTIC_OTHER_PYTHON=<its python> (CI builds detectron2 main beside 0.6 and sets it)."""

import os
import subprocess
import sys

import pytest
import torch

from .helpers import train_net_command

OTHER_PYTHON = os.environ.get("BOX_PANOPTIC_OTHER_PYTHON", "")

pytestmark = pytest.mark.skipif(
    not OTHER_PYTHON, reason="BOX_PANOPTIC_OTHER_PYTHON (the other detectron2's python) not set"
)

COMMON = ["SOLVER.CHECKPOINT_PERIOD", "100", "SOLVER.WARMUP_ITERS", "1", "SOLVER.BASE_LR", "0.01"]


def _version(python):
    code = "import box_panoptic, detectron2.engine.defaults as d, inspect; "
    code += "print('_trainer' in inspect.getsource(d.DefaultTrainer.state_dict))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]  # "True": main's trainer state, "False": 0.6's


def _train(python, root, out_dir, max_iter, resume):
    cmd, env = train_net_command(
        (["--resume"] if resume else []) + ["SOLVER.MAX_ITER", str(max_iter)] + COMMON,
        root,
        out_dir,
    )
    r = subprocess.run([python] + cmd[1:], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r.stdout + r.stderr


def test_training_resumes_across_detectron2_versions(synthetic_root, tmp_path):
    here, other = sys.executable, OTHER_PYTHON
    assert _version(here) != _version(other), "the two environments have the same detectron2"
    _train(here, synthetic_root, tmp_path, 2, resume=False)
    log = _train(other, synthetic_root, tmp_path, 4, resume=True)
    assert "Starting training from iteration 2" in log
    log = _train(here, synthetic_root, tmp_path, 6, resume=True)
    assert "Starting training from iteration 4" in log
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 5
    assert set(ckpt["trainer"]) == {"iteration", "hooks"}  # one layout, the optimizer once
    assert ckpt["optimizer"]["state"]  # momentum buffers
    assert ckpt["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 6
