"""The Calico-like routed mode against real namespaces (root; CI runs as root, with bird2).

Each test builds, by hand from the planners, a 3-node routed cluster under a prefix of its own
(``t-calico-<random>.``): the underlay bridge with the gateway address, node namespaces from
``topology.plan_node_base`` plus ``CalicoMode.plan_node``, IPAM blocks from a ``BlockIPAM`` over
a throwaway ``Store``, then either the static routes (``plan_blocks`` + ``plan_peer``, Felix's
``proto 80``) or a BIRD 2 daemon per node (``proto bird``), and pods via ``plan_pod`` after
their sandbox ``Netns``. Real packets and kernel state are checked against calico.md §7.
Whatever happens, the fixture stops every BIRD it started, deletes every namespace under the
prefix and fails if a BIRD process of the test is left.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

from overlaynet import names
from overlaynet.api import model
from overlaynet.control.store import Store
from overlaynet.datapath import topology
from overlaynet.datapath.modes import get_mode
from overlaynet.datapath.plan import Netns, Route
from overlaynet.errors import InvalidInput
from overlaynet.ipam.blocks import BlockIPAM
from overlaynet.kernel import apply as kapply
from overlaynet.kernel import bird, netns, observe
from overlaynet.node import bird_config

ESTABLISH_TIMEOUT = 30.0


class CalicoLab:
    """A routed cluster built step by step; ``close`` undoes everything it made."""

    def __init__(self, pool: str = "10.244.0.0/16", block_size: int = 26, nodes: int = 3):
        self.cluster = f"t-calico-{uuid.uuid4().hex[:8]}"
        self.prefix = names.cluster_netns_prefix(self.cluster)
        # Short: BIRD's control sockets live here (sun_path holds 108 bytes).
        self.dir = tempfile.mkdtemp(prefix="ovn-cal-", dir="/tmp")
        pool_net = ipaddress.IPv4Network(pool)
        self.spec = model.build_spec(name=self.cluster, cni="calico", nodes=nodes, cluster_cidr=pool,
                                     node_cidr_mask_size=max(pool_net.prefixlen + 2, 24), block_size=block_size)
        self.mode = get_mode("calico")
        self.store = Store(os.path.join(self.dir, "state"))
        self.ipam = BlockIPAM(self.store, self.cluster, self.spec.cluster_cidr, block_size)
        self.node_names = [n.name for n in self.spec.nodes]
        self.node_ips = {name: self.spec.node_network.network_address + model.FIRST_NODE_HOST + i
                         for i, name in enumerate(self.node_names)}
        self.pods: dict[str, topology.PodInfo] = {}
        self.birds: dict[str, tuple[str, str, str]] = {}  # node -> (conf, ctl, pid)

    # -- building -------------------------------------------------------------------------------

    def node_ns(self, node: str) -> str:
        return names.node_netns(self.cluster, node)

    def info(self, node: str) -> topology.NodeInfo:
        ip = self.node_ips[node]
        return topology.NodeInfo(node, ip, None,
                                 tuple(sorted(self.mode.node_annotations(self.spec, node, str(ip)).items())),
                                 self.ipam.node_blocks(node), self.ipam.borrowed(node))

    def infos(self) -> list[topology.NodeInfo]:
        return [self.info(n) for n in self.node_names]

    def build_nodes(self) -> None:
        steps = topology.plan_underlay(self.spec)
        for node in self.infos():
            steps += topology.plan_node_base(self.spec, node) + self.mode.plan_node(self.spec, node)
        kapply.apply(steps)

    def add_pods(self, node: str, pod_names: list[str]) -> list[topology.PodInfo]:
        info_before = self.info(node)
        steps = ()
        added = []
        for pod_name in pod_names:
            container_id = hashlib.sha256(f"{self.cluster}/{pod_name}".encode()).hexdigest()[:16]
            ip = self.ipam.allocate(node, f"{container_id}.eth0")
            pod = topology.PodInfo("default", pod_name, ip, node, names.pod_netns(self.cluster, "default", pod_name),
                                   self.node_ns(node), container_id=container_id)
            self.pods[pod_name] = pod
            added.append(pod)
            steps += (Netns(pod.netns),) + self.mode.plan_pod(self.spec, info_before, pod)
        kapply.apply(steps)
        return added

    def static_routes(self) -> None:
        """What Felix would program without BGP: own blocks blackholed, peers' blocks and
        borrowed addresses routed via the peer (re-run after blocks change: idempotent)."""
        nodes = self.infos()
        steps = ()
        for node in nodes:
            steps += self.mode.plan_blocks(self.spec, node)
            for peer in nodes:
                if peer.name != node.name:
                    steps += self.mode.plan_peer(self.spec, node, peer)
        kapply.apply(steps)

    # -- BGP --------------------------------------------------------------------------------------

    def write_bird_configs(self) -> None:
        nodes = self.infos()
        for node in nodes:
            conf = os.path.join(self.dir, f"{node.name}.conf")
            with open(conf, "w") as handle:
                handle.write(bird_config.render_node_config(node, nodes))
            self.birds[node.name] = (conf, os.path.join(self.dir, f"{node.name}.ctl"),
                                     os.path.join(self.dir, f"{node.name}.pid"))

    def start_bird(self, node: str) -> int:
        conf, ctl, pid = self.birds[node]
        return bird.start_bird(self.node_ns(node), conf, ctl, pid)

    def ctl_paths(self, nodes: list[str] | None = None) -> dict[str, str]:
        return {n: self.birds[n][1] for n in (nodes or self.node_names)}

    def bird_processes(self) -> list[str]:
        """Every process whose command line names this lab's directory (our BIRDs)."""
        found = []
        marker = self.dir.encode()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    argv = handle.read().split(b"\0")
                with open(f"/proc/{pid}/stat") as handle:
                    state = handle.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and any(marker in arg for arg in argv):
                found.append(f"{pid}: {b' '.join(argv).decode(errors='replace')}")
        return found

    # -- teardown -----------------------------------------------------------------------------------

    def close(self) -> list[str]:
        """Stop our BIRDs, delete our namespaces; return BIRD processes that survived."""
        try:
            for conf, ctl, pid in self.birds.values():
                bird.stop_bird(pid, ctl_path=ctl)
            left = self.bird_processes()
        finally:
            ours = [n for n in netns.list_names() if n.startswith(self.prefix)]
            for name in ours:
                netns.delete(name)
            netns.wait_gone(ours)
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)
        return left


