# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""tests/processes.py itself: a run past its deadline is killed and named, and
``wait_for_output`` returns on its text, or fails naming the log when the run ends first or the
text never comes. The events are deterministic: the awaited text is printed before the run
ends, or never."""

import re
import sys

import pytest

from .processes import run_logged, still_alive_after, wait_for_output


def _sh(script):
    return ["sh", "-c", script]


def _escaped(path):
    """The log path as a pattern that matches only itself."""
    return re.escape(str(path))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_run_past_its_deadline_is_killed_with_its_group_and_named(tmp_path):
    log, started = tmp_path / "log.txt", []

    def during(procs):  # the background child's pid is logged before the deadline starts
        started.extend(procs)
        wait_for_output(procs[0], log, "child", timeout=30)

    with pytest.raises(pytest.fail.Exception, match=f"hung: no exit within 1 s; .*{_escaped(log)}"):
        run_logged([_sh("sleep 100 & echo child $!; wait")], [log], timeout=1, during=during)
    assert started[0].poll() is not None
    child = int(log.read_text().split()[1])
    assert not still_alive_after([child], timeout=30), "the run's child outlived the kill"


def test_wait_for_output_returns_once_the_text_is_logged(tmp_path):
    log = tmp_path / "log.txt"
    (done,) = run_logged(
        [_sh("echo started; sleep 0.3; echo finished")],
        [log],
        timeout=30,
        during=lambda procs: wait_for_output(procs[0], log, "started", timeout=30),
    )
    assert done.returncode == 0 and done.log.split() == ["started", "finished"]


def test_wait_for_output_fails_naming_the_log_when_the_run_ends_first(tmp_path):
    log = tmp_path / "log.txt"
    with pytest.raises(
        pytest.fail.Exception, match=f"ended \\(exit 3\\) before 'started'.*{_escaped(log)}"
    ):
        run_logged(
            [_sh("echo other; exit 3")],
            [log],
            timeout=30,
            during=lambda procs: wait_for_output(procs[0], log, "started", timeout=30),
        )


def test_wait_for_output_fails_when_the_text_never_comes(tmp_path):
    log, started = tmp_path / "log.txt", []

    def during(procs):
        started.extend(procs)
        wait_for_output(procs[0], log, "started", timeout=1)

    with pytest.raises(pytest.fail.Exception, match=f"no 'started' within 1 s; .*{_escaped(log)}"):
        run_logged([_sh("echo other; sleep 100")], [log], timeout=30, during=during)
    assert started[0].poll() is not None  # run_logged killed it
