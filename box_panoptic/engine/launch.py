# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""detectron2's ``launch`` that also runs multi-process data-parallel jobs on CPU machines and
under ``torchrun``.

* Under ``torchrun`` (or any torchelastic agent, SLURM + torchrun included), each process is one
  rank already: the process group is initialised from the environment (``env://``: ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), with
  NCCL on GPUs and gloo on CPUs, and detectron2's per-machine process group is set up as its own
  launcher does. ``--num-gpus`` / ``--num-machines`` are then ignored.
* Otherwise, with CUDA available, detectron2's launcher runs unchanged; without CUDA (detectron2
  0.6's launcher asserts CUDA and uses NCCL) the same processes are spawned with gloo.

Either way ``comm``, the samplers, DDP and the evaluators' gathers work as on GPUs.
"""

import gc
import glob
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import List, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.rendezvous import _create_c10d_store

from detectron2.engine import launch as d2_launch
from detectron2.engine.launch import _find_free_port
from detectron2.utils import comm

__all__ = [
    "TorchrunEnv",
    "elastic_restart_count",
    "gloo_threads",
    "launch",
    "release_process_groups",
    "torchrun_env",
]

DEFAULT_TIMEOUT = timedelta(minutes=30)

logger = logging.getLogger("detectron2." + __name__)


@dataclass(frozen=True)
class TorchrunEnv:
    """This process's place in a torchrun job (from the environment torchrun sets)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    restart_count: int = 0

    @property
    def machine_rank(self) -> int:
        return self.rank // self.local_world_size


TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def torchrun_env(environ=None) -> Optional[TorchrunEnv]:
    """The job layout when torchrun (or another ``env://`` launcher) started this process;
    None otherwise."""
    env = os.environ if environ is None else environ
    if not all(k in env for k in TORCHRUN_KEYS):
        return None
    world = int(env["WORLD_SIZE"])
    local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    if local_world <= 0 or world % local_world:
        raise ValueError(
            f"torchrun: WORLD_SIZE {world} is not a multiple of LOCAL_WORLD_SIZE {local_world}"
        )
    return TorchrunEnv(
        rank=int(env["RANK"]),
        world_size=world,
        local_rank=int(env["LOCAL_RANK"]),
        local_world_size=local_world,
        restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
    )


def elastic_restart_count() -> int:
    """How often torchrun restarted this job's workers (0 outside torchrun): a restarted
    worker resumes from the last checkpoint."""
    env = torchrun_env()
    return env.restart_count if env else 0


def _share_cpu_threads(procs_per_machine: int) -> None:
    """Each of a machine's processes computes on its share of the cores (at most what it was
    given): two processes with all the cores each oversubscribe them (measured 9x slower)."""
    share = max(1, (os.cpu_count() or 1) // max(1, procs_per_machine))
    torch.set_num_threads(min(torch.get_num_threads(), share))


def _set_local_process_group(world_size: int, procs_per_machine: int, machine_rank: int):
    """detectron2's per-machine group, created on every rank in the same order."""
    for i in range(world_size // procs_per_machine):
        group = dist.new_group(list(range(i * procs_per_machine, (i + 1) * procs_per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def gloo_threads() -> List[str]:
    """Names of this process's gloo threads (read from ``/proc``; empty where there is none)."""
    names = []
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/comm"):
        try:
            with open(path) as f:
                name = f.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
        if "gloo" in name:
            names.append(name)
    return sorted(names)


def release_process_groups(report_leftover: bool = True) -> None:
    """Destroy every process group and drop detectron2's own references to them, so that their
    gloo threads end now, while the interpreter is still whole.

    ``destroy_process_group`` alone leaves them running: ``comm._LOCAL_PROCESS_GROUP`` and the
    cached ``comm._get_global_gloo_group()`` keep the groups alive until interpreter shutdown,
    where a gloo thread that releases a tensor waits for the finalising interpreter's GIL and the
    process dies with SIGABRT ("terminate called without an active exception") after its work
    was done: 5 of 60 two-process runs under torch 2.14, always rank 1.

    ``report_leftover``: warn if gloo threads are still running afterwards (when the work ended
    normally; after an exception its traceback still holds the trainer and so the groups).
    """
    if dist.is_initialized():
        dist.destroy_process_group()
    comm._LOCAL_PROCESS_GROUP = None
    comm._get_global_gloo_group.cache_clear()
    gc.collect()  # the trainer's DDP model, in reference cycles, holds the groups as well
    left = gloo_threads() if report_leftover else []
    if left:
        logger.warning(
            f"{len(left)} gloo threads outlived destroy_process_group (something still holds a "
            "process group); this process may abort with SIGABRT as it exits"
        )


def _run_then_release(main_func, args):
    """``main_func(*args)``, then :func:`release_process_groups` however it ends."""
    try:
        result = main_func(*args)
    except BaseException:
        release_process_groups(report_leftover=False)
        raise
    release_process_groups()
    return result


def _run_under_torchrun(main_func, env: TorchrunEnv, args, timeout):
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(env.local_rank)
    else:
        _share_cpu_threads(env.local_world_size)
    # the rendezvous keys of each elastic attempt under their own prefix: a restarted group
    # must never read the addresses that the previous attempt's (dead) ranks published
    store = _create_c10d_store(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), env.rank, env.world_size, timeout
    )
    store = dist.PrefixStore(f"box_panoptic/attempt_{env.restart_count}", store)
    dist.init_process_group(
        backend="nccl" if cuda else "gloo",
        store=store,
        rank=env.rank,
        world_size=env.world_size,
        timeout=timeout,
    )
    _set_local_process_group(env.world_size, env.local_world_size, env.machine_rank)
    comm.synchronize()
    return _run_then_release(main_func, args)


def _cpu_worker(
    local_rank, main_func, world_size, procs_per_machine, machine_rank, dist_url, args, timeout
):
    rank = machine_rank * procs_per_machine + local_rank
    _share_cpu_threads(procs_per_machine)
    dist.init_process_group(
        backend="gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout
    )
    _set_local_process_group(world_size, procs_per_machine, machine_rank)
    comm.synchronize()
    _run_then_release(main_func, args)


def launch(
    main_func,
    num_gpus_per_machine,
    num_machines=1,
    machine_rank=0,
    dist_url=None,
    args=(),
    timeout=DEFAULT_TIMEOUT,
):
    """Same arguments as ``detectron2.engine.launch``; ``num_gpus_per_machine`` counts processes
    on a CPU machine. Under torchrun the environment gives the layout instead."""
    world_size = num_machines * num_gpus_per_machine
    env = torchrun_env()
    if env is not None:
        if world_size not in (1, env.world_size):
            logger.warning(
                f"torchrun started {env.world_size} processes; --num-gpus {num_gpus_per_machine} "
                f"x --num-machines {num_machines} is ignored"
            )
        return _run_under_torchrun(main_func, env, args, timeout)
    if world_size <= 1 or torch.cuda.is_available():
        return d2_launch(
            main_func,
            num_gpus_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
            timeout=timeout,
        )
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("dist_url=auto is only supported on one machine")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.spawn(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        daemon=False,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
    )
