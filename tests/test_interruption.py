# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Interrupted training: a run killed (SIGKILL) or stopped (SIGTERM) at a random point and
restarted with --resume ends with exactly the weights of an uninterrupted run; the data stream
replays the same samples and augmentations from any iteration, with any number of workers."""

import json
import os
import random
import shutil
import signal
import time

import numpy as np
import torch

from detectron2.data import DatasetCatalog

from box_panoptic.data.resumable import ResumableTrainStream, count_skipped
from box_panoptic.engine import PREEMPTED_EXIT_CODE

from .helpers import train_net_command
from .processes import run_logged

# no evaluation, a fixed seed, two loader workers
SEEDED_TWO_WORKERS = ["TEST.EVAL_PERIOD", "0", "SEED", "3", "DATALOADER.NUM_WORKERS", "2"]


def _probe(record):
    """A mapper whose output shows the sample and the RNG state it was mapped with."""
    return {"file": record["file_name"], "draw": float(np.random.rand())}


def _take(stream, workers, n):
    out = []
    for batch in stream.loader(workers):
        out.append(batch)
        if len(out) == n:
            return out


def test_stream_replays_the_same_batches_from_any_iteration_and_worker_count(synthetic_root):
    records = DatasetCatalog.get("synthetic_panoptic_train")
    full = _take(ResumableTrainStream(records, _probe, 3, seed=7), 0, 9)
    assert _take(ResumableTrainStream(records, _probe, 3, seed=7), 2, 9) == full
    assert _take(ResumableTrainStream(records, _probe, 3, seed=7, start_iter=5), 2, 4) == full[5:]
    # 9 batches of 3 over 12 records: every record once per epoch, epochs reshuffled
    files = [x["file"] for b in full for x in b]
    assert sorted(files[:12]) == sorted(r["file_name"] for r in records)
    assert files[:12] != files[12:24]
    other = _take(ResumableTrainStream(records, _probe, 3, seed=8), 0, 9)
    assert other != full  # the seed matters


def _run(args, root, out_dir, kill=None, rng=None):
    """train_net.py; with ``kill``, send that signal at a random moment after the first
    checkpoint and before the end. Returns the exit code and the run's output (a log of this
    run alone: the resume's must not hold the interrupted run's lines)."""
    cmd, env = train_net_command(args, root, out_dir)
    log_path = f"{out_dir}{'.resumed' if '--resume' in args else ''}.log"

    def interrupt(procs):
        _interrupt(procs[0], os.path.join(out_dir, "last_checkpoint"), kill, rng, log_path)

    (done,) = run_logged(
        [cmd], [log_path], env=env, timeout=600, during=interrupt if kill is not None else None
    )
    return done.returncode, done.log


def _interrupt(proc, tag, sig, rng, log_path):
    """Send ``sig`` to ``proc`` at a random moment after its first checkpoint (the file ``tag``)."""
    start = time.time()
    while not os.path.exists(tag) and proc.poll() is None and time.time() < start + 300:
        time.sleep(0.05)
    assert os.path.exists(tag), (
        f"no checkpoint after {time.time() - start:.0f} s (exit code {proc.poll()}); "
        f"the run's output: {log_path}"
    )
    time.sleep(rng.uniform(0.0, 1.0))
    assert proc.poll() is None, "the run ended before it could be interrupted"
    assert open(tag).read().strip() != "model_final.pth"
    proc.send_signal(sig)


def _weights(out_dir):
    ckpt = torch.load(os.path.join(out_dir, "model_final.pth"), map_location="cpu")
    return ckpt["model"], ckpt["iteration"]


def test_killed_and_stopped_runs_resume_to_the_uninterrupted_weights(synthetic_root, tmp_path):
    common = SEEDED_TWO_WORKERS + [
        "SOLVER.MAX_ITER",
        "14",
        "SOLVER.CHECKPOINT_PERIOD",
        "4",
        "SOLVER.WARMUP_ITERS",
        "2",
        "INPUT.RANDOM_FLIP",
        "horizontal",
    ]
    rng = random.Random(0)
    code, err = _run(common, synthetic_root, tmp_path / "reference")
    assert code == 0, err[-3000:]
    reference, last = _weights(tmp_path / "reference")
    assert last == 13
    for sig, name in ((signal.SIGKILL, "killed"), (signal.SIGTERM, "stopped")):
        out = tmp_path / name
        code, err = _run(common, synthetic_root, out, kill=sig, rng=rng)
        if sig == signal.SIGTERM:
            assert code == PREEMPTED_EXIT_CODE, err[-3000:]
            assert "SIGTERM: stopped after iteration" in err
            stopped = open(out / "last_checkpoint").read().strip()
            assert stopped.startswith("model_0") and stopped != "model_0000003.pth"  # saved now
        else:
            assert code == -signal.SIGKILL
        code, err = _run(["--resume"] + common, synthetic_root, out)
        assert code == 0, err[-3000:]
        assert "Starting training from iteration" in err
        weights, last = _weights(out)
        assert last == 13
        for key, value in reference.items():
            assert torch.equal(weights[key], value), f"{name}: {key} differs"


def test_skipped_samples_are_counted_over_all_workers(synthetic_root, tmp_path):
    """Two unreadable images in a copy of the dataset, two loader workers: one total."""
    root = tmp_path / "datasets"
    shutil.copytree(synthetic_root, root)
    records = DatasetCatalog.get("synthetic_panoptic_train")
    bad = {records[1]["file_name"], records[6]["file_name"]}
    for f in bad:
        open(os.path.join(root, os.path.relpath(f, synthetic_root)), "wb").close()  # zero bytes
    args = SEEDED_TWO_WORKERS + ["SOLVER.MAX_ITER", "8", "INPUT.BAD_SAMPLE_POLICY", "skip"]
    code, err = _run(args, root, tmp_path / "out")
    assert code == 0, err[-3000:]
    log = tmp_path / "out" / "skipped_samples.jsonl"
    total = count_skipped(str(log))
    assert f"bad samples skipped in this training: {total} in total" in err
    # every position of the first 8 batches that drew a bad record was skipped and logged
    stream = ResumableTrainStream(records, _probe, 2, seed=3)
    expected = set()
    for k, batch in zip(range(8), stream.batches()):
        expected |= {p for p, i in batch if records[i]["file_name"] in bad}
    logged = {json.loads(line)["position"] for line in open(log)}
    assert expected and expected <= logged and total == len(logged)
