#!/usr/bin/env python3
"""CNI ADD and DEL latency per pod through the exec protocol, against the kernel work they do.

Run as root from the repository root:  python3 bench/cni_latency.py [--pods 40]

In one run, on one node netns with a ``cni0`` bridge, for ``--pods`` sandboxes each:

- **floor**: the raw netlink work the same ADD performs — ``kernel.apply`` of the same
  attachment plan (``get_mode("flannel").plan_pod`` plus the bridge prerequisites), in-process —
  and, for DEL, ``kernel.remove`` of its host side;
- **thin**: ``CniRuntime.add``/``delete`` exec'ing ``cni_plugins/overlaynet-flannel`` (through
  ``nsenter`` into the node netns, as a runtime on the node would), the plugin handing the
  request to a running agent (``agentSocket``);
- **standalone**: the same without an agent: the plugin imports the plugin code and pyroute2
  and execs ``overlaynet-ipam`` through ``CNI_PATH``;
- **compiled**: as thin, but through the compiled front ``scripts/setup`` builds in
  ``cni_plugins/bin`` (``cni_plugins/shim``), when it is built: no interpreter at all.

Also measured: a bare interpreter (``python3 -c pass``), the thin plugin's start-up before it
sends its request (interpreter + ``skel``'s imports), the plugin answering VERSION, and
``-X importtime`` sums of the thin path's and the standalone path's own imports. Prints one
JSON object; medians and p95 in milliseconds. Target: median ADD (the fastest path) under 10 ms.

Everything carries the prefix ``bench-cni-<pid>.`` and is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from overlaynet.agent.client import start_agent, stop_agent  # noqa: E402
from overlaynet.api import model  # noqa: E402
from overlaynet.cni import launch  # noqa: E402
from overlaynet.cni.runtime import CniRuntime  # noqa: E402
from overlaynet.datapath.modes import get_mode  # noqa: E402
from overlaynet.datapath.plan import Address, Bridge, Netns  # noqa: E402
from overlaynet.datapath.topology import NodeInfo, PodInfo  # noqa: E402
from overlaynet.kernel import apply as kapply  # noqa: E402
from overlaynet.kernel import netns  # noqa: E402

PLUGIN_DIR = os.path.join(REPO, "cni_plugins")
COMPILED_DIR = launch.compiled_plugin_dir()  # None unless scripts/setup built cni_plugins/bin
POD_CIDR = "10.244.1.0/24"


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return {"median": round(statistics.median(ordered) * 1000, 2), "p95": round(p95 * 1000, 2), "n": len(ordered)}


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def k8s_args(name: str) -> dict:
    return {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": name}


class Bench:
    def __init__(self, pods: int) -> None:
        self.prefix = f"bench-cni-{os.getpid()}."
        self.cluster = f"bench-cni-{os.getpid()}"
        self.pods = pods
        self.tmp = tempfile.mkdtemp(prefix="ovn-cni-bench-", dir="/tmp")
        self.node = self.prefix + "node"
        self.spec = model.build_spec(name=self.cluster, nodes=1)
        self.socket = os.path.join(self.tmp, "agent.sock")
        self.agent_started = False

    def sandboxes(self, tag: str) -> list[str]:
        names = [f"{self.prefix}{tag}{i}" for i in range(self.pods)]
        kapply.apply(tuple(Netns(n) for n in names))
        return names

    def conflist(self, tag: str, agent: bool) -> dict:
        plugin = {"type": "overlaynet-flannel",
                  "ipam": {"type": "overlaynet-ipam", "ranges": [[{"subnet": POD_CIDR}]],
                           "dataDir": os.path.join(self.tmp, f"ipam-{tag}")},
                  "overlaynet": {"cluster": self.spec.to_document(),
                                 "node": {"name": "node-1", "ip": "172.20.0.11", "podCIDR": POD_CIDR}}}
        if agent:
            plugin["agentSocket"] = self.socket
        return {"cniVersion": "1.0.0", "name": f"bench{tag}", "plugins": [plugin]}

    def measure_exec(self, tag: str, agent: bool, compiled: bool = False) -> tuple[list[float], list[float]]:
        dirs = [COMPILED_DIR] if compiled else []
        rt = CniRuntime(self.conflist(tag, agent), [*dirs, PLUGIN_DIR, "/usr/lib/cni"],
                        os.path.join(self.tmp, f"cache-{tag}"), exec_netns=self.node)
        names = self.sandboxes(tag)
        adds = [timed(rt.add, f"{tag}-{i}", netns.path(n), "eth0", k8s_args(f"{tag}{i}")) for i, n in enumerate(names)]
        dels = [timed(rt.delete, f"{tag}-{i}", netns.path(n), "eth0", k8s_args(f"{tag}{i}"))
                for i, n in enumerate(names)]
        return adds, dels

    def measure_floor(self) -> tuple[list[float], list[float]]:
        mode = get_mode("flannel")
        node = NodeInfo(name="node-1", ip=self.spec.node_network.network_address + 11,
                        pod_cidr=ipaddress.IPv4Network(POD_CIDR))
        prereq = (Bridge(self.node, "cni0", mtu=mode.pod_mtu(self.spec)), Address(self.node, "cni0", "10.244.1.1/24"))
        names = self.sandboxes("floor")
        plans = []
        for i, name in enumerate(names):
            pod = PodInfo(namespace="default", name=f"floor{i}", ip=node.pod_cidr.network_address + 100 + i,
                          node="node-1", netns=name, host_netns=self.node, container_id=f"floor-{i}", ifname="eth0")
            plans.append(mode.plan_pod(self.spec, node, pod))
        adds = [timed(kapply.apply, prereq + plan) for plan in plans]
        dels = [timed(kapply.remove, tuple(s for s in plan if s.netns == self.node)) for plan in plans]
        return adds, dels

    def startup(self) -> dict:
        plugin = os.path.join(PLUGIN_DIR, "overlaynet-flannel")
        env = {**os.environ, "PYTHONPATH": REPO}
        bare, thin, version = [], [], []
        for _ in range(15):
            bare.append(timed(subprocess.run, [sys.executable, "-c", "pass"], check=True, cwd="/"))
            thin.append(timed(subprocess.run, [sys.executable, "-c", "from overlaynet.cni import skel"], check=True,
                              cwd="/", env=env))
            version.append(timed(subprocess.run, [plugin], input=b'{"cniVersion":"1.0.0"}', check=True, cwd="/",
                                 env={**env, "CNI_COMMAND": "VERSION"}, capture_output=True))
        return {"python_bare": summary(bare), "thin_plugin_start": summary(thin), "plugin_version": summary(version),
                "thin_path_imports_ms": import_ms("from overlaynet.cni import skel"),
                "standalone_path_imports_ms": import_ms("from overlaynet.cni import skel, plugins; "
                                                        "import overlaynet.kernel.apply, overlaynet.kernel.observe, "
                                                        "overlaynet.datapath.modes.flannel, pyroute2")}

    def run(self) -> dict:
        kapply.apply((Netns(self.node),))
        # warm-ups outside the measured runs: the agent imports the plugin code on first use
        start_agent(self.cluster, self.socket, os.path.join(self.tmp, "agent.log"))
        self.agent_started = True
        self.pods, pods = 2, self.pods
        self.measure_exec("warm", agent=True)
        self.pods = pods
        floor_add, floor_del = self.measure_floor()
        thin_add, thin_del = self.measure_exec("thin", agent=True)
        alone_add, alone_del = self.measure_exec("alone", agent=False)
        out = {
            "pods": self.pods,
            "add_ms": {"floor": summary(floor_add), "thin": summary(thin_add), "standalone": summary(alone_add)},
            "del_ms": {"floor": summary(floor_del), "thin": summary(thin_del), "standalone": summary(alone_del)},
            "startup_ms": self.startup(),
        }
        paths = ["thin", "standalone"]
        if COMPILED_DIR:
            compiled_add, compiled_del = self.measure_exec("compiled", agent=True, compiled=True)
            out["add_ms"]["compiled"], out["del_ms"]["compiled"] = summary(compiled_add), summary(compiled_del)
            paths.insert(0, "compiled")
        out["ratio_to_floor"] = {
            f"{op}_{path}": round(out[f"{op}_ms"][path]["median"] / out[f"{op}_ms"]["floor"]["median"], 1)
            for op in ("add", "del") for path in paths}
        fastest = out["add_ms"][paths[0]]["median"]
        out["target_add_median_under_10ms"] = fastest < 10
        return out

    def cleanup(self) -> None:
        if self.agent_started:
            stop_agent(self.cluster, self.socket)
        left = [n for n in netns.list_names() if n.startswith(self.prefix)]
        for name in left:
            netns.delete(name)
        netns.wait_gone(left)
        shutil.rmtree(self.tmp, ignore_errors=True)


def import_ms(statement: str) -> float:
    """Sum of ``-X importtime`` self times of a statement's imports (interpreter start-up and
    site, which come first in the output, excluded)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", statement], capture_output=True, text=True,
                          check=True, cwd="/")
    total, after_site = 0, False
    for line in proc.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|( *)(\S+)", line)
        if not match:
            continue
        if after_site:
            total += int(match.group(1))
        elif match.group(3) == "site" and len(match.group(2)) == 1:
            after_site = True
    return round(total / 1000, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=40)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/cni_latency.py: must run as root (it creates network namespaces)", file=sys.stderr)
        return 1
    bench = Bench(args.pods)
    try:
        print(json.dumps(bench.run(), indent=2))
    finally:
        bench.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
