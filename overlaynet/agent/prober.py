"""The kubelet's prober, inside the agent: each pod's readiness and liveness probes on their
periods, from the pod's node (like the kubelet, which probes a pod from the node it runs on).

This module owns the probe loops of one served key. It reports transitions through a
callback and never decides what they mean: the controller marks the pod (not) Ready and
resyncs Services, and a failed liveness probe restarts the test server (closing and
reopening its sockets, as a container restart would). A report that fails (the store busy
or unwritable) is sent again every period until it lands, so a transition is never lost.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from overlaynet.agent import reachability
from overlaynet.api.probes import ProbeSpec, Tracker

log = logging.getLogger("overlaynet.agent")


async def run_once(spec: ProbeSpec, node_netns: str, pod_netns: str, pod_ip: str) -> str | None:
    """One probe attempt: None for success (HTTP 200-399, a TCP connect, exit status 0), else
    why it failed, in the words of the kubelet's "probe failed" event."""
    if spec.action == "http":
        what = f"GET http://{pod_ip}:{spec.port}{spec.path}"
    elif spec.action == "tcp":
        what = f"connect to {pod_ip}:{spec.port}"
    else:
        what = f"command {' '.join(spec.command)!r}"
    try:
        async with asyncio.timeout(spec.timeout):
            if spec.action == "http":
                status, _ = await reachability.http_get(node_netns, pod_ip, spec.port, spec.path)
                return None if 200 <= status < 400 else f"{what}: HTTP status {status}"
            if spec.action == "tcp":
                sock = reachability._new_socket(node_netns, socket.AF_INET, socket.SOCK_STREAM)
                try:
                    await reachability._connect(asyncio.get_running_loop(), sock, (pod_ip, spec.port))
                finally:
                    sock.close()
                return None
            process = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", pod_netns, *spec.command,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            try:
                status = await process.wait()
            except asyncio.CancelledError:
                process.kill()
                raise
            return None if status == 0 else f"{what}: exit status {status}"
    except TimeoutError:
        return f"{what}: no answer within timeoutSeconds ({spec.timeout:g}s)"
    except OSError as exc:
        return f"{what}: {reachability.error_text(exc)}"


class Prober:
    """The probe loops of one pod. On each transition ``restart()`` is awaited first when a
    liveness probe failed; ``report(kind, ok)`` is awaited until it succeeds.

    ``stopped`` is set as soon as ``stop()`` is called: a report already handed to a thread
    (waiting there for the cluster's lock) cannot be cancelled, so the receiver reads it and
    drops a stopped prober's finding, which would otherwise land after its successor's.
    """

    def __init__(self, key: str, specs: list[ProbeSpec], node_netns: str, pod_netns: str, pod_ip: str,
                 report: Callable[[str, bool], Awaitable[None]], restart: Callable[[], Awaitable[None]]):
        self.key = key
        self.specs = specs
        self.node_netns, self.pod_netns, self.pod_ip = node_netns, pod_netns, pod_ip
        self.report, self.restart = report, restart
        self.tasks: list[asyncio.Task] = []
        self.stopped = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._loop(spec)) for spec in self.specs]

    async def stop(self) -> None:
        self.stopped = True
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []

    async def _loop(self, spec: ProbeSpec) -> None:
        tracker = Tracker(spec)
        unreported: bool | None = None
        await asyncio.sleep(spec.initial_delay)
        while True:
            failure = await run_once(spec, self.node_netns, self.pod_netns, self.pod_ip)
            changed = tracker.record(failure is None)
            if changed is not None:
                log.info("%s probe of %s: %s", spec.kind, self.key, "success" if changed else f"failure ({failure})")
                unreported = changed
                if spec.kind == "liveness" and not changed:
                    await self.restart()
                    tracker = Tracker(spec)  # the container restarted: count afresh
            if unreported is not None:
                try:
                    await self.report(spec.kind, unreported)
                    unreported = None
                except Exception:
                    log.exception("reporting the %s of %s failed; again in %ss", spec.kind, self.key, spec.period)
            await asyncio.sleep(spec.period)
