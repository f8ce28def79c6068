#!/usr/bin/env python3
"""The datapath: TCP throughput (iperf3) and ping latency pod to pod, against a bare veth pair.

Run as root from the repository root:

    python3 bench/datapath.py [--seconds 3] [--repeat 3] [--quick]

What it measures, in one run:

- **the floor**: two bare namespaces, ``benchdp-a`` and ``benchdp-b``, joined by one veth pair
  (``eth0`` in each, 192.0.2.1 and .2, MTU 1500) made with ``ip``: the cheapest path a packet
  can take between two namespaces. Where a mode's pods get a smaller MTU (flannel: 1450), the
  floor is measured at that MTU too, so the cost of the MTU and the cost of the mode can be
  told apart; the ratios are against the 1500 floor;
- **each mode** (``flannel``: VXLAN, ``calico``: routed), a 2-node cluster of its own
  (``bench-dp-<mode>``, no cluster DNS) with three pods: ``dp-client`` and ``dp-local`` on
  node-1, ``dp-remote`` on node-2; then ``dp-client`` to ``dp-local`` (same node) and
  ``dp-client`` to ``dp-remote`` (across the underlay: through ``flannel.1`` in flannel mode,
  routed in calico mode).

For each path: ``iperf3 -c`` for ``--seconds`` (one TCP stream; the receiver's bits per
second), its server a one-off ``iperf3 -s -1`` in the target namespace; and ``ping -c N -i
0.002 -q`` after a warm-up ping (ARP resolved, routes cached), of which min, avg and mdev are
kept. Both run through ``ip netns exec``, as a user would. The rounds (``--repeat``) measure
the floor and a mode's paths interleaved, each round in the other order, so a noisy machine
hurts both sides alike; each mode's ratios are against the floor measured while its cluster
was up. Medians are reported: throughput ratio = pod / floor (below 1 is slower), latency
ratio = pod / floor (above 1 is slower). ``ping`` prints whole microseconds, so at these
round trips (5-30 us) a latency ratio is good to a few tenths. One JSON object on stdout
(``retransmits`` is the sender's count over all rounds); progress on stderr.

Cluster state lives in ``/var/tmp/bench-dp-state`` (``OVERLAYNET_STATE_DIR`` for this run),
apart from any other cluster. Only one run at a time (a lock in that directory); a run starts
by removing what an earlier run killed with ``kill -9`` left (its own names only, and an iperf3
still running in one of its namespaces, by pid).

What it never does: send traffic outside the namespaces it made, touch a namespace or cluster
that is not its own, or leave one behind: the clusters are brought down and the floor's
namespaces deleted on every way out (errors and SIGTERM included), and the run ends with a
check that none of its namespaces is left.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from overlaynet import names
from overlaynet.api import model
from overlaynet.api.manifests import parse_manifests
from overlaynet.control.manager import ClusterManager
from overlaynet.control.store import Store
from overlaynet.datapath.modes import get_mode
from overlaynet.errors import NotFoundError, OverlaynetError

STATE_DIR = "/var/tmp/bench-dp-state"
NETNS_DIR = "/run/netns"
FLOOR_NETNS = ("benchdp-a", "benchdp-b")
FLOOR_IPS = ("192.0.2.1", "192.0.2.2")  # TEST-NET-1: only ever inside the two namespaces
FLOOR_MTU = 1500
MODES = ("flannel", "calico")
CLUSTER_PREFIX = "bench-dp-"
IPERF_PORT = 5201
PING_INTERVAL_S = 0.002

# (pod, node): the client, a pod beside it, a pod on the other node
PODS = (("dp-client", "node-1"), ("dp-local", "node-1"), ("dp-remote", "node-2"))
PATHS = (("same_node", "dp-local"), ("cross_node", "dp-remote"))


def pods_yaml() -> str:
    """The three pods, placed by ``nodeName`` as a user would pin them."""
    return "".join(f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, labels: {{app: datapath}}}}
spec:
  nodeName: {node}
  containers: [{{name: {pod}, image: agnhost}}]
""" for pod, node in PODS)