@pytest.fixture
def make_lab():
    labs: list[CalicoLab] = []

    def make(**kwargs) -> CalicoLab:
        lab = CalicoLab(**kwargs)
        labs.append(lab)
        lab.build_nodes()
        return lab

    yield make
    leaked = []
    for lab in labs:
        leaked += lab.close()
    assert not leaked, f"BIRD processes left behind: {leaked}"


@pytest.fixture
def lab(make_lab) -> CalicoLab:
    """Three nodes, one pod each, routes programmed statically (no BGP)."""
    built = make_lab()
    for i, node in enumerate(built.node_names, 1):
        built.add_pods(node, [f"pod-{i}"])
    built.static_routes()
    return built


# --------------------------------------------------------------------------- helpers


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30)


def ping(src_ns: str, dst: ipaddress.IPv4Address) -> subprocess.CompletedProcess:
    return run("ip", "netns", "exec", src_ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", str(dst))


def routes(ns: str) -> set[str]:
    """``ip route`` lines of ``ns``, without the metric (bird2 adds ``metric 32``)."""
    return {re.sub(r" metric \d+", "", observe.format_route(r)) for r in observe.observe_routes(ns)}


def wait_for_routes(ns: str, wanted: set[str], timeout: float = 15.0) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        have = routes(ns)
        if wanted <= have or time.monotonic() > deadline:
            return have
        time.sleep(0.1)


def source_seen(src: topology.PodInfo, dst: topology.PodInfo, port: int = 9999) -> str:
    """Send one UDP datagram from ``src`` to ``dst``; the source address ``dst`` saw."""
    with netns.inside(dst.netns):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with netns.inside(src.netns):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind((str(dst.ip), port))
        rx.settimeout(0.5)
        for _ in range(10):
            tx.sendto(b"who am i", (str(dst.ip), port))
            try:
                return rx.recvfrom(64)[1][0]
            except TimeoutError:
                continue
    raise AssertionError(f"no datagram from {src.ip} reached {dst.ip}")


def assert_blackholed(ns: str, ip: ipaddress.IPv4Address) -> None:
    """The kernel resolves ``ip`` to a blackhole route (``ip route get`` answers EINVAL for one)."""
    got = run("ip", "-n", ns, "route", "get", str(ip))
    assert got.returncode != 0 and "Invalid argument" in got.stderr, f"{ip} in {ns}: {got.stdout}{got.stderr}"


def owner_of(lab: CalicoLab, ip: ipaddress.IPv4Address) -> str:
    return next(n for n in lab.node_names if any(ip in b for b in lab.ipam.node_blocks(n)))


# --------------------------------------------------------------------------- static routes (proto 80)


def test_pod_to_pod_across_nodes_without_nat(lab):
    p1, p2, p3 = lab.pods["pod-1"], lab.pods["pod-2"], lab.pods["pod-3"]
    for dst in (p2, p3):
        result = ping(p1.netns, dst.ip)
        assert result.returncode == 0, result.stdout + result.stderr
    assert source_seen(p1, p2) == str(p1.ip)
    assert source_seen(p3, p1) == str(p3.ip)
    gateway = [n for n in observe.observe_neighbours(p1.netns, "eth0") if n["ip"] == "169.254.1.1"]
    assert gateway and gateway[0]["mac"] == "ee:ee:ee:ee:ee:ee", gateway


def test_the_host_side_of_a_pod_is_calicos(lab):
    pod = lab.pods["pod-1"]
    veth = "cali" + hashlib.sha1(b"default.pod-1").hexdigest()[:11]
    links = {link["name"]: link for link in observe.observe_links(pod.host_netns)}
    assert veth in links and links[veth]["mac"] == "ee:ee:ee:ee:ee:ee"
    assert links[veth]["mtu"] == 1500  # routed: no encapsulation overhead
    assert [a for a in observe.observe_addresses(pod.host_netns) if a["dev"] == veth] == []
    for key, value in (("net.ipv4.conf.{}.proxy_arp", "1"), ("net.ipv4.neigh.{}.proxy_delay", "0"),
                       ("net.ipv4.conf.{}.forwarding", "1"), ("net.ipv4.conf.{}.route_localnet", "1")):
        assert observe.observe_sysctl(pod.host_netns, key.format(veth)) == value, key
    assert f"{pod.ip} dev {veth} scope link" in routes(pod.host_netns)
    assert [a for a in observe.observe_addresses(pod.netns) if a["dev"] != "lo"] == [
        {"dev": "eth0", "cidr": f"{pod.ip}/32"}]
    assert [observe.format_route(r) for r in observe.observe_routes(pod.netns)] == [
        "default via 169.254.1.1 dev eth0", "169.254.1.1 dev eth0 scope link"]


def test_removing_a_pod_takes_its_veth_and_route_and_the_blackhole_catches_its_address(lab):
    pod = lab.pods["pod-2"]
    steps = lab.mode.plan_pod(lab.spec, lab.info("node-2"), pod)
    veth = steps[0].name
    kapply.remove(steps)
    kapply.remove(steps)  # a second DEL finds nothing to do
    assert veth not in {link["name"] for link in observe.observe_links(pod.host_netns)}
    assert not [r for r in routes(pod.host_netns) if r.startswith(f"{pod.ip} ")]
    assert_blackholed(pod.host_netns, pod.ip)
    assert ping(lab.pods["pod-1"].netns, pod.ip).returncode != 0


def test_blocks_are_blackholed_at_home_and_routed_by_peers(lab):
    for node in lab.infos():
        have = routes(lab.node_ns(node.name))
        (block,) = node.blocks
        assert f"blackhole {block} proto 80" in have
        assert f"default via {lab.spec.underlay_gateway} dev eth0" in have
        for peer in lab.infos():
            if peer.name != node.name:
                assert f"{peer.blocks[0]} via {peer.ip} dev eth0 proto 80" in have
    # An address of node-2's block that no pod has is dropped at node-2, not sent on.
    block = lab.info("node-2").blocks[0]
    unused = block.network_address + 40
    assert_blackholed(lab.node_ns("node-2"), unused)
    assert ping(lab.pods["pod-1"].netns, unused).returncode != 0


def test_without_a_node_default_route_proxy_arp_stays_silent(lab):
    """calico.md §1.3: proxy ARP answers only for what the node can route out another interface."""
    default = Route(lab.node_ns("node-1"), "0.0.0.0/0", gateway=str(lab.spec.underlay_gateway), dev="eth0")
    kapply.remove((default,))
    pod = lab.pods["pod-1"]
    assert ping(pod.netns, lab.pods["pod-2"].ip).returncode != 0
    gateway = [n for n in observe.observe_neighbours(pod.netns, "eth0") if n["ip"] == "169.254.1.1"]
    assert gateway and gateway[0]["mac"] is None and gateway[0]["state"] in ("INCOMPLETE", "FAILED"), gateway
    kapply.apply((default,))
    # The entry left INCOMPLETE runs out of probes (FAILED) first; the next send resolves it.
    for _ in range(5):
        result = ping(pod.netns, lab.pods["pod-2"].ip)
        if result.returncode == 0:
            break
    assert result.returncode == 0, result.stdout + result.stderr
    gateway = [n for n in observe.observe_neighbours(pod.netns, "eth0") if n["ip"] == "169.254.1.1"]
    assert gateway[0]["mac"] == "ee:ee:ee:ee:ee:ee", gateway


def test_a_node_with_more_than_64_pods_gets_a_second_block(lab):
    first = lab.info("node-1").blocks
    assert len(first) == 1
    extra = lab.add_pods("node-1", [f"many-{i}" for i in range(64)])  # 65 pods on node-1
    blocks = lab.info("node-1").blocks
    assert len(blocks) == 2 and blocks[0] == first[0]
    assert [p.ip for p in extra[:63]] == [first[0].network_address + i for i in range(1, 64)]
    assert extra[-1].ip == blocks[1].network_address
    lab.static_routes()
    node1 = routes(lab.node_ns("node-1"))
    assert {f"blackhole {b} proto 80" for b in blocks} <= node1
    for peer in ("node-2", "node-3"):
        assert {f"{b} via {lab.node_ips['node-1']} dev eth0 proto 80" for b in blocks} <= routes(lab.node_ns(peer))
    result = ping(lab.pods["pod-2"].netns, extra[-1].ip)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_borrowed_address_is_reached_through_its_32_route(make_lab):
    lab = make_lab(pool="10.244.0.0/25")  # two blocks of /26 for three nodes
    lab.add_pods("node-1", ["pod-1"])
    lab.add_pods("node-2", ["pod-2"])
    (borrower,) = lab.add_pods("node-3", ["pod-3"])
    assert lab.ipam.node_blocks("node-3") == ()
    assert lab.ipam.borrowed("node-3") == (borrower.ip,)
    lab.static_routes()
    owner = owner_of(lab, borrower.ip)
    third = "node-2" if owner == "node-1" else "node-1"
    for node in ("node-1", "node-2"):
        assert f"{borrower.ip} via {lab.node_ips['node-3']} dev eth0 proto 80" in routes(lab.node_ns(node))
    assert f"blackhole {lab.ipam.node_blocks(owner)[0]} proto 80" in routes(lab.node_ns(owner))
    third_pod = lab.pods["pod-1" if third == "node-1" else "pod-2"]
    owner_pod = lab.pods["pod-1" if owner == "node-1" else "pod-2"]
    for src in (third_pod, owner_pod):  # the /32 beats the owner's block route, and its blackhole
        result = ping(src.netns, borrower.ip)
        assert result.returncode == 0, f"from {src.node}: {result.stdout}{result.stderr}"
    assert source_seen(third_pod, borrower) == str(third_pod.ip)


# --------------------------------------------------------------------------- BGP (proto bird)


def test_bgp_mesh_establishes_and_bird_programs_every_route(make_lab):
    lab = make_lab()
    for i, node in enumerate(lab.node_names, 1):
        lab.add_pods(node, [f"pod-{i}"])
    lab.write_bird_configs()
    started = time.monotonic()
    for node in lab.node_names:
        lab.start_bird(node)
    report = bird.wait_established(lab.ctl_paths(), ESTABLISH_TIMEOUT)
    print(f"\nBGP mesh of 3 nodes: {report} (from first start: {time.monotonic() - started:.2f} s)")
    assert report.ok, str(report)
    for node in lab.node_names:
        mesh = [s for s in bird.sessions(lab.birds[node][1]) if s["proto"] == "BGP"]
        assert sorted(s["name"] for s in mesh) == sorted(
            bird_config.mesh_protocol_name(lab.node_ips[p]) for p in lab.node_names if p != node)
        assert all(s["bgp_state"] == "Established" for s in mesh), mesh
    for node in lab.infos():
        wanted = {f"blackhole {node.blocks[0]} proto bird"}
        wanted |= {f"{peer.blocks[0]} via {peer.ip} dev eth0 proto bird" for peer in lab.infos() if peer != node}
        have = wait_for_routes(lab.node_ns(node.name), wanted)
        assert wanted <= have, f"{node.name}: missing {wanted - have}"
        assert not [r for r in have if "proto 80" in r], "static routes in a BGP lab"
    p1, p2, p3 = (lab.pods[f"pod-{i}"] for i in (1, 2, 3))
    for src, dst in ((p1, p2), (p2, p3), (p3, p1)):
        result = ping(src.netns, dst.ip)
        assert result.returncode == 0, result.stdout + result.stderr
    assert source_seen(p1, p3) == str(p1.ip)
    conf, ctl, pid = lab.birds["node-1"]
    assert bird.stop_bird(pid, ctl_path=ctl) is True
    assert not os.path.exists(pid) and not os.path.exists(ctl)
    assert not [p for p in lab.bird_processes() if f"{lab.dir}/node-1." in p]


def test_bgp_announces_borrowed_addresses_as_32s(make_lab):
    lab = make_lab(pool="10.244.0.0/25")
    lab.add_pods("node-1", ["pod-1"])
    lab.add_pods("node-2", ["pod-2"])
    (borrower,) = lab.add_pods("node-3", ["pod-3"])
    lab.write_bird_configs()
    for node in lab.node_names:
        lab.start_bird(node)
    report = bird.wait_established(lab.ctl_paths(), ESTABLISH_TIMEOUT)
    assert report.ok, str(report)
    route = f"{borrower.ip} via {lab.node_ips['node-3']} dev eth0 proto bird"
    for node in ("node-1", "node-2"):
        have = wait_for_routes(lab.node_ns(node), {route})
        assert route in have, f"{node}: {sorted(have)}"
    node3 = routes(lab.node_ns("node-3"))
    assert not [r for r in node3 if r.startswith("blackhole")], "node-3 holds no block: no blackhole"
    assert f"{borrower.ip} dev {lab.mode.plan_pod(lab.spec, lab.info('node-3'), borrower)[0].name} scope link" in node3
    owner = owner_of(lab, borrower.ip)
    for src in ("pod-1", "pod-2"):
        result = ping(lab.pods[src].netns, borrower.ip)
        assert result.returncode == 0, f"{src} (owner {owner}): {result.stdout}{result.stderr}"


def test_bgp_reconfigure_announces_a_new_block(make_lab):
    lab = make_lab(block_size=28)  # 16 addresses per block
    for i, node in enumerate(lab.node_names, 1):
        lab.add_pods(node, [f"pod-{i}"])
    lab.write_bird_configs()
    for node in lab.node_names:
        lab.start_bird(node)
    assert bird.wait_established(lab.ctl_paths(), ESTABLISH_TIMEOUT).ok
    extra = lab.add_pods("node-1", [f"more-{i}" for i in range(16)])  # the 17th needs a new block
    second = lab.info("node-1").blocks[1]
    assert extra[-1].ip == second.network_address
    lab.write_bird_configs()
    assert "Reconfigured" in bird.reconfigure(lab.birds["node-1"][1])
    want = f"{second} via {lab.node_ips['node-1']} dev eth0 proto bird"
    assert want in wait_for_routes(lab.node_ns("node-2"), {want})
    assert f"blackhole {second} proto bird" in wait_for_routes(lab.node_ns("node-1"), {f"blackhole {second} proto bird"})
    result = ping(lab.pods["pod-2"].netns, extra[-1].ip)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_session_that_cannot_establish_is_reported_within_the_timeout(make_lab):
    lab = make_lab()
    lab.add_pods("node-1", ["pod-1"])
    lab.write_bird_configs()
    lab.start_bird("node-1")
    lab.start_bird("node-2")  # node-3's BIRD never runs
    started = time.monotonic()
    report = bird.wait_established(lab.ctl_paths(), timeout=6.0)
    took = time.monotonic() - started
    assert not report.ok and took < 6.0 + 3.0, f"took {took:.1f} s"
    down = {(label, s.name) for label, s in report.pending}
    to_node3 = bird_config.mesh_protocol_name(lab.node_ips["node-3"])
    assert down == {("node-1", to_node3), ("node-2", to_node3)}, str(report)
    assert set(report.unreachable) == {"node-3"}
    text = str(report)
    assert f"node-1 {to_node3}: start" in text and "node-3: BIRD at" in text


def test_a_bad_bird_configuration_is_refused_before_anything_runs(make_lab):
    lab = make_lab(nodes=1)
    conf = os.path.join(lab.dir, "bad.conf")
    with open(conf, "w") as handle:
        handle.write("router id 172.20.0.11;\nprotocol bgp {\n")
    with pytest.raises(InvalidInput, match=re.escape(conf)):
        bird.start_bird(lab.node_ns("node-1"), conf, os.path.join(lab.dir, "bad.ctl"),
                        os.path.join(lab.dir, "bad.pid"))
    assert lab.bird_processes() == []
