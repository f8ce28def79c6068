"""kill -9 at random points, seeded: whatever overlaynet was doing — ``up``, ``apply``,
``delete`` or ``down`` — and whichever of its processes dies (the command, or the command and
the cluster's agent together), afterwards a kept cluster converges to what was asked and
``down`` leaves no namespace, link, process, file or host sysctl change behind.

``OVERLAYNET_KILLS`` sets the number of kills (50); the seed is fixed, so a failure names the
kill that found it and reproduces.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time

from tests.conftest import agent_processes, host_snapshot
from tests.netns.clusters import Cli, deployment, short_state_dir, write_manifest

SEED = 20261204
KILLS = int(os.environ.get("OVERLAYNET_KILLS", "50"))
CLUSTER = "kl"
PHASES = ("up", "apply", "delete", "down")
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}


def _agents_of(cluster: str) -> list[int]:
    return [int(entry.split(":")[0]) for entry in agent_processes() if f"--cluster {cluster} " in entry]


def _command(phase: str, manifest: str) -> list[str]:
    return {"up": ["up", "--name", CLUSTER, "--nodes", "1"],
            "apply": ["apply", "-f", manifest, "--name", CLUSTER],
            "delete": ["delete", "-f", manifest, "--name", CLUSTER],
            "down": ["down", "--name", CLUSTER]}[phase]


def _kill_during(cli: Cli, argv: list[str], delay: float, with_agent: bool) -> bool:
    """Run ``overlaynet argv``, SIGKILL it after ``delay`` s; whether it was still running."""
    process = subprocess.Popen([sys.executable, "-m", "overlaynet", *argv], env=cli.env, cwd=cli.env["PYTHONPATH"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    running = process.poll() is None
    process.kill()  # SIGKILL; nothing once it has exited
    process.wait()
    if with_agent:
        for pid in _agents_of(CLUSTER):
            os.kill(pid, signal.SIGKILL)
    return running


def _converged(cli: Cli, phase: str, manifest: str) -> None:
    """A reconcile pass (the killed agent, if any, comes back), then the interrupted command
    again: the cluster is what was asked."""
    cli.run("reconcile", "--name", CLUSTER, check=False)
    again = cli.run(*_command(phase, manifest), check=False)
    # A delete that got some objects before it died finds them gone (NotFound, as kubectl) and
    # deletes the rest.
    assert again.returncode == 0 or (phase == "delete" and "not found" in again.stderr), again.stderr
    # The manifest's pods (kube-system holds the cluster DNS's, which up made).
    pods = {name: p for name, p in cli.pods(CLUSTER).items() if p["metadata"]["namespace"] == "default"}
    services = [s["metadata"]["name"] for s in cli.json("get", "svc", "--name", CLUSTER)["items"]]
    if phase == "apply":
        statuses = {name: record["status"] for name, record in pods.items()}
        assert sorted(p["phase"] for p in statuses.values()) == ["Running"] * 3, (again.stdout, statuses)
        assert services == ["web"]
        verified = cli.run("verify", "--name", CLUSTER, check=False)
        assert verified.returncode == 0, verified.stdout
    else:
        assert pods == {} and services == [], (pods, services)


def _leftovers(state_dir: str, before: dict) -> list[str]:
    after = host_snapshot()
    # Every namespace, not only the cluster's: `up` probes the kernel in a throwaway one too.
    problems = [f"namespace {n}" for n in sorted(after["netns"] - before["netns"])]
    problems += [f"link {link}" for link in sorted(after["links"] - before["links"])]
    problems += [f"agent {pid}" for pid in _agents_of(CLUSTER)]
    problems += [f"file {name}" for name in sorted(os.listdir(state_dir)) if not name.startswith("state.db")]
    problems += [f"sysctl {key}" for key, value in after["sysctls"].items() if before["sysctls"][key] != value]
    problems += [f"/etc/netns/{name}" for name in sorted(after["etc_netns"] - before["etc_netns"])]
    return problems


def _durations(cli: Cli, manifest: str) -> dict[str, float]:
    """How long each phase takes on this machine, uninterrupted: the kills land within it."""
    took = {}
    for phase in PHASES:
        started = time.monotonic()
        cli.run(*_command(phase, manifest))
        took[phase] = time.monotonic() - started
    return took


def test_kill_9_anywhere_leaves_nothing_behind_and_a_kept_cluster_converges(tmp_path):
    cli = Cli(short_state_dir())
    manifest = write_manifest(str(tmp_path), "app.yaml", [deployment("web", 3), SERVICE])
    before = host_snapshot()
    outcomes = []
    try:
        latest = _durations(cli, manifest)
        for kill in range(KILLS):
            rng = random.Random(SEED + kill)
            phase = PHASES[kill % len(PHASES)]
            if phase != "up":
                cli.run("up", "--name", CLUSTER, "--nodes", "1")
            if phase in ("delete", "down"):
                cli.run("apply", "-f", manifest, "--name", CLUSTER)
            delay, with_agent = rng.uniform(0.05, max(0.1, 0.9 * latest[phase])), rng.random() < 0.2
            interrupted = _kill_during(cli, _command(phase, manifest), delay, with_agent)
            keep = phase in ("apply", "delete") and rng.random() < 0.5
            where = f"kill {kill} (seed {SEED + kill}): {phase} killed after {delay:.2f} s" + (
                " with its agent" if with_agent else "")
            if keep:
                try:
                    _converged(cli, phase, manifest)
                except AssertionError as exc:
                    raise AssertionError(f"{where}: the kept cluster did not converge: {exc}") from None
            result = cli.run("down", "--name", CLUSTER, check=False)
            assert result.returncode == 0 or "does not exist" in result.stderr, f"{where}: down failed: {result.stderr}"
            problems = _leftovers(cli.state_dir, before)
            assert not problems, f"{where}: left behind: {', '.join(problems)}"
            outcomes.append(interrupted)
        assert sum(outcomes) >= KILLS // 2, f"only {sum(outcomes)} of {KILLS} kills hit a running command"
    finally:
        cli.down_quietly(CLUSTER)
        shutil.rmtree(cli.state_dir, ignore_errors=True)
