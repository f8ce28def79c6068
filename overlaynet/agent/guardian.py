"""The self-heal loop's watch over the agent itself (``selfHeal: true``).

A real node's kubelet and CNI daemons are kept running by systemd (``Restart=always``); here
the agent is, by a guardian: a second, idle process (``python -m overlaynet.agent --guard PID
--cluster C --socket S``) that the agent starts when it is told to watch and starts again
within a tick should it die (``watcher.Watcher``). This module owns what the guardian does:
wait for the agent's death on a pidfd (a recycled pid is never taken for the agent), then run
heal passes with the agent counted lost until one lands. The pass (``ClusterManager.heal``)
starts the agent again and serves every pod and node again; the new agent, told to watch,
starts a guardian of its own, and this one exits.

What it never does: hold a socket in any namespace, or heal a cluster going down:
``client.stop_agent`` ends the guardians before the agent and again after it, and a pass finds
the cluster's lock held (``None``: asked again) or the cluster gone (``[]``: done).
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Callable

log = logging.getLogger("overlaynet.agent")

# One pass with the agent lost: the repairs (lines for the log), or None when the cluster was busy.
LostAgentHeal = Callable[[], list[str] | None]

RETRY_FIRST = 0.2  # seconds before a busy or failed pass is tried again; doubles, capped
RETRY_MAX = 1.0  # the watcher's tick


def wait_for_death(pid: int, is_the_agent: Callable[[int], bool]) -> None:
    """Return once process ``pid`` has exited (at once if it is gone, or is not the agent)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if not is_the_agent(pid):  # checked once the pidfd pins the process: no race with a new pid
            return
        select.select([pidfd], [], [])
    finally:
        os.close(pidfd)


def guard(pid: int, is_the_agent: Callable[[int], bool], heal: LostAgentHeal) -> int:
    """Wait for the agent ``pid`` to die, then heal until a pass lands; the exit status."""
    wait_for_death(pid, is_the_agent)
    log.warning("guardian: the agent (pid %d) is gone; healing", pid)
    delay = RETRY_FIRST
    while True:
        try:
            lines = heal()
        except Exception:
            log.exception("guardian: the pass failed; again in %.1fs", delay)
            lines = None
        if lines is not None:
            for line in lines:
                log.info("self-heal: %s", line)
            return 0
        time.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)
