"""Stopping processes overlaynet started: SIGTERM, a grace period, then SIGKILL.

This module owns the escalation only. Which pids are ours is the caller's knowledge (an
agent by its command line, a BIRD by its pid file), passed in as ``alive``; it is asked
again before every signal, so a process that has exited is never signalled again. Each pid
is held by a pidfd from the start: signals go through it (a pid the kernel hands to another
process meanwhile is never hit) and an exit is noticed the moment it happens, not at the
next poll. It never looks a process up by name.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable, Iterable

POLL_INTERVAL = 0.01  # for a process whose pidfd says it ended while ``alive`` still says not


def _wait_for_exits(pidfds: dict[int, int], pids: list[int], alive: Callable[[int], bool],
                    timeout: float) -> list[int]:
    """Wait up to ``timeout`` until none of ``pids`` is alive; the ones still alive."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    waiting = set()
    for pid in pids:
        poller.register(pidfds[pid], select.POLLIN)
        waiting.add(pidfds[pid])
    remaining = [pid for pid in pids if alive(pid)]
    while remaining and (left := deadline - time.monotonic()) > 0:
        if waiting:
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                waiting.discard(fd)
        else:
            time.sleep(min(POLL_INTERVAL, left))
        remaining = [pid for pid in remaining if alive(pid)]
    return remaining


def stop(pids: Iterable[int], alive: Callable[[int], bool], term_timeout: float, kill_timeout: float) -> list[int]:
    """SIGTERM each live pid, wait up to ``term_timeout`` for all to end, SIGKILL the rest and
    wait up to ``kill_timeout``; return the pids still alive at the end (none, normally)."""
    pidfds: dict[int, int] = {}
    try:
        for pid in pids:
            try:
                pidfds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
        remaining = list(pidfds)
        for sig, wait in ((signal.SIGTERM, term_timeout), (signal.SIGKILL, kill_timeout)):
            remaining = [pid for pid in remaining if alive(pid)]
            for pid in remaining:
                try:
                    signal.pidfd_send_signal(pidfds[pid], sig)
                except ProcessLookupError:
                    pass
            remaining = _wait_for_exits(pidfds, remaining, alive, wait)
            if not remaining:
                break
        return remaining
    finally:
        for fd in pidfds.values():
            os.close(fd)
