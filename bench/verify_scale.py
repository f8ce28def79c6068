#!/usr/bin/env python3
"""``overlaynet verify`` at scale: N pods (N x (N-1) ordered pairs over TCP, UDP and ICMP).

It brings up a cluster with ``--pods`` pods spread over ``--nodes`` nodes, runs the same code
path as ``overlaynet verify`` (probe planning, the agent's probes, the eth0 read-back, the
judging) and prints seconds, probes per second and the verdict; then the whole ``overlaynet
verify`` command as a user runs it (``verify_cli_s``: interpreter start, store, every rule,
the report). For scale it also times the floor of one real packet exchange per pair done
the cheapest way a shell user could: one ``ping -c1`` process per pair for a sample of
pairs, extrapolated to all pairs.

    python3 bench/verify_scale.py --nodes 4 --pods 100 [--name benchverify]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bringup import deployment_yaml  # noqa: E402  (bench/bringup.py)

from overlaynet import names  # noqa: E402
from overlaynet.api import model
from overlaynet.api.manifests import parse_manifests  # noqa: E402
from overlaynet.control.manager import ClusterManager  # noqa: E402
from overlaynet.control.store import Store  # noqa: E402
from overlaynet.kernel import observe  # noqa: E402
from overlaynet.tools import verify as verifying  # noqa: E402


def run_verify(manager: ClusterManager, cluster: str) -> tuple[float, verifying.Report, int]:
    started = time.perf_counter()
    node_eps, pod_eps = verifying.endpoints(cluster, manager.nodes(cluster), manager.pods(cluster))
    probes, index = verifying.plan_probes(node_eps, pod_eps)
    results = manager.agent(cluster).probe(probes, timeout=2.0)
    own = {p.name: [a["cidr"].split("/")[0] for a in observe.observe_addresses(p.netns) if a["dev"] == "eth0"]
           for p in pod_eps}
    report = verifying.build_report(index, results, own)
    return time.perf_counter() - started, report, len(probes)


def cli_verify(state: str, cluster: str) -> tuple[float, bool]:
    """Wall seconds of ``overlaynet verify -o json`` in a process of its own, and whether it passed."""
    env = {**os.environ, "OVERLAYNET_STATE_DIR": state}
    argv = [sys.executable, "-c", "import sys; from overlaynet.cli import entry; sys.argv[0] = 'overlaynet'; entry()",
            "verify", "--name", cluster, "-o", "json"]
    started = time.perf_counter()
    done = subprocess.run(argv, check=False, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"overlaynet verify: exit {done.returncode}: {done.stderr.strip()}")
    return seconds, json.loads(done.stdout)["passed"]


def ping_floor(cluster: str, pods: list[dict], sample: int) -> float:
    """Seconds per pair for one `ping -c1` process per pair (sampled)."""
    pairs = [(a, b) for a in pods for b in pods if a is not b]
    chosen = random.Random(1).sample(pairs, min(sample, len(pairs)))
    started = time.perf_counter()
    for a, b in chosen:
        ns = names.pod_netns(cluster, a["metadata"]["namespace"], a["metadata"]["name"])
        subprocess.run(["ip", "netns", "exec", ns, "ping", "-c1", "-W1", b["status"]["podIP"]],
                       capture_output=True, check=True)
    return (time.perf_counter() - started) / len(chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--ping-sample", type=int, default=200)
    parser.add_argument("--name", default="benchverify", help="the cluster's name")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/verify_scale.py: needs root", file=sys.stderr)
        return 2
    state = tempfile.mkdtemp(prefix="ovn-bench-", dir="/tmp")
    manager = ClusterManager(Store(state))
    cluster = args.name
    try:
        manager.up(model.build_spec(name=cluster, nodes=args.nodes, dns=False))  # exactly --pods pods
        manager.apply(cluster, parse_manifests("bench", text=deployment_yaml("scale", args.pods)))
        seconds, report, probes = run_verify(manager, cluster)
        cli_seconds, cli_passed = cli_verify(state, cluster)
        pods = [p for p in manager.pods(cluster) if p["status"]["phase"] == "Running"]
        per_ping = ping_floor(cluster, pods, args.ping_sample)
    finally:
        manager.down(cluster)
        shutil.rmtree(state, ignore_errors=True)
    pairs = args.pods * (args.pods - 1)
    print(json.dumps({
        "pods": args.pods, "nodes": args.nodes, "pod_pairs": pairs, "probes": probes,
        "checks": len(report.checks), "passed": report.passed, "failures": len(report.failures),
        "verify_s": round(seconds, 3), "probes_per_s": round(probes / seconds),
        "verify_cli_s": round(cli_seconds, 3), "cli_passed": cli_passed,
        "ping_process_per_pair_s": round(per_ping, 5),
        "ping_processes_for_all_pairs_s": round(per_ping * pairs, 1),
        "ratio_to_ping_processes": round(seconds / (per_ping * pairs), 3),
    }, indent=2))
    return 0 if report.passed and cli_passed else 1


if __name__ == "__main__":
    sys.exit(main())
