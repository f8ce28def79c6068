#!/usr/bin/env python3
"""Bring-up and teardown of a whole overlaynet cluster, as ratios against the kernel floor.

In one run, interleaved so a noisy machine hurts both sides alike:
- the floor: ``bench/floor.py``'s raw ``ip -batch`` build of the same namespaces, veths,
  addresses, bridges, VXLAN devices and routes (N nodes x P pods), and its teardown;
- overlaynet: ``ClusterManager.up`` (store, plan, kernel, agent start, node servers), then
  ``apply`` of a Deployment with N x P replicas (scheduling, IPAM, pod plans, test servers),
  then ``down`` (agent stop, namespaces deleted and waited for).
It prints one JSON object with seconds, the ratios, and the agent's RSS with the pods served.
A second scenario (``--rss-pods``) serves many pods to measure the agent's memory.

    python3 bench/bringup.py --nodes 10 --pods-per-node 20 --repeat 3 [--rss-pods 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import floor  # noqa: E402  (bench/floor.py)

from overlaynet.api import model  # noqa: E402
from overlaynet.api.manifests import parse_manifests  # noqa: E402
from overlaynet.control.manager import ClusterManager  # noqa: E402
from overlaynet.control.store import Store  # noqa: E402


def deployment_yaml(name: str, replicas: int) -> str:
    """A Deployment of ``replicas`` test-server pods, as a user would write it."""
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: {name}, image: agnhost, ports: [{{containerPort: 8080}}]}}]
"""


def agent_rss_kib(manager: ClusterManager, cluster: str) -> int:
    from overlaynet.agent.client import find_agent_pids

    pid = find_agent_pids(cluster, manager.agent_socket(cluster))[0]
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


def measure_overlaynet(nodes: int, pods_per_node: int, cluster: str, cni: str = "flannel") -> dict:
    state = tempfile.mkdtemp(prefix="ovn-bench-", dir="/tmp")
    manager = ClusterManager(Store(state))
    # No cluster DNS: the floor builds exactly the requested pods, and so must we.
    spec = model.build_spec(name=cluster, nodes=nodes, node_cidr_mask_size=24, cni=cni, dns=False)
    manifests = parse_manifests("bench", text=deployment_yaml("bench", nodes * pods_per_node))
    try:
        started = time.perf_counter()
        manager.up(spec)
        cluster_up = time.perf_counter()
        manager.apply(cluster, manifests)
        pods_up = time.perf_counter()
        running = sum(1 for p in manager.pods(cluster) if p["status"]["phase"] == "Running")
        rss = agent_rss_kib(manager, cluster)
        # Teardown is timed until the kernel has destroyed the namespaces, as for the floor.
        watch = floor.DestructionWatch(floor.ours(f"{cluster}."))
        try:
            down_started = time.perf_counter()
            manager.down(cluster)
            watch.wait()
            down = time.perf_counter() - down_started
        finally:
            watch.close()
    finally:
        if manager.store.get_cluster(cluster):
            manager.down(cluster)
        shutil.rmtree(state, ignore_errors=True)
    if running != nodes * pods_per_node:
        raise SystemExit(f"only {running} of {nodes * pods_per_node} pods came up")
    return {"up_s": round(pods_up - started, 4), "cluster_up_s": round(cluster_up - started, 4),
            "pods_up_s": round(pods_up - cluster_up, 4), "down_s": round(down, 4), "agent_rss_kib": rss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--pods-per-node", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rss-pods", type=int, default=0, help="also serve this many pods and report agent RSS")
    parser.add_argument("--cni", default="flannel", help="the CNI mode of overlaynet's side (flannel or calico)")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between measurements")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/bringup.py: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    prefix = f"bench-floor-{os.getpid()}."
    floors, ours = [], []
    for run in range(args.repeat):
        # Each side starts on a quiet kernel: for a second after a teardown it still frees
        # what the namespaces held, and an `up` started then takes 0.58 s where 0.25 s do.
        floors.append(floor.measure_floor(args.nodes, args.pods_per_node, prefix))
        time.sleep(args.pause)
        ours.append(measure_overlaynet(args.nodes, args.pods_per_node, f"bench{run}", args.cni))
        time.sleep(args.pause)

    def median(rows, key):
        return round(statistics.median(r[key] for r in rows), 4)

    result = {
        "cni": args.cni, "nodes": args.nodes, "pods": args.nodes * args.pods_per_node, "repeat": args.repeat,
        "floor_up_s": median(floors, "floor_up_s"), "floor_down_s": median(floors, "floor_down_s"),
        "overlaynet_up_s": median(ours, "up_s"), "overlaynet_down_s": median(ours, "down_s"),
        "overlaynet_cluster_up_s": median(ours, "cluster_up_s"), "overlaynet_pods_up_s": median(ours, "pods_up_s"),
        "agent_rss_mib": round(median(ours, "agent_rss_kib") / 1024, 1),
    }
    # The kernel destroys namespaces in passes, and how a teardown falls into them varies
    # from run to run (the floor's 1,000 pods: 0.06 s in one pass, 0.8 s in two): every run.
    result["floor_down_runs_s"] = [r["floor_down_s"] for r in floors]
    result["overlaynet_down_runs_s"] = [r["down_s"] for r in ours]
    result["up_ratio"] = round(result["overlaynet_up_s"] / result["floor_up_s"], 2)
    result["down_ratio"] = round(result["overlaynet_down_s"] / result["floor_down_s"], 2)
    if args.rss_pods:
        per_node = -(-args.rss_pods // args.nodes)
        big = measure_overlaynet(args.nodes, per_node, "benchrss", args.cni)
        result["rss_scenario"] = {"pods": args.nodes * per_node, "agent_rss_mib": round(big["agent_rss_kib"] / 1024, 1),
                                  "up_s": big["up_s"], "down_s": big["down_s"]}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
