# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""The CPU launcher's teardown: once a process's work is done, no gloo thread outlives it.

A gloo thread still running at interpreter shutdown can abort the process (SIGABRT) after its
work was done, so a finished 2-process evaluation failed now and then
(``launch.release_process_groups``). Here two ranks do what a training does (detectron2's
per-machine group, a DDP step, ``comm.gather`` / ``all_gather``), release, and report the gloo
threads they still have."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from detectron2.utils import comm

from box_panoptic.engine.launch import (
    _set_local_process_group,
    gloo_threads,
    release_process_groups,
)

from .helpers import free_port

pytestmark = pytest.mark.skipif(
    not os.path.isdir(f"/proc/{os.getpid()}/task"), reason="thread names are read from /proc"
)


def _rank_worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=rank)
    _set_local_process_group(2, 2, 0)
    model = DistributedDataParallel(torch.nn.Linear(3, 2))
    model(torch.full((4, 3), float(rank))).sum().backward()
    gathered = comm.gather([rank] * 100)
    ranks = comm.all_gather(rank)
    during = gloo_threads()
    del model
    release_process_groups()
    report = {
        "during": during,
        "after": gloo_threads(),
        "gathered": None if gathered == [] else [g[0] for g in gathered],
        "ranks": ranks,
        "local_group_dropped": comm._LOCAL_PROCESS_GROUP is None,
        "initialized": dist.is_initialized(),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


def test_no_gloo_thread_outlives_the_release(tmp_path):
    mp.spawn(_rank_worker, nprocs=2, args=(free_port(), str(tmp_path)))
    for rank in (0, 1):
        with open(tmp_path / f"rank{rank}.json") as f:
            report = json.load(f)
        assert report["ranks"] == [0, 1]
        assert report["gathered"] == ([0, 1] if rank == 0 else None)
        assert any("gloo" in n for n in report["during"]), report  # the threads are seen
        assert report["after"] == [], report
        assert report["local_group_dropped"] and not report["initialized"]
