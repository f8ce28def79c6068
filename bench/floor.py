#!/usr/bin/env python3
"""The kernel floor for bring-up and teardown, and overlaynet's apply() measured against it.

What this owns: one description of a Flannel-like cluster (an underlay bridge, N node
namespaces with eth0 / cni0 / flannel.1 and the per-peer neigh + FDB + route trio, P pods per
node on cni0), built two ways in the same run:

- the floor: raw iproute2 batch files, the cheapest way the kernel can be driven from the
  command line (limits.md): one ``ip -batch`` for the initial namespace (``netns add`` for every
  namespace and every veth pair created straight into its two namespaces), then one
  ``ip -n <ns> -batch`` per namespace (and one ``bridge -n <node> -batch`` per node for the FDB,
  which ``ip`` cannot program). ``ip_forward`` is written in-process after setns(2): iproute2
  has no sysctl verb, and a process per node would only make the floor slower;
- overlaynet: the same objects as a hand-built ``Plan`` given to
  ``overlaynet.kernel.apply.apply`` and ``remove``.

Teardown deletes pods first and the underlay last (the other order makes the kernel ~7x
slower to destroy the lot), and is timed until the kernel has really destroyed the
namespaces, not just until their names are gone: before the timed part each namespace gets a peer id (``ip netns set <ns>
auto``) in the initial namespace, and the kernel drops that id only when it destroys the
namespace (the work it does ~0.1 s after ``ip netns del`` returns).

What it never does: touch a namespace outside its own prefix (``bench-floor-<pid>.`` by
default), or leave one behind — every path out of ``measure_*`` deletes what it made.

    python3 bench/floor.py --nodes 10 --pods-per-node 20 [--repeat 3] [--floor-only]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from overlaynet import names  # noqa: E402  (pure: no kernel access, no pyroute2)
from overlaynet.datapath import plan as p  # noqa: E402

NETNS_DIR = "/run/netns"
CLUSTER = "bench"
VNI = 1
PORT = 8472
POD_MTU = 1450
K8S_NAMESPACE = "default"


# --------------------------------------------------------------------------- description


@dataclass(frozen=True)
class Pod:
    netns: str
    host_veth: str
    ip: str  # 10.244.N.M/24


@dataclass(frozen=True)
class Node:
    name: str
    netns: str
    port: str  # underlay side of the node's eth0
    ip: str  # 172.20.0.X
    subnet: str  # 10.244.N.0/24
    vtep_mac: str
    pods: tuple[Pod, ...]

    @property
    def gateway(self) -> str:  # 10.244.N.1
        return self.subnet.rsplit(".", 1)[0] + ".1"

    @property
    def vtep_ip(self) -> str:  # 10.244.N.0
        return self.subnet.split("/")[0]


@dataclass(frozen=True)
class Topology:
    prefix: str
    underlay: str
    nodes: tuple[Node, ...]

    def namespaces(self) -> list[str]:
        out = [self.underlay]
        for node in self.nodes:
            out.append(node.netns)
        for node in self.nodes:
            out.extend(pod.netns for pod in node.pods)
        return out

    @property
    def pod_count(self) -> int:
        return sum(len(node.pods) for node in self.nodes)


def topology(nodes: int, pods_per_node: int, prefix: str) -> Topology:
    if not 1 <= nodes <= 200:
        raise ValueError("--nodes must be 1-200")
    if not 0 <= pods_per_node <= 250:
        raise ValueError("--pods-per-node must be 0-250")
    out = []
    for i in range(nodes):
        node = f"node-{i + 1}"
        pods = []
        for j in range(pods_per_node):
            pod = f"pod-{i + 1}-{j + 1}"
            pods.append(Pod(
                netns=f"{prefix}pod.{K8S_NAMESPACE}.{pod}",
                host_veth=names.pod_host_veth(f"{K8S_NAMESPACE}/{pod}"),
                ip=f"10.244.{i}.{j + 2}/24",
            ))
        out.append(Node(
            name=node,
            netns=f"{prefix}node.{node}",
            port=names.node_underlay_port(node),
            ip=f"172.20.0.{11 + i}",
            subnet=f"10.244.{i}.0/24",
            vtep_mac=names.derived_mac(prefix, node),
            pods=tuple(pods),
        ))
    return Topology(prefix=prefix, underlay=f"{prefix}underlay", nodes=tuple(out))


def build_plan(topo: Topology) -> p.Plan:
    """The same objects as the floor builds, as overlaynet steps, in a planner's order."""
    vxlan = names.vxlan_device(VNI)
    steps: list[p.Step] = [
        p.Netns(topo.underlay),
        p.Bridge(topo.underlay, names.UNDERLAY_BRIDGE),
    ]
    for node in topo.nodes:
        steps += [
            p.Netns(node.netns),
            p.Sysctl(node.netns, "net.ipv4.ip_forward", "1"),
            p.VethPair(topo.underlay, node.port, node.netns, names.NODE_UPLINK,
                       master=names.UNDERLAY_BRIDGE),
            p.Address(node.netns, names.NODE_UPLINK, f"{node.ip}/24"),
            p.Bridge(node.netns, "cni0", mtu=POD_MTU),
            p.Address(node.netns, "cni0", f"{node.gateway}/24"),
            p.Vxlan(node.netns, vxlan, vni=VNI, local=node.ip, dev=names.NODE_UPLINK,
                    port=PORT, mtu=POD_MTU, mac=node.vtep_mac),
            p.Address(node.netns, vxlan, f"{node.vtep_ip}/32"),
        ]
    for node in topo.nodes:
        for peer in topo.nodes:
            if peer is node:
                continue
            steps += [
                p.Neighbour(node.netns, vxlan, peer.vtep_ip, peer.vtep_mac),
                p.FdbEntry(node.netns, vxlan, peer.vtep_mac, peer.ip),
                p.Route(node.netns, peer.subnet, gateway=peer.vtep_ip, dev=vxlan, onlink=True),
            ]
    for node in topo.nodes:
        for pod in node.pods:
            steps += [
                p.Netns(pod.netns),
                p.VethPair(node.netns, pod.host_veth, pod.netns, names.POD_INTERFACE,
                           mtu=POD_MTU, master="cni0", hairpin=True),
                p.Address(pod.netns, names.POD_INTERFACE, pod.ip),
                p.Route(pod.netns, "0.0.0.0/0", gateway=node.gateway, dev=names.POD_INTERFACE),
            ]
    return tuple(steps)


