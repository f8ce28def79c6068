"""Stopping processes overlaynet started: SIGTERM, a grace period, then SIGKILL.

This module owns the escalation only. Which pids are ours is the caller's knowledge (an
agent by its command line, a BIRD by its pid file), passed in as ``alive``; it is asked
again before every signal, so a process that has exited, whose pid the kernel may hand to
another, is never signalled again. It never looks a process up by name.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable

POLL_INTERVAL = 0.01


def stop(pids: Iterable[int], alive: Callable[[int], bool], term_timeout: float, kill_timeout: float) -> list[int]:
    """SIGTERM each live pid, wait up to ``term_timeout`` for all to end, SIGKILL the rest and
    wait up to ``kill_timeout``; return the pids still alive at the end (none, normally)."""
    remaining = list(pids)
    for sig, wait in ((signal.SIGTERM, term_timeout), (signal.SIGKILL, kill_timeout)):
        remaining = [pid for pid in remaining if alive(pid)]
        for pid in remaining:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        remaining = [pid for pid in remaining if alive(pid)]
        while remaining and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
            remaining = [pid for pid in remaining if alive(pid)]
        if not remaining:
            break
    return remaining
