# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Preemption: on SIGTERM, finish the current iteration, save a checkpoint, exit with 143.

Shared machines stop jobs with SIGTERM (then SIGKILL after a grace period). The handler only
sets a flag; after the iteration, every process agrees (one all-reduce when distributed) to stop
at the same iteration, the main process saves ``model_<iter>.pth`` through the trainer's
(atomic) checkpointer, and training ends with ``SystemExit(143)`` (128 + SIGTERM) so that job
schedulers see a terminated run. ``--resume`` continues from that checkpoint.
"""

import logging
import signal
import threading

import torch
import torch.distributed as dist

from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["PreemptionCheckpoint", "PREEMPTED_EXIT_CODE"]

PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM

logger = logging.getLogger(__name__)


class PreemptionCheckpoint(HookBase):
    """Save and stop at the end of the iteration during which SIGTERM arrived."""

    def __init__(self, checkpointer):
        self.checkpointer = checkpointer
        self._requested = False
        self._previous = None

    def _on_sigterm(self, signum, frame):
        self._requested = True

    def before_train(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def after_train(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _stop_everywhere(self) -> bool:
        if comm.get_world_size() == 1 or not dist.is_initialized():
            return self._requested
        flag = torch.tensor([int(self._requested)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def after_step(self):
        it = self.trainer.iter
        if not self._stop_everywhere() or it + 1 >= self.trainer.max_iter:
            return  # nothing asked, or the last iteration: training ends normally anyway
        self.checkpointer.save(f"model_{it:07d}", iteration=it)
        logger.warning(f"SIGTERM: stopped after iteration {it}; resume with --resume")
        raise SystemExit(PREEMPTED_EXIT_CODE)
