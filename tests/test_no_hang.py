# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""No run ever hangs: any exception in training, evaluation or a hook ends the process with a
non-zero status naming its cause, with 0, 2 and 4 loader workers and with 2 processes; SIGINT
saves a checkpoint and stops; a killed trainer leaves no loader worker behind.

Every run is bounded by a timeout far above its normal duration (a hang fails the test, and its
process group is killed); the events are deterministic (a broken file, an exception raised on
purpose, a signal sent once a log line says training has started).
"""

import os
import shutil
import signal
import sys
import time

import pytest

from box_panoptic.data.synthetic import dataset_paths

from .helpers import ROOT, SYNTHETIC_CONFIG
from .processes import alive, run_logged, still_alive_after, wait_for_output
from .test_user_data import TINY, user_args

DRIVER = os.path.join(ROOT, "tests", "train_driver.py")
BOUND_S = 180  # a run that has not ended by then is hung


def _run_bounded(cmd, log_path, timeout=BOUND_S):
    """Run ``cmd`` with its output to ``log_path``; a run still going at ``timeout`` fails the
    test (its process group killed). Returns (exit code, output)."""
    (done,) = run_logged([cmd], [log_path], timeout=timeout)
    return done.returncode, done.log


@pytest.fixture
def broken_root(user_root, tmp_path):
    """A copy of the user's dataset whose first training image is a zero-byte file."""
    root = str(tmp_path / "data")
    shutil.copytree(
        os.path.join(user_root, "synthetic_panoptic"), os.path.join(root, "synthetic_panoptic")
    )
    image_root = dataset_paths(root, "train")["image_root"]
    broken = os.path.join(image_root, sorted(os.listdir(image_root))[0])
    open(broken, "w").close()
    return root, broken


def _train_cmd(root, out, opts=(), flags=(), driver_args=()):
    """train_net.py (through tests/train_driver.py) on the user's dataset, 20 iterations and 2
    loader workers unless ``opts`` say otherwise."""
    cmd = [sys.executable, DRIVER, *driver_args, "--", "--config-file", SYNTHETIC_CONFIG]
    cmd += user_args(root, "train") + user_args(root, "val") + list(flags)
    cmd += TINY + ["DATASETS.TRAIN", '("user_train",)', "DATASETS.TEST", '("user_val",)']
    return cmd + ["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "20", *opts]


@pytest.mark.parametrize("workers", [0, 2, 4])
def test_bad_sample_under_raise_policy_exits_naming_the_file(broken_root, tmp_path, workers):
    root, broken = broken_root
    cmd = _train_cmd(root, tmp_path / "o", opts=("DATALOADER.NUM_WORKERS", str(workers)))
    rc, log = _run_bounded(cmd, tmp_path / "log.txt")
    assert rc != 0
    assert broken in log and "cannot be read" in log


def test_bad_sample_with_two_processes_exits(broken_root, tmp_path):
    root, broken = broken_root
    cmd = _train_cmd(root, tmp_path / "o", flags=("--num-gpus", "2"))
    rc, log = _run_bounded(cmd, tmp_path / "log.txt")
    assert rc != 0
    assert broken in log


@pytest.mark.parametrize("where", ["hook", "evaluator"])
def test_exception_in_hook_or_evaluator_exits(user_root, tmp_path, where):
    cmd = _train_cmd(
        user_root, tmp_path / "o", ("SOLVER.MAX_ITER", "4"), driver_args=("--fail", where)
    )
    rc, log = _run_bounded(cmd, tmp_path / "log.txt")
    assert rc != 0
    assert f"{'a hook' if where == 'hook' else 'an evaluator'} failed on purpose" in log


def _long_training(user_root, tmp_path, on_start):
    """A long training run with 2 loader workers; ``on_start(proc)`` runs once its log says the
    data stream started, and the run must then end within BOUND_S. Returns its ``Finished``."""
    cmd = _train_cmd(user_root, tmp_path / "o", ("SOLVER.MAX_ITER", "100000"))
    log_path = tmp_path / "log.txt"

    def during(procs):
        wait_for_output(procs[0], log_path, "Training data stream", timeout=BOUND_S)
        on_start(procs[0])

    (done,) = run_logged([cmd], [log_path], timeout=BOUND_S, during=during)
    return done


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_trainer_leaves_no_worker(user_root, tmp_path):
    workers = []

    def kill_the_trainer(proc):
        deadline = time.monotonic() + 60
        while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers.extend(_children(proc.pid))
        assert len(workers) >= 2 and all(alive(w) for w in workers)
        proc.kill()  # the trainer alone, not its process group

    done = _long_training(user_root, tmp_path, kill_the_trainer)
    assert done.returncode == -signal.SIGKILL
    assert not still_alive_after(workers, timeout=30), "a loader worker outlived its trainer"


def test_sigint_saves_a_checkpoint_and_exits(user_root, tmp_path):
    done = _long_training(user_root, tmp_path, lambda proc: proc.send_signal(signal.SIGINT))
    assert done.returncode == 128 + signal.SIGINT, done.log[-3000:]
    tag = (tmp_path / "o" / "last_checkpoint").read_text()
    assert tag.startswith("model_0") and (tmp_path / "o" / tag).is_file()
    assert "SIGINT: stopped after iteration" in done.log
