#!/usr/bin/env python3
"""How far one agent process goes: memory at 1000 served pods, probe throughput on a mesh.

Run as root from the repository root:  python3 bench/agent_scale.py [--keys 1000] [--mesh 100]

1. Memory: ``--keys`` namespaces with only ``lo`` up (cheap to create), each served with
   TCP+UDP on one port by one agent; prints the agent's VmRSS (``/proc/PID/status``) before
   and after, and per key. A probe of every key over 127.0.0.1 *inside* its own netns checks
   that each one really answers.
2. Throughput: ``--mesh`` pod namespaces behind one router namespace (routed, proxy ARP),
   each served; then every ordered pair x (tcp, udp, icmp) in one ``probe`` request, as
   ``overlaynet verify`` sends it. Prints probes/s, and the kernel floor measured in the same
   run: the same number of ICMP echoes sent by ``ping`` flood mode from one namespace.

Everything it creates carries the prefix ``t-agent-bench-<random>.`` and is removed at
the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from overlaynet.agent.client import AgentClient, start_agent, stop_agent  # noqa: E402
from overlaynet.kernel import netns  # noqa: E402


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def ip_batch(ns: str | None, commands: list[str]) -> None:
    argv = ["ip"] + (["-n", ns] if ns else []) + ["-batch", "-"]
    subprocess.run(argv, input="\n".join(commands) + "\n", text=True, check=True)


def bench_memory(prefix: str, sock: str, log: str, keys: int, created: list[str]) -> None:
    names = [f"{prefix}m{i:04d}" for i in range(keys)]
    t0 = time.perf_counter()
    for name in names:
        netns.ensure(name)
        created.append(name)
        ip_batch(name, ["link set lo up"])
    print(f"memory: created {keys} namespaces in {time.perf_counter() - t0:.1f} s")
    pid = start_agent("bench", sock, log)
    with AgentClient(sock, cluster="bench") as client:
        idle = rss_kib(pid)
        t0 = time.perf_counter()
        for i, name in enumerate(names):
            client.serve(f"m{i}", name, f"pod-{i}", [(8080, "TCP"), (8080, "UDP")])
        took = time.perf_counter() - t0
        served = rss_kib(pid)
        probes = [
            {"id": i, "netns": name, "dst": "127.0.0.1", "port": 8080, "protocol": proto}
            for i, name in enumerate(names) for proto in ("tcp", "udp")
        ]
        t0 = time.perf_counter()
        results = client.probe(probes, timeout=2.0)
        probe_took = time.perf_counter() - t0
        after_probe = rss_kib(pid)
        failed = [r for r in results if not r["ok"]]
        print(f"memory: served {keys} keys x (TCP+UDP) in {took:.2f} s ({took / keys * 1000:.2f} ms/key)")
        print(f"memory: agent VmRSS idle {idle / 1024:.1f} MiB, with {keys} keys {served / 1024:.1f} MiB "
              f"({(served - idle) / keys:.1f} KiB/key), after probing each {after_probe / 1024:.1f} MiB")
        print(f"memory: {len(probes)} loopback probes in {probe_took:.2f} s, {len(failed)} failed"
              + (f" (first: {failed[0]})" if failed else ""))
        t0 = time.perf_counter()
        for i in range(keys):
            client.unserve(f"m{i}")
        print(f"memory: unserved {keys} keys in {time.perf_counter() - t0:.2f} s")
    stop_agent("bench", sock)


def build_mesh(prefix: str, pods: int, created: list[str]) -> tuple[list[str], list[str]]:
    """``pods`` namespaces behind one router; returns their names and addresses."""
    # Routed, like overlaynet's Calico-like mode: each pod has a /32 and a default route via
    # 169.254.1.1, an address of the router. Not one flat L2 segment: the kernel's ARP table
    # is shared by all namespaces (gc_thresh3 = 1024 entries by default), and 100 pods that
    # all ARP each other (9,900 entries) overflow it ("neighbor table overflow" in dmesg).
    router = f"{prefix}rt"
    netns.ensure(router)
    created.append(router)
    subprocess.run(["ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
    names = [f"{prefix}p{i:03d}" for i in range(pods)]
    addresses = [f"10.98.{(i + 1) // 250}.{(i + 1) % 250 + 1}" for i in range(pods)]
    commands = ["link set lo up", "addr add 169.254.1.1/32 dev lo"]
    for i, (name, address) in enumerate(zip(names, addresses)):
        netns.ensure(name)
        created.append(name)
        commands += [f"link add v{i} type veth peer name eth0 netns {name}", f"link set v{i} up",
                     f"route add {address}/32 dev v{i}"]
    ip_batch(router, commands)
    for name, address in zip(names, addresses):
        ip_batch(name, [f"addr add {address}/32 dev eth0", "link set eth0 up", "link set lo up",
                        "route add 169.254.1.1 dev eth0 scope link", "route add default via 169.254.1.1 dev eth0"])
    return names, addresses


def bench_mesh(prefix: str, sock: str, log: str, pods: int, created: list[str], timeout: float) -> None:
    names, addresses = build_mesh(prefix, pods, created)
    pid = start_agent("bench", sock, log)
    with AgentClient(sock, cluster="bench") as client:
        for i, name in enumerate(names):
            client.serve(f"p{i}", name, f"pod-{i}", [(8080, "TCP"), (8080, "UDP")])
        # warm the neighbour caches, as a cluster that has been up for a while has them
        warm = [{"id": None, "netns": n, "dst": addresses[i - 1], "protocol": "icmp"} for i, n in enumerate(names)]
        client.probe(warm, timeout=timeout)
        probes = [
            {"id": [s, d, proto], "netns": names[s], "dst": addresses[d], "port": 8080, "protocol": proto}
            for s in range(pods) for d in range(pods) if s != d for proto in ("tcp", "udp", "icmp")
        ]
        cpu0 = os.times()
        stat0 = _proc_cpu(pid)
        t0 = time.perf_counter()
        results = client.probe(probes, timeout=timeout)
        took = time.perf_counter() - t0
        agent_cpu = _proc_cpu(pid) - stat0
        failed = [r for r in results if not r["ok"] or r["local"] != addresses[r["id"][0]]
                  or (r["id"][2] != "icmp" and r["seen"] != addresses[r["id"][0]])]
        print(f"mesh: {pods} pods, {len(probes)} probes (tcp, udp, icmp for every ordered pair) "
              f"in {took:.2f} s = {len(probes) / took:,.0f} probes/s; agent CPU {agent_cpu:.2f} s; "
              f"{len(failed)} failed" + (f" (first: {failed[0]})" if failed else ""))
        for proto in ("tcp", "udp", "icmp"):
            rtts = sorted(r["rtt_ms"] for r in results if r["id"][2] == proto)
            print(f"mesh: {proto:4s} rtt_ms p50 {rtts[len(rtts) // 2]:.2f} p99 {rtts[int(len(rtts) * 0.99)]:.2f} max {rtts[-1]:.2f}")
        print(f"mesh: agent VmRSS {rss_kib(pid) / 1024:.1f} MiB; client CPU {os.times().user - cpu0.user:.2f} s user")
    stop_agent("bench", sock)
    # The kernel floor: as many echoes as the mesh sent in total, by ping in flood mode.
    count = len(probes)
    t0 = time.perf_counter()
    subprocess.run(["ip", "netns", "exec", names[0], "ping", "-q", "-f", "-c", str(count), "-w", "60", addresses[1]],
                   check=True, capture_output=True)
    floor = time.perf_counter() - t0
    print(f"mesh: kernel floor: ping -f of {count} echoes (one in flight) {floor:.2f} s = {count / floor:,.0f}/s; "
          f"agent/floor time ratio {took / floor:.2f}")


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1000, help="namespaces served for the memory figure (0: skip)")
    parser.add_argument("--mesh", type=int, default=100, help="pods in the probe mesh (0: skip)")
    parser.add_argument("--timeout", type=float, default=2.0, help="probe timeout, seconds")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("agent_scale: needs root (it creates namespaces)", file=sys.stderr)
        return 2
    prefix = f"t-agent-bench-{secrets.token_hex(3)}."
    created: list[str] = []
    tmp = tempfile.mkdtemp(prefix="overlaynet-agent-bench-")
    sock, log = os.path.join(tmp, "agent.sock"), os.path.join(tmp, "agent.log")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on kill, too
    ok = False
    try:
        if args.keys:
            bench_memory(prefix, sock, log, args.keys, created)
        if args.mesh:
            bench_mesh(prefix, sock, log, args.mesh, created, args.timeout)
        ok = True
    finally:
        stop_agent("bench", sock)
        for name in created:
            netns.delete(name)
        left = netns.wait_gone(created, timeout=10)
        if left:
            print(f"agent_scale: namespaces left behind: {left}", file=sys.stderr)
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"(agent log: {log})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
