# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Running training subprocesses in tests: output to log files, a bounded wait, a clean kill.

A run's output goes to a file, never a pipe: a pipe nobody reads while the test waits holds
64 KB, and a training run prints about 60 KB (config dump, model, warnings with full paths)
before its first checkpoint. Once the pipe is full the run blocks on its next write and never
ends. With several processes, a pipe read one at a time lets another fill its own and block
inside a collective, so the first one waits on it for good.
"""

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import pytest

__all__ = ["Finished", "alive", "run_logged", "still_alive_after", "wait_for_output"]


@dataclass
class Finished:
    """One process that ended: its exit code, its output and the log file that holds it."""

    returncode: int
    log: str
    log_path: str


def run_logged(
    cmds: Sequence[Sequence[str]],
    log_paths: Sequence[os.PathLike],
    *,
    timeout: float,
    env: Optional[dict] = None,
    during: Optional[Callable[[List[subprocess.Popen]], None]] = None,
) -> List[Finished]:
    """Start every command at once, each in its own session with stdout and stderr going to
    its log file; call ``during(processes)`` while they run (to interrupt one, say); then wait
    for all of them, ``timeout`` seconds in total. A process still running then is killed with its
    whole group (loader workers included) and the test fails naming its log."""
    if len(cmds) != len(log_paths):
        raise ValueError(f"{len(cmds)} commands for {len(log_paths)} log files")
    files = [open(p, "wb") for p in log_paths]
    procs: List[subprocess.Popen] = []
    try:
        for cmd, f in zip(cmds, files):
            procs.append(
                subprocess.Popen(
                    list(cmd), env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        if during is not None:
            during(procs)
        deadline = time.monotonic() + timeout
        for proc, path in zip(procs, log_paths):
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                pytest.fail(f"hung: no exit within {timeout:.0f} s; its output: {path}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:  # it ended in between
                    pass
                proc.wait()
        for f in files:
            f.close()
    return [
        Finished(proc.returncode, Path(path).read_text(errors="replace"), str(path))
        for proc, path in zip(procs, log_paths)
    ]


def wait_for_output(proc: subprocess.Popen, log_path: os.PathLike, text: str, *, timeout: float):
    """Return once ``text`` is in the log file of ``proc`` (a ``run_logged`` process, from its
    ``during`` callback: to signal a run once it has reached a known point). Fails the test,
    naming the log, if the process ends first or ``timeout`` seconds pass; ``run_logged`` then
    kills what is left."""
    deadline = time.monotonic() + timeout
    path = Path(log_path)
    while text not in path.read_text(errors="replace"):
        if proc.poll() is not None:
            pytest.fail(f"ended (exit {proc.returncode}) before {text!r}; its output: {path}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {text!r} within {timeout:.0f} s; its output: {path}")
        time.sleep(0.2)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (Linux: reads /proc; a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def still_alive_after(pids: Sequence[int], *, timeout: float) -> List[int]:
    """Wait up to ``timeout`` seconds for every process of ``pids`` to end; returns those that
    have not, after killing them so that none outlives the test."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in pids if alive(p)]
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:  # it ended in between
            pass
    return left
