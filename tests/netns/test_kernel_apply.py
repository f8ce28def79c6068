"""overlaynet.kernel.apply and .observe against real namespaces (root; CI runs as root).

Each test builds, by hand with the plan dataclasses, the two-node Flannel topology of
reference/flannel.md §1-2 under a prefix of its own (``t-apply-<random>.``) and removes every
namespace with that prefix when it ends, whatever happened. Real packets prove the datapath:
a ping from a pod on node 1 to a pod on node 2 crosses flannel.1 (VXLAN, UDP 8472).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
import uuid
from dataclasses import dataclass

import pytest

from overlaynet import names
from overlaynet.datapath.plan import (
    Address,
    Bridge,
    FdbEntry,
    Neighbour,
    Netns,
    Plan,
    Route,
    Sysctl,
    VethPair,
    Vxlan,
)
from overlaynet.errors import HostError, InvalidInput, KernelError
from overlaynet.kernel import apply as kapply
from overlaynet.kernel import netns, observe

VXLAN = "flannel.1"


@dataclass
class Lab:
    prefix: str
    underlay: str
    nodes: list[str]  # node namespaces
    pods: list[str]  # pod namespaces, one per node
    pod_ips: list[str]
    node_ips: list[str]
    macs: list[str]  # VTEP MACs
    host_veths: list[str]
    base: Plan  # underlay + nodes (no peers)
    peers: list[Plan]  # per node: the neigh / fdb / route trio for the other node
    pod_steps: Plan

    @property
    def plan(self) -> Plan:
        return self.base + self.peers[0] + self.peers[1] + self.pod_steps


def build_lab(prefix: str) -> Lab:
    underlay = f"{prefix}underlay"
    nodes = [f"{prefix}node.node-1", f"{prefix}node.node-2"]
    node_ips = ["172.20.0.11", "172.20.0.12"]
    subnets = ["10.244.0.0/24", "10.244.1.0/24"]
    vteps = ["10.244.0.0", "10.244.1.0"]
    gateways = ["10.244.0.1", "10.244.1.1"]
    macs = [names.derived_mac(prefix, "node-1"), names.derived_mac(prefix, "node-2")]
    pods = [f"{prefix}pod.default.pod-a", f"{prefix}pod.default.pod-b"]
    pod_ips = ["10.244.0.2", "10.244.1.2"]
    host_veths = [names.pod_host_veth("default/pod-a"), names.pod_host_veth("default/pod-b")]

    base: list = [Netns(underlay), Bridge(underlay, names.UNDERLAY_BRIDGE)]
    for i, ns in enumerate(nodes):
        base += [
            Netns(ns),
            VethPair(underlay, f"node-{i + 1}", ns, "eth0", master=names.UNDERLAY_BRIDGE),
            Address(ns, "eth0", f"{node_ips[i]}/24"),
            Sysctl(ns, "net.ipv4.ip_forward", "1"),
            Bridge(ns, "cni0", mtu=1450),
            Address(ns, "cni0", f"{gateways[i]}/24"),
            Vxlan(ns, VXLAN, vni=1, local=node_ips[i], dev="eth0", port=8472, mtu=1450, mac=macs[i]),
            Address(ns, VXLAN, f"{vteps[i]}/32"),
        ]
    peers = []
    for i, ns in enumerate(nodes):
        j = 1 - i  # Flannel's order: neighbour, then FDB, then the route (added last)
        peers.append((
            Neighbour(ns, VXLAN, ip=vteps[j], mac=macs[j]),
            FdbEntry(ns, VXLAN, mac=macs[j], dst=node_ips[j]),
            Route(ns, subnets[j], gateway=vteps[j], dev=VXLAN, onlink=True),
        ))
    pod_steps: list = []
    for i, ns in enumerate(pods):
        pod_steps += [
            Netns(ns),
            VethPair(nodes[i], host_veths[i], ns, "eth0", mtu=1450, master="cni0", hairpin=True),
            Address(ns, "eth0", f"{pod_ips[i]}/24"),
            Route(ns, "0.0.0.0/0", gateway=gateways[i], dev="eth0"),
        ]
    return Lab(prefix, underlay, nodes, pods, pod_ips, node_ips, macs, host_veths,
               tuple(base), peers, tuple(pod_steps))


def ours(prefix: str) -> list[str]:
    return [n for n in netns.list_names() if n.startswith(prefix)]


# Sysctls these tests write inside namespaces. Were a write to land in the host's namespace
# instead, the test fails and the host gets its value back (ip_forward first: turning it off
# also resets conf/all/accept_redirects).
HOST_SYSCTLS = ("net/ipv4/ip_forward", "net/ipv4/ip_default_ttl", "net/ipv4/conf/all/accept_redirects",
                "net/ipv4/conf/default/forwarding")


def _read_host(key: str) -> str:
    with open(f"/proc/sys/{key}") as fh:
        return fh.read().strip()


@pytest.fixture(autouse=True)
def host_sysctls_untouched():
    before = {key: _read_host(key) for key in HOST_SYSCTLS}
    yield
    changed = {key: _read_host(key) for key in HOST_SYSCTLS if _read_host(key) != before[key]}
    for key in HOST_SYSCTLS:
        if key in changed:
            with open(f"/proc/sys/{key}", "w") as fh:
                fh.write(before[key])
    assert not changed, f"host sysctls changed (restored): {changed}, were {before}"


@pytest.fixture
def prefix():
    """A namespace prefix no one else uses; every namespace under it is deleted at the end."""
    value = f"t-apply-{uuid.uuid4().hex[:8]}."
    yield value
    left = ours(value)
    for name in left:
        netns.delete(name)
    netns.wait_gone(left)


@pytest.fixture
def lab(prefix) -> Lab:
    built = build_lab(prefix)
    kapply.apply(built.plan)
    return built


def run(*argv: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=check)


def in_ns(ns: str, *argv: str) -> subprocess.CompletedProcess:
    return run("ip", "netns", "exec", ns, *argv)


def ping(src_ns: str, dst: str, *extra: str) -> subprocess.CompletedProcess:
    return in_ns(src_ns, "ping", "-c1", "-W2", *extra, dst)


def why(result: subprocess.CompletedProcess) -> str:
    """A failed ping's output, and the host-wide neighbour table's fill: the table is shared
    by every namespace (gc_thresh3, 1024 by default), and when other work on the host has
    filled it, ping fails with "No buffer space available" whatever this code did."""
    with open("/proc/net/stat/arp_cache") as fh:
        entries = int(fh.read().splitlines()[1].split()[0], 16)
    with open("/proc/sys/net/ipv4/neigh/default/gc_thresh3") as fh:
        limit = fh.read().strip()
    return f"{result.stdout}{result.stderr}\n(host neighbour entries: {entries}, gc_thresh3: {limit})"


def tx_packets(ns: str, dev: str) -> int:
    out = run("ip", "-n", ns, "-s", "-j", "link", "show", dev, check=True).stdout
    return json.loads(out)[0]["stats64"]["tx"]["packets"]


def snapshot(lab: Lab) -> dict:
    """Everything observe_* reports for every namespace of the lab."""
    state = {}
    for ns in [lab.underlay, *lab.nodes, *lab.pods]:
        state[ns] = {
            "links": sorted((link for link in observe.observe_links(ns)), key=lambda l: l["name"]),
            "addresses": sorted(observe.observe_addresses(ns), key=lambda a: (a["dev"], a["cidr"])),
            "routes": observe.observe_routes(ns),
            "neighbours": [n for n in observe.observe_neighbours(ns) if n["state"] == "PERMANENT"],
        }
        if ns in lab.nodes:
            state[ns]["fdb"] = observe.observe_fdb(ns, VXLAN)
    for links in (s["links"] for s in state.values()):
        for link in links:
            link.pop("state")  # operstate may move from UNKNOWN/DOWN to UP as carriers settle
    return state


# --------------------------------------------------------------------------- datapath


def test_pod_to_pod_ping_crosses_vxlan(lab):
    before = tx_packets(lab.nodes[0], VXLAN)
    result = ping(lab.pods[0], lab.pod_ips[1])
    assert result.returncode == 0, why(result)
    assert tx_packets(lab.nodes[0], VXLAN) > before, "the echo request did not leave through flannel.1"
    back = ping(lab.pods[1], lab.pod_ips[0])
    assert back.returncode == 0, why(back)


def test_pod_mtu_1450_allows_1422_byte_payload_and_not_1423(lab):
    fits = ping(lab.pods[0], lab.pod_ips[1], "-M", "do", "-s", "1422")
    assert fits.returncode == 0, why(fits)
    too_big = ping(lab.pods[0], lab.pod_ips[1], "-M", "do", "-s", "1423")
    assert too_big.returncode != 0
    assert "1450" in too_big.stdout + too_big.stderr  # "message too long, mtu=1450"


# --------------------------------------------------------------------------- what the kernel shows


def test_vxlan_device_is_flannels(lab):
    out = run("ip", "-n", lab.nodes[0], "-d", "link", "show", VXLAN, check=True).stdout
    assert "vxlan id 1 local 172.20.0.11 dev eth0" in out
    assert "dstport 8472" in out
    assert "nolearning" in out
    assert "mtu 1450" in out
    assert lab.macs[0] in out
    (link,) = [l for l in observe.observe_links(lab.nodes[0]) if l["name"] == VXLAN]
    assert {k: link[k] for k in ("kind", "vni", "local", "dev", "port", "learning", "mtu", "mac", "up")} == {
        "kind": "vxlan", "vni": 1, "local": "172.20.0.11", "dev": "eth0", "port": 8472,
        "learning": False, "mtu": 1450, "mac": lab.macs[0], "up": True,
    }


def test_links_bridges_mtus_and_masters(lab):
    node = {l["name"]: l for l in observe.observe_links(lab.nodes[0])}
    assert node["cni0"]["kind"] == "bridge" and node["cni0"]["mtu"] == 1450
    veth = node[lab.host_veths[0]]
    assert (veth["kind"], veth["mtu"], veth["master"], veth["up"]) == ("veth", 1450, "cni0", True)
    assert node["eth0"]["mtu"] == 1500 and node["eth0"]["master"] is None
    assert node["lo"]["up"]
    pod = {l["name"]: l for l in observe.observe_links(lab.pods[0])}
    assert (pod["eth0"]["mtu"], pod["eth0"]["up"]) == (1450, True)
    assert pod["lo"]["up"]
    underlay = {l["name"]: l for l in observe.observe_links(lab.underlay)}
    assert underlay["node-1"]["master"] == names.UNDERLAY_BRIDGE
    assert underlay["node-2"]["master"] == names.UNDERLAY_BRIDGE
    detail = run("ip", "-n", lab.nodes[0], "-d", "link", "show", lab.host_veths[0], check=True).stdout
    assert "hairpin on" in detail
    # cni0's MTU is the plan's, not its ports' minimum: a 1400-byte port does not lower it.
    run("ip", "-n", lab.nodes[0], "link", "add", "tmp-a", "mtu", "1400", "type", "veth", "peer", "name", "tmp-b",
        check=True)
    run("ip", "-n", lab.nodes[0], "link", "set", "tmp-a", "master", "cni0", check=True)
    node = {l["name"]: l for l in observe.observe_links(lab.nodes[0])}
    assert node["cni0"]["mtu"] == 1450


def test_observed_routes_neighbours_fdb_and_addresses(lab):
    node1, node2 = lab.nodes
    routes = observe.observe_routes(node1)
    peer_route = [r for r in routes if r["dst"] == "10.244.1.0/24"]
    assert peer_route == [{
        "dst": "10.244.1.0/24", "gateway": "10.244.1.0", "dev": VXLAN, "onlink": True,
        "scope": "universe", "type": "unicast", "proto": "boot", "src": None, "metric": None,
        "linkdown": False,
    }]
    lines = observe.format_routes(routes).splitlines()
    assert "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink" in lines
    assert "10.244.0.0/24 dev cni0 proto kernel scope link src 10.244.0.1" in lines
    # Rendered exactly as `ip route` prints them.
    ip_route = [line.strip() for line in run("ip", "-n", node1, "route", check=True).stdout.splitlines()]
    assert lines == ip_route
    pod_routes = observe.format_routes(observe.observe_routes(lab.pods[1])).splitlines()
    assert pod_routes[0] == "default via 10.244.1.1 dev eth0"

    assert observe.observe_neighbours(node1, VXLAN) == [
        {"ip": "10.244.1.0", "mac": lab.macs[1], "dev": VXLAN, "state": "PERMANENT"}]
    assert observe.observe_fdb(node1, VXLAN) == [
        {"mac": lab.macs[1], "dst": "172.20.0.12", "flags": ["self", "permanent"]}]
    fdb = run("bridge", "-n", node1, "fdb", "show", "dev", VXLAN, check=True).stdout
    assert f"{lab.macs[1]} dst 172.20.0.12 self permanent" in fdb
    assert observe.observe_neighbours(node2, VXLAN)[0]["mac"] == lab.macs[0]

    addresses = observe.observe_addresses(node1)
    for expected in ({"dev": "eth0", "cidr": "172.20.0.11/24"}, {"dev": "cni0", "cidr": "10.244.0.1/24"},
                     {"dev": VXLAN, "cidr": "10.244.0.0/32"}):
        assert expected in addresses
    assert {"dev": "eth0", "cidr": "10.244.0.2/24"} in observe.observe_addresses(lab.pods[0])


def test_sysctl_is_written_in_the_namespace(lab, prefix):
    for ns in lab.nodes:
        result = in_ns(ns, "sysctl", "-n", "net.ipv4.ip_forward")
        assert result.stdout.strip() == "1", result.stderr
        assert observe.observe_sysctl(ns, "net.ipv4.ip_forward") == "1"
    # A value only this namespace has (a plain integer sysctl): the host keeps its own.
    host_value = open("/proc/sys/net/ipv4/ip_default_ttl").read().strip()
    wanted = "77" if host_value != "77" else "78"
    # A key in slash form, for a device name with a dot (and that the host does not have).
    key = f"net/ipv4/conf/{VXLAN}/accept_redirects"
    kapply.apply((Sysctl(lab.pods[0], "net.ipv4.ip_default_ttl", wanted),
                  Sysctl(lab.nodes[0], key, "0")))
    assert in_ns(lab.pods[0], "sysctl", "-n", "net.ipv4.ip_default_ttl").stdout.strip() == wanted
    assert in_ns(lab.nodes[0], "sysctl", "-n", key).stdout.strip() == "0"
    assert observe.observe_sysctl(lab.nodes[0], key) == "0"
    assert observe.observe_sysctl(lab.nodes[1], key) == "1"
    assert open("/proc/sys/net/ipv4/ip_default_ttl").read().strip() == host_value
    assert in_ns(lab.pods[1], "sysctl", "-n", "net.ipv4.ip_default_ttl").stdout.strip() != wanted


# --------------------------------------------------------------------------- idempotence and drift


def test_apply_twice_is_a_no_op(lab):
    before = snapshot(lab)
    kapply.apply(lab.plan)
    after = snapshot(lab)
    assert after == before  # same objects, same ifindexes: nothing was recreated
    result = ping(lab.pods[0], lab.pod_ips[1])
    assert result.returncode == 0, why(result)


def test_apply_repairs_drift(lab):
    node1 = lab.nodes[0]
    run("ip", "-n", node1, "route", "del", "10.244.1.0/24", check=True)
    run("ip", "-n", node1, "link", "set", lab.host_veths[0], "mtu", "1400", "nomaster", check=True)
    run("ip", "-n", node1, "link", "set", VXLAN, "down", check=True)
    run("ip", "-n", lab.pods[0], "link", "set", "eth0", "down", check=True)
    assert ping(lab.pods[0], lab.pod_ips[1], "-W1").returncode != 0
    kapply.apply(lab.plan)
    node = {l["name"]: l for l in observe.observe_links(node1)}
    assert (node[lab.host_veths[0]]["mtu"], node[lab.host_veths[0]]["master"]) == (1450, "cni0")
    assert node[VXLAN]["up"]
    assert "hairpin on" in run("ip", "-n", node1, "-d", "link", "show", lab.host_veths[0]).stdout
    result = ping(lab.pods[0], lab.pod_ips[1])
    assert result.returncode == 0, why(result)


def test_incompatible_vxlan_device_is_replaced(lab):
    node1 = lab.nodes[0]
    (vxlan,) = [s for s in lab.base if isinstance(s, Vxlan) and s.netns == node1]
    moved = Vxlan(node1, VXLAN, vni=1, local=vxlan.local, dev="eth0", port=4789, mtu=1450, mac=vxlan.mac)
    kapply.apply((moved,))
    out = run("ip", "-n", node1, "-d", "link", "show", VXLAN, check=True).stdout
    assert "dstport 4789" in out and "nolearning" in out


# --------------------------------------------------------------------------- remove


def test_remove_peer_steps_deletes_exactly_the_trio(lab):
    node1 = lab.nodes[0]
    before = snapshot(lab)
    kapply.remove(lab.peers[0])
    after = snapshot(lab)
    assert [r for r in after[node1]["routes"] if r["dst"] == "10.244.1.0/24"] == []
    assert after[node1]["neighbours"] == []
    assert after[node1]["fdb"] == []
    expected = before[node1]
    expected["routes"] = [r for r in expected["routes"] if r["dst"] != "10.244.1.0/24"]
    expected["neighbours"] = []
    expected["fdb"] = []
    assert after[node1] == expected
    for ns in after:
        if ns != node1:
            assert after[ns] == before[ns], ns
    assert ping(lab.pods[0], lab.pod_ips[1], "-W1").returncode != 0
    kapply.remove(lab.peers[0])  # already gone: not an error
    kapply.apply(lab.peers[0])
    result = ping(lab.pods[0], lab.pod_ips[1])
    assert result.returncode == 0, why(result)


def test_remove_addresses_and_links_outside_a_deleted_namespace(lab):
    node1 = lab.nodes[0]
    pod_steps = lab.pod_steps[:4]  # pod A: Netns, VethPair, Address, Route
    kapply.remove((Address(node1, VXLAN, "10.244.0.0/32"),))
    assert {"dev": VXLAN, "cidr": "10.244.0.0/32"} not in observe.observe_addresses(node1)
    kapply.remove(pod_steps)
    assert lab.pods[0] not in netns.list_names()
    names_left = {l["name"] for l in observe.observe_links(node1)}
    assert lab.host_veths[0] not in names_left  # went with the pod's namespace
    kapply.remove((Vxlan(node1, VXLAN, vni=1, local="172.20.0.11", dev="eth0", port=8472,
                         mtu=1450, mac=lab.macs[0]), Bridge(node1, "cni0")))
    names_left = {l["name"] for l in observe.observe_links(node1)}
    assert VXLAN not in names_left and "cni0" not in names_left
    kapply.remove((Bridge(node1, "cni0"),))  # already gone


def test_remove_whole_plan_leaves_no_namespace(lab, prefix):
    assert len(ours(prefix)) == 5
    kapply.remove(lab.plan)
    assert ours(prefix) == []
    assert run("ip", "netns", "list").stdout.count(prefix) == 0
    kapply.remove(lab.plan)  # a second time: everything is already gone



def test_delete_all_takes_the_namespaces_together_and_their_veths_with_them(lab, prefix):
    """Pods before nodes, a name that never existed among them: every namespace goes, the
    kernel destroys each pod's (taking the host side of its veth along: no pin of ours
    outlives the call), and the descriptor limit is as it was."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    netns.delete_all(lab.pods + [f"{prefix}never-made"])
    assert ours(prefix) == sorted([lab.underlay] + lab.nodes)
    deadline = time.monotonic() + 5
    while any(netns.ifindex(node, veth) for node, veth in zip(lab.nodes, lab.host_veths)):
        assert time.monotonic() < deadline, "a pod's namespace was not destroyed: its veth is still on the node"
        time.sleep(0.02)
    netns.delete_all(lab.nodes + [lab.underlay])
    assert ours(prefix) == []
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == limit


