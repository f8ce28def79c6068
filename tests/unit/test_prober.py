"""The prober's loop: a transition whose report fails is reported again every period until it
lands, and a failed liveness probe restarts the container once, however many reports it takes;
a prober replaced while its report waits for the controller marks that report stale.

The probe outcomes are scripted (``run_once`` replaced): what is under test is the loop that
turns outcomes into reports, not the probing, which the lab and probe tests exercise for real.
"""

import asyncio
import threading

from overlaynet.agent import prober
from overlaynet.agent.server import Agent
from overlaynet.api.probes import ProbeSpec


def run_loop(monkeypatch, kind: str, outcomes: list[bool], failing_reports: int, failure_threshold: int = 1):
    """Run one probe loop over ``outcomes``; the first ``failing_reports`` reports raise."""
    script = iter(outcomes)
    done = asyncio.Event()
    reports: list[tuple[str, bool, bool]] = []  # (kind, ok, landed)
    restarts: list[int] = []

    async def scripted(spec, node_netns, pod_netns, pod_ip):
        try:
            return None if next(script) else "scripted failure"
        except StopIteration:
            done.set()
            await asyncio.Event().wait()  # park until stopped

    async def report(kind: str, ok: bool) -> None:
        landed = len(reports) >= failing_reports
        reports.append((kind, ok, landed))
        if not landed:
            raise OSError("the store is busy")

    async def restart() -> None:
        restarts.append(len(reports))

    async def main():
        spec = ProbeSpec(kind=kind, action="tcp", port=80, period=0.001, failure_threshold=failure_threshold)
        probe = prober.Prober("c/default/p", [spec], "node", "pod", "10.0.0.2", report, restart)
        probe.start()
        await asyncio.wait_for(done.wait(), 5)
        await probe.stop()

    monkeypatch.setattr(prober, "run_once", scripted)
    asyncio.run(main())
    return reports, restarts


def test_a_failed_readiness_report_is_sent_again_until_it_lands(monkeypatch):
    reports, restarts = run_loop(monkeypatch, "readiness", [True, True, True, False, False], failing_reports=2)
    assert reports == [("readiness", True, False), ("readiness", True, False), ("readiness", True, True),
                       ("readiness", False, True)]
    assert restarts == []


def test_a_newer_transition_replaces_an_unreported_one(monkeypatch):
    reports, _ = run_loop(monkeypatch, "readiness", [True, False, False], failing_reports=1)
    assert reports == [("readiness", True, False), ("readiness", False, True)]


def test_a_failed_liveness_probe_restarts_once_while_its_report_is_retried(monkeypatch):
    reports, restarts = run_loop(monkeypatch, "liveness", [False, False, False, True], failing_reports=2,
                                 failure_threshold=2)
    # two failures: one restart, before the first report; the third failure counts afresh
    assert restarts == [0]
    assert reports == [("liveness", False, False), ("liveness", False, False), ("liveness", True, True)]


def test_a_report_waiting_when_its_prober_is_replaced_is_stale(monkeypatch):
    """A report runs in a thread, where cancelling cannot reach it: serving the pod again (a
    new prober) leaves the old report to be dropped by the controller, which asks ``current``."""
    waiting = threading.Event()
    release = threading.Event()
    reports: list[tuple[bool, object]] = []

    def report_health(namespace, name, kind, ok, current):
        reports.append((ok, current))
        waiting.set()
        release.wait(5)  # the controller's lock, held by whoever serves the pod again

    async def succeeds(spec, node_netns, pod_netns, pod_ip):
        return None

    monkeypatch.setattr(prober, "run_once", succeeds)
    agent = Agent("c", "/nonexistent/agent.sock", report_health=report_health)
    spec = ProbeSpec(kind="readiness", action="tcp", port=80, period=60)
    health = {"specs": [spec], "podIP": "10.0.0.2", "nodeNetns": "node", "podNetns": "pod"}

    async def main():
        await agent._start_probes("pod/default/p", health)
        await asyncio.get_running_loop().run_in_executor(None, waiting.wait, 5)
        first_current = reports[0][1]
        assert first_current()
        await agent._start_probes("pod/default/p", health)  # served again: a new prober
        assert not first_current()
        release.set()
        while len(reports) < 2:
            await asyncio.sleep(0.01)
        assert reports[1][1]()
        await agent._start_probes("pod/default/p", None)

    asyncio.run(main())
