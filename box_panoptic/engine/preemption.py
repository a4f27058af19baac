# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Preemption: on SIGTERM or SIGINT, finish the current iteration, save a checkpoint, exit.

Shared machines stop jobs with SIGTERM (then SIGKILL after a grace period); a person stops a run
with Ctrl-C (SIGINT). The handler only sets a flag; after the iteration, every process agrees
(one all-reduce when distributed) to stop at the same iteration, the main process saves
``model_<iter>.pth`` through the trainer's (atomic) checkpointer, and training ends with
``SystemExit(128 + signal)`` (143 for SIGTERM, 130 for SIGINT) so that job schedulers see a
terminated run. ``--resume`` continues from that checkpoint. A second SIGINT interrupts at once
(KeyboardInterrupt), for an iteration that does not end.
"""

import logging
import signal
import threading

import torch
import torch.distributed as dist

from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["PreemptionCheckpoint", "PREEMPTED_EXIT_CODE", "INTERRUPTED_EXIT_CODE"]

PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM
INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT

logger = logging.getLogger(__name__)


class PreemptionCheckpoint(HookBase):
    """Save and stop at the end of the iteration during which SIGTERM or SIGINT arrived."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, checkpointer):
        self.checkpointer = checkpointer
        self._requested = 0  # the signal number, 0: none
        self._previous = {}

    def _on_signal(self, signum, frame):
        if signum == signal.SIGINT and self._requested == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self._requested = self._requested or signum

    def before_train(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def after_train(self):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _stop_everywhere(self) -> int:
        if comm.get_world_size() == 1 or not dist.is_initialized():
            return self._requested
        flag = torch.tensor([int(self._requested)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def after_step(self):
        it = self.trainer.iter
        signum = self._stop_everywhere()
        if not signum or it + 1 >= self.trainer.max_iter:
            return  # nothing asked, or the last iteration: training ends normally anyway
        self.checkpointer.save(f"model_{it:07d}", iteration=it)
        name = signal.Signals(signum).name
        logger.warning(f"{name}: stopped after iteration {it}; resume with --resume")
        raise SystemExit(128 + signum)