def test_delete_all_within_a_descriptor_limit_lower_than_the_namespaces(prefix):
    """With too few descriptors to pin them all at once, the namespaces go in chunks; the
    soft limit it lowered for the test is the limit afterwards."""
    made = [f"{prefix}ns-{i}" for i in range(40)]
    for name in made:
        netns.ensure(name)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    low = min(soft, in_use + 64 + 10)  # room to pin about ten at a time
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        netns.delete_all(made)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (low, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert ours(prefix) == []


# --------------------------------------------------------------------------- errors


def test_bad_route_names_the_netns_and_the_route(lab):
    bad = Route(lab.nodes[0], "10.99.0.0/24", gateway="10.244.0.9", dev="nosuch0")
    with pytest.raises(KernelError) as caught:
        kapply.apply((bad,))
    message = str(caught.value)
    assert message.startswith(f'netns "{lab.nodes[0]}": route 10.99.0.0/24 via 10.244.0.9 dev nosuch0: ')
    assert "No such device" in message


def test_kernel_refusal_names_the_step(lab):
    malformed = Address(lab.pods[0], "eth0", "not-an-address/24")
    with pytest.raises(InvalidInput, match=r'address not-an-address/24 dev eth0: .*not an address'):
        kapply.apply((malformed,))
    conflict = Bridge(lab.nodes[0], "eth0")  # eth0 exists and is a veth
    with pytest.raises(KernelError, match=rf'netns "{lab.nodes[0]}": bridge eth0: .*not a bridge'):
        kapply.apply((conflict,))
    missing = Route(f"{lab.prefix}nowhere", "10.0.0.0/8", dev="eth0")
    with pytest.raises(KernelError, match=r'netns ".*nowhere": route 10.0.0.0/8 dev eth0: .*does not exist'):
        kapply.apply((missing,))


def test_peer_name_taken_in_the_peer_namespace(lab):
    run("ip", "-n", lab.pods[0], "link", "add", "eth1", "type", "veth", "peer", "name", "stray0", check=True)
    step = VethPair(lab.nodes[0], "vethstray", lab.pods[0], "eth1", mtu=1450, master="cni0")
    with pytest.raises(KernelError) as caught:
        kapply.apply((step,))
    assert str(caught.value) == (
        f'netns "{lab.nodes[0]}": veth vethstray (peer eth1 in netns "{lab.pods[0]}", master cni0): '
        f'eth1 already exists in netns "{lab.pods[0]}"')
    assert "vethstray" not in {l["name"] for l in observe.observe_links(lab.nodes[0])}


def test_blackhole_and_link_scope_routes(lab):
    node1 = lab.nodes[0]
    routes = (Route(node1, "10.250.0.0/16", type="blackhole"),
              Route(node1, "10.251.0.0/24", dev="cni0", scope="link", src="10.244.0.1"),
              Route(node1, "default", gateway="172.20.0.1", dev="eth0"))
    kapply.apply(routes)
    kapply.apply(routes)
    lines = observe.format_routes(observe.observe_routes(node1)).splitlines()
    assert "blackhole 10.250.0.0/16" in lines
    assert "10.251.0.0/24 dev cni0 scope link src 10.244.0.1" in lines
    assert "default via 172.20.0.1 dev eth0" in lines
    assert lines == [l.strip() for l in run("ip", "-n", node1, "route", check=True).stdout.splitlines()]
    kapply.remove(routes)
    left = observe.format_routes(observe.observe_routes(node1))
    assert "10.250.0.0" not in left and "10.251.0.0" not in left and "default" not in left
    assert "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink" in left


def test_missing_vxlan_support_is_a_host_error(prefix, monkeypatch):
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    real_link = IPRoute.__getattr__

    def without_vxlan(self, name):
        method = real_link(self, name)
        if name != "link":
            return method

        def link(command, **kwarg):
            if command == "add" and kwarg.get("kind") == "vxlan":
                raise NetlinkError(95, "Unknown device type")
            return method(command, **kwarg)
        return link

    monkeypatch.setattr(IPRoute, "__getattr__", without_vxlan)
    ns = f"{prefix}node"
    plan = (Netns(ns), Vxlan(ns, VXLAN, vni=1, local="127.0.0.1", dev="lo", port=8472, mtu=1450,
                             mac="02:00:00:00:00:01"))
    with pytest.raises(HostError, match="CONFIG_VXLAN"):
        kapply.apply(plan)


def test_vxlan_supported_probes_and_cleans_up():
    kapply.vxlan_supported.cache_clear()
    before = set(netns.list_names())
    assert kapply.vxlan_supported() is True  # this kernel has VXLAN built in
    assert not [n for n in set(netns.list_names()) - before if n.startswith("overlaynet-probe-")]


def test_callable_from_a_running_event_loop(prefix):
    import asyncio

    ns = f"{prefix}async"

    async def main():
        kapply.apply((Netns(ns),))
        return observe.observe_links(ns)

    links = asyncio.run(main())
    assert [(l["name"], l["up"]) for l in links] == [("lo", True)]
    kapply.remove((Netns(ns),))
    assert ns not in netns.list_names()


def test_host_networks_are_the_initial_namespaces_non_loopback_ones():
    networks = observe.host_networks()
    out = json.loads(run("ip", "-j", "-4", "addr", "show", check=True).stdout)
    import ipaddress

    expected = {
        ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}").network
        for link in out if "LOOPBACK" not in link.get("flags", [])
        for a in link.get("addr_info", [])
    }
    assert set(networks) == expected
    assert all(not n.is_loopback for n in networks)


def test_a_probe_namespace_a_killed_process_left_is_swept():
    """``up`` probes VXLAN support in a throwaway namespace; one left by a process killed
    mid-probe goes with the next probe, and a live process's is left alone."""
    sleeper = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, alive = f"overlaynet-probe-{dead.pid}-deadbeef", f"overlaynet-probe-{sleeper.pid}-cafecafe"
    try:
        for name in (stale, alive):
            netns.ensure(name)
        kapply.vxlan_supported.cache_clear()
        assert kapply.vxlan_supported()
        assert stale not in netns.list_names() and alive in netns.list_names()
    finally:
        sleeper.kill()
        sleeper.wait()
        for name in (stale, alive):
            netns.delete(name)