def log(message: str) -> None:
    print(f"bench/datapath.py: {message}", file=sys.stderr, flush=True)


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def in_netns(netns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


# --------------------------------------------------------------------------- the floor


def floor_up() -> None:
    a, b = FLOOR_NETNS
    for ns in FLOOR_NETNS:
        ip("netns", "add", ns)
    ip("link", "add", "eth0", "netns", a, "mtu", str(FLOOR_MTU), "type", "veth",
       "peer", "name", "eth0", "netns", b, "mtu", str(FLOOR_MTU))
    for ns, address in zip(FLOOR_NETNS, FLOOR_IPS):
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")


def floor_mtu(mtu: int) -> None:
    for ns in FLOOR_NETNS:
        ip("-n", ns, "link", "set", "eth0", "mtu", str(mtu))


def ours() -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n in FLOOR_NETNS or n.startswith(CLUSTER_PREFIX))
    except FileNotFoundError:
        return []


def stop_leftover_iperf() -> None:
    """End the iperf3 a run killed with ``kill -9`` left in one of our namespaces (by pid)."""
    for ns in ours():
        pids = subprocess.run(["ip", "netns", "pids", ns], check=False, capture_output=True, text=True).stdout
        for pid in pids.split():
            try:
                with open(f"/proc/{pid}/comm") as comm:
                    if comm.read().strip() == "iperf3":
                        os.kill(int(pid), signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass


def floor_down() -> None:
    for ns in FLOOR_NETNS:
        if os.path.exists(os.path.join(NETNS_DIR, ns)):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


# --------------------------------------------------------------------------- one path


def wait_listening(netns: str, server: subprocess.Popen, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"iperf3 -s in {netns} exited: {server.stderr.read().strip()}")
        out = subprocess.run(in_netns(netns, "ss", "-Hltn", f"sport = :{IPERF_PORT}"),
                             check=False, capture_output=True, text=True).stdout
        if out.strip():
            return
        time.sleep(0.02)
    raise RuntimeError(f"iperf3 -s in {netns} not listening on {IPERF_PORT} after {timeout} s")


def iperf(src: str, dst: str, address: str, seconds: int) -> dict:
    """One TCP stream from netns ``src`` to ``address`` in netns ``dst``, for ``seconds``."""
    server = subprocess.Popen(in_netns(dst, "iperf3", "-s", "-1", "-B", address, "-p", str(IPERF_PORT)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(dst, server)
        done = subprocess.run(in_netns(src, "iperf3", "-c", address, "-p", str(IPERF_PORT), "-t", str(seconds),
                                       "-J"), check=False, capture_output=True, text=True, timeout=seconds + 30)
        answer = json.loads(done.stdout or "{}")
        if done.returncode != 0 or "error" in answer:
            raise RuntimeError(f"iperf3 {src} -> {address} failed: {answer.get('error') or done.stderr.strip()}")
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    connected = answer["start"]["connected"][0]
    end = answer["end"]
    return {"gbit_s": end["sum_received"]["bits_per_second"] / 1e9,
            "retransmits": end["sum_sent"].get("retransmits", 0),
            "local_host": connected["local_host"], "remote_host": connected["remote_host"]}


RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


def ping(src: str, address: str, count: int) -> dict:
    """RTT in microseconds of ``count`` echoes every 2 ms, after a warm-up."""
    subprocess.run(in_netns(src, "ping", "-c", "3", "-i", "0.01", "-W", "1", "-q", address),
                   capture_output=True, check=True)
    done = subprocess.run(in_netns(src, "ping", "-c", str(count), "-i", str(PING_INTERVAL_S), "-W", "1", "-q",
                                   address), check=False, capture_output=True, text=True)
    match = RTT.search(done.stdout)
    if done.returncode != 0 or not match or f" {count} received" not in done.stdout:
        raise RuntimeError(f"ping {src} -> {address} failed:\n{done.stdout}{done.stderr}")
    low, avg, _, mdev = (float(x) * 1000 for x in match.groups())
    return {"rtt_min_us": low, "rtt_avg_us": avg, "rtt_mdev_us": mdev}


def measure(src: str, dst: str, address: str, seconds: int, pings: int) -> dict:
    return {**iperf(src, dst, address, seconds), **ping(src, address, pings)}


def summarise(samples: list[dict]) -> dict:
    return {
        "gbit_s": round(statistics.median(s["gbit_s"] for s in samples), 2),
        "gbit_s_samples": [round(s["gbit_s"], 2) for s in samples],
        "retransmits": sum(s["retransmits"] for s in samples),
        "rtt_avg_us": round(statistics.median(s["rtt_avg_us"] for s in samples), 1),
        "rtt_min_us": round(min(s["rtt_min_us"] for s in samples), 1),
        "rtt_mdev_us": round(statistics.median(s["rtt_mdev_us"] for s in samples), 1),
        "client": samples[0]["local_host"], "server": samples[0]["remote_host"],
    }


# --------------------------------------------------------------------------- a mode


def cluster_name(mode: str) -> str:
    return f"{CLUSTER_PREFIX}{mode}"


def cluster_up(manager: ClusterManager, mode: str) -> dict[str, dict]:
    """Bring the mode's cluster up with the three pods; {pod: {"netns", "ip", "node"}}."""
    cluster = cluster_name(mode)
    manager.up(model.build_spec(name=cluster, nodes=2, cni=mode, dns=False))
    manager.apply(cluster, parse_manifests("datapath", text=pods_yaml()))
    out = {}
    for pod in manager.pods(cluster):
        meta, status = pod["metadata"], pod["status"]
        if status.get("phase") != "Running" or not status.get("podIP"):
            raise RuntimeError(f'pod "{meta["name"]}" of cluster "{cluster}" is {status.get("phase")}, not Running')
        out[meta["name"]] = {"netns": names.pod_netns(cluster, meta["namespace"], meta["name"]),
                             "ip": status["podIP"], "node": pod["spec"].get("nodeName")}
    for pod, node in PODS:
        if out.get(pod, {}).get("node") != node:
            raise RuntimeError(f'pod "{pod}" of cluster "{cluster}" is not on {node}: {out.get(pod)}')
    return out


def measure_mode(manager: ClusterManager, mode: str, seconds: int, repeat: int, pings: int) -> dict:
    spec_mtu = get_mode(mode).pod_mtu(model.build_spec(name=cluster_name(mode), nodes=2, cni=mode, dns=False))
    log(f"{mode}: up (2 nodes, 3 pods, pod MTU {spec_mtu})")
    pods = cluster_up(manager, mode)
    client = pods["dp-client"]
    floor_mtus = sorted({FLOOR_MTU, spec_mtu}, reverse=True)
    # (key, measurement) in the order of the first round; later rounds alternate it
    cases = [(f"floor_mtu{mtu}", mtu, (FLOOR_NETNS[0], FLOOR_NETNS[1], FLOOR_IPS[1])) for mtu in floor_mtus]
    cases += [(key, None, (client["netns"], pods[target]["netns"], pods[target]["ip"])) for key, target in PATHS]
    samples: dict[str, list[dict]] = {key: [] for key, _, _ in cases}
    for round_ in range(repeat):
        for key, mtu, (src, dst, address) in (cases if round_ % 2 == 0 else list(reversed(cases))):
            if mtu is not None:
                floor_mtu(mtu)
            log(f"{mode}: round {round_ + 1}/{repeat}: {key}")
            samples[key].append(measure(src, dst, address, seconds, pings))
    floor_mtu(FLOOR_MTU)
    out: dict = {"cluster": cluster_name(mode), "pod_mtu": spec_mtu}
    for key, _, _ in cases:
        out[key] = summarise(samples[key])
    floor = out[f"floor_mtu{FLOOR_MTU}"]
    out["floor"] = floor
    for key, target in PATHS:
        case = out[key]
        if case["client"] != client["ip"] or case["server"] != pods[target]["ip"]:  # pod to pod: no NAT
            raise RuntimeError(f"{mode} {key}: iperf3 saw {case['client']} -> {case['server']}, "
                               f"not {client['ip']} -> {pods[target]['ip']}")
        case["throughput_ratio"] = round(case["gbit_s"] / floor["gbit_s"], 2)
        case["latency_ratio"] = round(case["rtt_avg_us"] / floor["rtt_avg_us"], 2)
    del out[f"floor_mtu{FLOOR_MTU}"]
    if spec_mtu != FLOOR_MTU:
        out["floor_at_pod_mtu"] = out.pop(f"floor_mtu{spec_mtu}")
    return out


def cluster_down(manager: ClusterManager, mode: str) -> None:
    """``down`` of the mode's cluster; one that is not there (any more) is not an error."""
    try:
        manager.down(cluster_name(mode))
    except NotFoundError:
        pass


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=None, help="iperf3 duration of each measurement (default 3; "
                                                                   "1 with --quick)")
    parser.add_argument("--repeat", type=int, default=None, help="rounds per mode (default 3; 1 with --quick)")
    parser.add_argument("--pings", type=int, default=None, help="echoes per measurement (default 200; 50 with --quick)")
    parser.add_argument("--mode", action="append", choices=MODES, help="only this mode (repeatable)")
    parser.add_argument("--quick", action="store_true", help="one short round per mode (about 15 s)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (1 if args.quick else 3)
    repeat = args.repeat or (1 if args.quick else 3)
    pings = args.pings or (50 if args.quick else 200)
    if os.geteuid() != 0:
        print("bench/datapath.py: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    for tool in ("iperf3", "ping", "ss"):
        if shutil.which(tool) is None:
            print(f"bench/datapath.py: {tool} is not installed (scripts/setup installs it)", file=sys.stderr)
            return 2
    os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
    os.environ["OVERLAYNET_STATE_DIR"] = STATE_DIR  # for everything the clusters start
    with open(os.path.join(STATE_DIR, "datapath.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"bench/datapath.py: another run holds {STATE_DIR}/datapath.lock", file=sys.stderr)
            return 2
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally in run() runs
        return run(args.mode or list(MODES), seconds, repeat, pings)


def run(modes: list[str], seconds: int, repeat: int, pings: int) -> int:
    manager = ClusterManager(Store(STATE_DIR))
    result: dict = {"cpus": os.cpu_count(), "seconds": seconds, "repeat": repeat, "pings": pings,
                    "ping_interval_s": PING_INTERVAL_S, "floor_mtu": FLOOR_MTU, "modes": {}}
    try:
        left = ours()
        if left:  # an earlier run killed before its finally: only our own names
            log(f"removing what an earlier run left: {' '.join(left)}")
            stop_leftover_iperf()
        for mode in MODES:
            cluster_down(manager, mode)
        floor_down()
        floor_up()
        for mode in modes:
            try:
                result["modes"][mode] = measure_mode(manager, mode, seconds, repeat, pings)
            finally:
                log(f"{mode}: down")
                cluster_down(manager, mode)
    finally:
        for mode in MODES:
            try:
                cluster_down(manager, mode)
            except (OverlaynetError, OSError) as exc:  # keep going: the floor's namespaces must go too
                log(f"down of {cluster_name(mode)} failed: {exc}")
        floor_down()
        left = ours()
        if left:
            log(f"left behind: {' '.join(left)}")
    if left:
        return 1
    print(json.dumps(result, indent=2))
    return 0

if __name__ == "__main__":
    sys.exit(main())
