# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""detectron2's ``launch`` that also runs multi-process data-parallel jobs on CPU machines.

detectron2 0.6's launcher asserts CUDA and uses NCCL. With CUDA available this module calls it
unchanged; without CUDA it spawns the same processes with the gloo backend and sets up
detectron2's local process group the same way, so ``comm``, the samplers, DDP and the
evaluators' gathers work as on GPUs. Scaling out is plain torch.distributed.
"""

from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detectron2.engine import launch as d2_launch
from detectron2.engine.launch import _find_free_port
from detectron2.utils import comm

__all__ = ["launch"]

DEFAULT_TIMEOUT = timedelta(minutes=30)


def _cpu_worker(
    local_rank, main_func, world_size, procs_per_machine, machine_rank, dist_url, args, timeout
):
    rank = machine_rank * procs_per_machine + local_rank
    dist.init_process_group(
        backend="gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout
    )
    for i in range(world_size // procs_per_machine):
        group = dist.new_group(list(range(i * procs_per_machine, (i + 1) * procs_per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


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
    on a CPU machine."""
    world_size = num_machines * num_gpus_per_machine
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