# --------------------------------------------------------------------------- the floor


def floor_batches(topo: Topology) -> tuple[str, list[tuple[str, str, str]]]:
    """(initial-namespace batch, [(tool, netns, batch)] in the order they must run)."""
    vxlan = names.vxlan_device(VNI)
    init = [f"netns add {ns}" for ns in topo.namespaces()]
    for node in topo.nodes:
        init.append(f"link add {node.port} netns {topo.underlay} up type veth "
                    f"peer name {names.NODE_UPLINK} netns {node.netns}")
        for pod in node.pods:
            init.append(f"link add {pod.host_veth} netns {node.netns} mtu {POD_MTU} up type veth "
                        f"peer name {names.POD_INTERFACE} netns {pod.netns} mtu {POD_MTU}")
    per_ns: list[tuple[str, str, str]] = []

    lines = ["link set lo up", f"link add {names.UNDERLAY_BRIDGE} up type bridge"]
    lines += [f"link set {node.port} master {names.UNDERLAY_BRIDGE}" for node in topo.nodes]
    per_ns.append(("ip", topo.underlay, "\n".join(lines)))

    for node in topo.nodes:
        lines = [
            "link set lo up",
            f"link set {names.NODE_UPLINK} up",
            f"addr add {node.ip}/24 dev {names.NODE_UPLINK}",
            f"link add cni0 mtu {POD_MTU} up type bridge",
            f"addr add {node.gateway}/24 dev cni0",
            f"link add {vxlan} address {node.vtep_mac} mtu {POD_MTU} up type vxlan id {VNI} "
            f"local {node.ip} dev {names.NODE_UPLINK} dstport {PORT} nolearning",
            f"addr add {node.vtep_ip}/32 dev {vxlan}",
        ]
        for pod in node.pods:
            lines.append(f"link set {pod.host_veth} master cni0")
            lines.append(f"link set {pod.host_veth} type bridge_slave hairpin on")
        fdb = []
        for peer in topo.nodes:
            if peer is node:
                continue
            lines.append(f"neigh replace {peer.vtep_ip} lladdr {peer.vtep_mac} dev {vxlan} nud permanent")
            fdb.append(f"fdb append {peer.vtep_mac} dev {vxlan} dst {peer.ip} self permanent")
            lines.append(f"route replace {peer.subnet} via {peer.vtep_ip} dev {vxlan} onlink")
        per_ns.append(("ip", node.netns, "\n".join(lines)))
        if fdb:
            per_ns.append(("bridge", node.netns, "\n".join(fdb)))

    for node in topo.nodes:
        for pod in node.pods:
            lines = [
                "link set lo up",
                f"link set {names.POD_INTERFACE} up",
                f"addr add {pod.ip} dev {names.POD_INTERFACE}",
                f"route add default via {node.gateway} dev {names.POD_INTERFACE}",
            ]
            per_ns.append(("ip", pod.netns, "\n".join(lines)))
    return "\n".join(init), per_ns


