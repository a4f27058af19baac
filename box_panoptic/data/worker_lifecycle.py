# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Loader workers that never outlive their trainer and never keep it from exiting.

The training loader's workers must survive a SIGTERM sent to the whole process group (a job
scheduler's preemption) or a Ctrl-C's SIGINT: the trainer saves a checkpoint at the end of the
iteration and needs its data until then. A worker that simply ignored SIGTERM would, however,
block the trainer's exit after any exception: at interpreter exit ``multiprocessing``
terminates its daemonic children with SIGTERM and then joins them, forever.

Here a worker's SIGTERM handler exits when

* its trainer has asked the workers to stop (:meth:`WorkerStopFlag.set`: on loader shutdown, at
  interpreter exit, after any exception that leaves training), or
* its parent is gone;

and otherwise leaves SIGTERM to the trainer. On Linux a worker also asks the kernel to SIGKILL it
when its parent dies (``PR_SET_PDEATHSIG``), so a trainer killed with SIGKILL leaves no orphan.
"""

import atexit
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import weakref

__all__ = ["WorkerStopFlag", "WORKER_STOPPED_EXIT_CODE"]

WORKER_STOPPED_EXIT_CODE = 128 + signal.SIGTERM
_PR_SET_PDEATHSIG = 1

# every flag created in this process, set at interpreter exit before multiprocessing's own
# exit handler (registered earlier, so run later) terminates and joins the daemonic workers
_LIVE_FLAGS: "weakref.WeakSet[WorkerStopFlag]" = weakref.WeakSet()


def _set_all_flags() -> None:
    for flag in list(_LIVE_FLAGS):
        flag.set()


atexit.register(_set_all_flags)


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent thread exits (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return


class WorkerStopFlag:
    """A flag in shared memory, set by the trainer process, read by its loader workers.

    Use :meth:`worker_init` as (or from) the DataLoader's ``worker_init_fn``.
    """

    def __init__(self):
        self._value = multiprocessing.RawValue("b", 0)
        self._parent_pid = os.getpid()
        _LIVE_FLAGS.add(self)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return bool(self._value.value)

    def _on_sigterm(self, signum, frame) -> None:
        if self.is_set() or os.getppid() != self._parent_pid:
            os._exit(WORKER_STOPPED_EXIT_CODE)
        # otherwise: the trainer got the same signal and stops at the end of its iteration

    def worker_init(self, worker_id: int = 0) -> None:
        """Install the worker's SIGTERM handler and the parent-death signal; leave SIGINT (a
        Ctrl-C reaches the whole foreground group) to the trainer, which saves and stops us."""
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with_parent()
        if os.getppid() != self._parent_pid:  # the parent died before prctl took effect
            os._exit(WORKER_STOPPED_EXIT_CODE)
