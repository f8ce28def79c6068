"""overlaynet.kernel.processes: SIGTERM, a grace period, SIGKILL; a pid the caller no longer
owns is never signalled (no root: the processes are this test's children)."""

from __future__ import annotations

import subprocess
import sys
import time

from overlaynet.kernel import processes

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"


def _alive(children: dict[int, subprocess.Popen]):
    return lambda pid: children[pid].poll() is None


def test_sigterm_stops_a_process_within_the_grace_period():
    child = subprocess.Popen(["sleep", "60"])
    started = time.monotonic()
    assert processes.stop([child.pid], _alive({child.pid: child}), 5.0, 5.0) == []
    assert child.returncode == -15 and time.monotonic() - started < 2.0


def test_a_process_that_ignores_sigterm_gets_sigkill_after_the_grace_period():
    child = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"
    started = time.monotonic()
    assert processes.stop([child.pid], _alive({child.pid: child}), 0.3, 5.0) == []
    assert child.returncode == -9 and time.monotonic() - started >= 0.3
    child.stdout.close()


def test_a_pid_that_is_no_longer_ours_is_not_signalled():
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert processes.stop([child.pid], lambda pid: False, 0.1, 0.1) == []
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_a_pid_that_has_already_gone_is_skipped():
    child = subprocess.Popen(["true"])
    child.wait()
    assert processes.stop([child.pid], _alive({child.pid: child}), 0.1, 0.1) == []


def test_several_processes_are_stopped_together():
    children = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    by_pid = {child.pid: child for child in children}
    assert processes.stop(list(by_pid), _alive(by_pid), 5.0, 5.0) == []
    assert [child.returncode for child in children] == [-15, -15, -15]