def _run_batch(argv: list[str], text: str) -> None:
    proc = subprocess.run(argv + ["-batch", "-"], input=text.encode(), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -batch failed: {proc.stderr.decode().strip()}")


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def _write_sysctl_in(netns_name: str, key: str, value: str) -> None:
    """setns(2) the calling thread into the namespace, write /proc/sys, come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(os.path.join(NETNS_DIR, netns_name), os.O_RDONLY)
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns_name}")
        try:
            with open("/proc/sys/" + key.replace(".", "/"), "w") as fh:
                fh.write(value)
        finally:
            if _libc.setns(home, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(target)
        os.close(home)


def floor_up(topo: Topology) -> None:
    init, per_ns = floor_batches(topo)
    _run_batch(["ip"], init)
    for tool, ns, text in per_ns:
        _run_batch([tool, "-n", ns], text)
    for node in topo.nodes:
        _write_sysctl_in(node.netns, "net.ipv4.ip_forward", "1")


def floor_down(topo: Topology) -> None:
    # Pods first, the underlay last: deleting a node's namespace before its pods' makes the
    # kernel take ~7x longer to destroy the lot (0.23 s against 0.03 s for 10 x 20 here).
    _run_batch(["ip"], "\n".join(f"netns del {ns}" for ns in reversed(topo.namespaces())))


# --------------------------------------------------------------------------- shared helpers


def ours(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


class DestructionWatch:
    """Learns when the kernel has really destroyed a set of namespaces.

    Each namespace gets a peer id in the initial namespace (``ip netns set <ns> auto``); a
    netlink socket subscribed to RTNLGRP_NSID then receives RTM_DELNSID for each id as the
    kernel destroys the namespace. (``ip netns list-id`` is no use here: on this iproute2 its
    dump stops after ~130 ids.) Set up outside the timed section; ``wait`` inside it.
    """

    _SOL_NETLINK = 270
    _NETLINK_ADD_MEMBERSHIP = 1
    _RTNLGRP_NSID = 28
    _RTM_DELNSID = 89
    _NETNSA_NSID = 1

    def __init__(self, namespaces: list[str]) -> None:
        # -force: a namespace that has a peer id already keeps it (and is read back below).
        subprocess.run(["ip", "-force", "-batch", "-"], capture_output=True,
                       input="\n".join(f"netns set {ns} auto" for ns in namespaces).encode())
        wanted = set(namespaces)
        self.ids: set[int] = set()
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():  # "<name> (id: <n>)"
            name, _, rest = line.partition(" (id: ")
            if name in wanted and rest:
                self.ids.add(int(rest.rstrip(")")))
        if len(self.ids) != len(wanted):
            raise RuntimeError(f"only {len(self.ids)} of {len(wanted)} namespaces got a peer id")
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))
        self.sock.setsockopt(self._SOL_NETLINK, self._NETLINK_ADD_MEMBERSHIP, self._RTNLGRP_NSID)

    def _deleted_ids(self, data: bytes) -> list[int]:
        out, off = [], 0
        while off + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, off)
            if length < 16:
                break
            if kind == self._RTM_DELNSID:
                pos, end = off + 16 + 4, off + length  # nlmsghdr, rtgenmsg (padded to 4)
                while pos + 4 <= end:
                    alen, atype = struct.unpack_from("=HH", data, pos)
                    if alen < 4:
                        break
                    if atype == self._NETNSA_NSID:
                        out.append(struct.unpack_from("=i", data, pos + 4)[0])
                    pos += (alen + 3) & ~3
            off += (length + 3) & ~3
        return out

    def wait(self, timeout: float = 60.0) -> None:
        left = set(self.ids)
        deadline = time.monotonic() + timeout
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{len(left)} namespaces not destroyed after {timeout}s")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            left.difference_update(self._deleted_ids(data))

    def close(self) -> None:
        self.sock.close()


def ping(topo: Topology) -> None:
    """One cross-node ping (pod 1 of node 1 -> pod 1 of the last node), or a same-node one."""
    pods = [pod for node in topo.nodes for pod in node.pods]
    if not pods:
        return
    src = topo.nodes[0].pods[0] if topo.nodes[0].pods else pods[0]
    dst_node = topo.nodes[-1] if topo.nodes[-1].pods else topo.nodes[0]
    dst = dst_node.pods[-1] if dst_node.pods else src
    proc = subprocess.run(
        ["ip", "netns", "exec", src.netns, "ping", "-c1", "-W2", dst.ip.split("/")[0]],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        # The neighbour table is one for the whole host (gc_thresh3, 1024 by default): when
        # other work has filled it, ping fails with "No buffer space available".
        with open("/proc/net/stat/arp_cache") as fh:
            entries = int(fh.read().splitlines()[1].split()[0], 16)
        raise RuntimeError(f"ping {src.netns} -> {dst.ip} failed:\n{proc.stdout}{proc.stderr}"
                           f"(host neighbour entries: {entries})")


def cleanup(prefix: str) -> None:
    left = ours(prefix)
    if left:
        subprocess.run(["ip", "-force", "-batch", "-"],
                       input="\n".join(f"netns del {ns}" for ns in left).encode(),
                       capture_output=True)


def _measure(topo: Topology, up, down) -> tuple[float, float]:
    if ours(topo.prefix):
        raise RuntimeError(f"namespaces with prefix {topo.prefix!r} already exist")
    try:
        t0 = time.perf_counter()
        up()
        t_up = time.perf_counter() - t0
        ping(topo)
        watch = DestructionWatch(topo.namespaces())
        try:
            t0 = time.perf_counter()
            down()
            watch.wait()
            t_down = time.perf_counter() - t0
        finally:
            watch.close()
        left = ours(topo.prefix)
        if left:
            raise RuntimeError(f"teardown left {len(left)} namespaces, e.g. {left[0]}")
        return t_up, t_down
    finally:
        cleanup(topo.prefix)


# --------------------------------------------------------------------------- public


def measure_floor(nodes: int, pods_per_node: int, prefix: str) -> dict:
    """Build and tear down the cluster with raw iproute2 batches; seconds for each."""
    topo = topology(nodes, pods_per_node, prefix)
    t_up, t_down = _measure(topo, lambda: floor_up(topo), lambda: floor_down(topo))
    return {"floor_up_s": round(t_up, 4), "floor_down_s": round(t_down, 4), "pods": topo.pod_count}


def measure_apply(nodes: int, pods_per_node: int, prefix: str) -> dict:
    """Build and tear down the same cluster with overlaynet.kernel.apply; seconds for each."""
    from overlaynet.kernel import apply as kapply  # imported here: the floor needs no pyroute2

    topo = topology(nodes, pods_per_node, prefix)
    plan = build_plan(topo)
    t_up, t_down = _measure(topo, lambda: kapply.apply(plan), lambda: kapply.remove(plan))
    return {"apply_up_s": round(t_up, 4), "apply_down_s": round(t_down, 4),
            "pods": topo.pod_count, "steps": len(plan)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--pods-per-node", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; medians are reported")
    parser.add_argument("--floor-only", action="store_true", help="skip overlaynet's apply()")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between measurements")
    parser.add_argument("--prefix", default=f"bench-floor-{os.getpid()}.")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/floor.py: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    if not args.prefix.endswith("."):
        args.prefix += "."

    floors, applies = [], []
    # Importing pyroute2 (~0.1 s, once per process) stays out of the timed sections.
    if not args.floor_only:
        from pyroute2 import IPRoute

        IPRoute(groups=0).close()
    for i in range(args.repeat):
        # Interleaved, and each side first in turn, so a noisy neighbour hurts both alike. The
        # pause lets the kernel finish destroying the last run's namespaces (work it does after
        # they are unreachable, which the timed teardown does not wait for) before the next.
        order = ["floor", "apply"] if i % 2 == 0 else ["apply", "floor"]
        for side in order:
            if side == "floor":
                floors.append(measure_floor(args.nodes, args.pods_per_node, args.prefix))
            elif not args.floor_only:
                applies.append(measure_apply(args.nodes, args.pods_per_node, args.prefix))
            time.sleep(args.pause)

    def median(rows: list[dict], key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 4)

    result: dict = {
        "floor_up_s": median(floors, "floor_up_s"),
        "floor_down_s": median(floors, "floor_down_s"),
        "pods": floors[0]["pods"],
        "nodes": args.nodes,
        "repeat": args.repeat,
    }
    if applies:
        result.update({
            "apply_up_s": median(applies, "apply_up_s"),
            "apply_down_s": median(applies, "apply_down_s"),
            "steps": applies[0]["steps"],
        })
        result["up_ratio"] = round(result["apply_up_s"] / result["floor_up_s"], 3)
        result["down_ratio"] = round(result["apply_down_s"] / result["floor_down_s"], 3)
        result["runs"] = {"floor": floors, "apply": applies}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
