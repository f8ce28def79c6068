"""kube-proxy's rendered rules in real namespaces, on both iptables backends (root; CI runs as root).

Each test works in namespaces of its own (``t-kproxy-<random>.``), one backend per namespace
(iptables-nft warns when legacy tables share its namespace), and removes every namespace
with its prefix when it ends, whatever happened.

- a full restore reads back, after kube-proxy.md §8's normalisations, exactly as rendered,
  and the jumps from the built-in chains are inserted once, in kube-proxy's order;
- a partial sync after one endpoint change leaves every other service's chains
  byte-identical, removes the stale chain, and leaves what a full sync would;
- real packets follow the rules: a node reaches a ClusterIP (TCP and UDP) without SNAT, a
  pod reaching itself through its Service (hairpin) and through a NodePort is masqueraded,
  and a Service without endpoints refuses the connection at once.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import uuid

import pytest

from overlaynet.datapath.plan import Address, Netns, Route, Sysctl, VethPair
from overlaynet.errors import InvalidInput, KernelError
from overlaynet.kernel import apply as kapply
from overlaynet.kernel import iptables as kip
from overlaynet.kernel import netns
from overlaynet.proxy import render as R
from overlaynet.proxy.rules import canonical_rule, canonical_tables, parse_rule, saved_chain_lines
from tests.golden.test_kube_proxy import PODS, node_config, pod, render_all

BACKENDS = ["legacy", "nf_tables"]


@pytest.fixture
def prefix():
    value = f"t-kproxy-{uuid.uuid4().hex[:8]}."
    yield value
    left = [n for n in netns.list_names() if n.startswith(value)]
    for name in left:
        netns.delete(name)
    assert netns.wait_gone(left) == []


@pytest.fixture
def node_ns(prefix):
    name = f"{prefix}node"
    netns.ensure(name)
    return name


def builtin_rules(jumps, table, chain):
    """What kube-proxy's prepended jumps leave in a built-in chain, top to bottom."""
    return [canonical_rule(parse_rule(j.rule)) for j in reversed(jumps) if (j.table, j.chain) == (table, chain)]


def assert_kernel_holds(saved: str, ruleset_payload: str, jumps) -> None:
    kernel = canonical_tables(saved)
    rendered = canonical_tables(ruleset_payload)
    for table, chains in rendered.items():
        for chain, rules in chains.items():
            assert kernel[table].get(chain) == rules, f"{table} {chain} differs after read-back"
        ours = {c for c in kernel[table] if c.startswith("KUBE-")}
        assert ours == set(chains), f"{table}: chains in the kernel but not rendered: {ours - set(chains)}"
    for table, chain in {(j.table, j.chain) for j in jumps}:
        assert kernel[table][chain] == builtin_rules(jumps, table, chain), f"{table} {chain}: jumps"


def test_backend_detection(monkeypatch):
    version = subprocess.run(["iptables", "-V"], capture_output=True, text=True, check=True).stdout
    monkeypatch.delenv(kip.BACKEND_ENV, raising=False)
    assert kip.backend() == ("nf_tables" if "nf_tables" in version else "legacy")
    assert kip.backend("legacy") == "legacy" and kip.backend("nft") == "nf_tables"
    monkeypatch.setenv(kip.BACKEND_ENV, "legacy")
    assert kip.backend() == "legacy"
    monkeypatch.setenv(kip.BACKEND_ENV, "ebtables")
    with pytest.raises(InvalidInput, match=r'iptables backend "ebtables" \(from \$OVERLAYNET_IPTABLES_BACKEND\)'):
        kip.backend()


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_restore_reads_back_as_rendered(node_ns, backend):
    ruleset = render_all()
    # kube-proxy's full sync: the jumps first (their target chains created empty), then the restore.
    assert kip.ensure_jumps(node_ns, ruleset.jumps, backend) == list(ruleset.jumps)
    kip.restore(node_ns, ruleset.payload, backend)
    assert kip.ensure_jumps(node_ns, ruleset.jumps, backend) == []  # idempotent: nothing moves or doubles
    assert_kernel_holds(kip.save(node_ns, backend), ruleset.payload, ruleset.jumps)
    # A second full restore of the same payload changes nothing (declared chains are refilled).
    before = kip.save(node_ns, backend, "nat")
    kip.restore(node_ns, ruleset.payload, backend)
    assert saved_chain_lines(kip.save(node_ns, backend, "nat")) == saved_chain_lines(before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_sync_after_one_endpoint_change(node_ns, backend):
    first = render_all()
    kip.restore(node_ns, first.payload, backend)
    kip.ensure_jumps(node_ns, first.jumps, backend)
    before = saved_chain_lines(kip.save(node_ns, backend))

    # web-2 is replaced by a pod at another address: one endpoint of default/web changes.
    pods = [p for p in PODS if p["metadata"]["name"] != "web-2"] + [pod("web-4", "10.244.1.30", "node-2",
                                                                        {"app": "web"})]
    second = render_all(pods=pods, previous=first, changed={"default/web"},
                        existing_chains=kip.chains(node_ns, backend, "nat"))
    assert not second.full and second.written == ("default/web",)
    stale = R.sep_chain("default/web:http", "tcp", "10.244.1.7:8080")
    assert second.stale_chains == (stale,)
    declared = {line[1:].split()[0] for line in second.payload.splitlines() if line.startswith(":")}
    untouched = {chain for chain, owner in first.chain_owners().items() if not owner.startswith("default/web:")}
    assert untouched and not declared & untouched

    kip.restore(node_ns, second.payload, backend)
    after = saved_chain_lines(kip.save(node_ns, backend))
    for chain in untouched:
        assert after["nat"][chain] == before["nat"][chain], f"{chain} was rewritten"
    assert stale not in after["nat"]
    assert R.sep_chain("default/web:http", "tcp", "10.244.1.30:8080") in after["nat"]
    for table in ("filter", "nat"):
        for chain in ("INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING"):
            assert after[table].get(chain) == before[table].get(chain), f"{table} {chain}: jumps moved"
    full = render_all(pods=pods)
    assert_kernel_holds(kip.save(node_ns, backend), full.payload, full.jumps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_minimal_partial_sync_touches_only_the_changed_service(node_ns, backend):
    first = render_all()
    kip.restore(node_ns, first.payload, backend)
    before = saved_chain_lines(kip.save(node_ns, backend))
    pods = [p for p in PODS if p["metadata"]["name"] != "sticky-2"] + [pod("sticky-3", "10.244.2.40", "node-3",
                                                                           {"app": "sticky"})]
    second = render_all(pods=pods, previous=first, changed={"default/sticky"}, minimal=True)
    assert not second.top_level_written and "*filter" not in second.payload
    kip.restore(node_ns, second.payload, backend)
    after = saved_chain_lines(kip.save(node_ns, backend))
    mine = {c for c, owner in {**first.chain_owners(), **second.chain_owners()}.items()
            if owner == "default/sticky:http"}
    for table in ("filter", "nat"):
        for chain in set(before[table]) | set(after[table]):
            if chain not in mine:
                assert after[table].get(chain) == before[table].get(chain), f"{table} {chain} was rewritten"
    full = render_all(pods=pods)
    assert_kernel_holds(kip.save(node_ns, backend), full.payload, ())


@pytest.mark.parametrize("backend", BACKENDS)
def test_restore_error_names_the_netns_the_line_and_changes_nothing(node_ns, backend):
    good = render_all()
    kip.restore(node_ns, good.payload, backend)
    before = kip.save(node_ns, backend, "nat")
    bad = good.payload.replace("-j KUBE-MARK-MASQ\n", "-j KUBE-NO-SUCH-CHAIN\n", 1)
    with pytest.raises(KernelError) as caught:
        kip.restore(node_ns, bad, backend)
    message = str(caught.value)
    assert f'netns "{node_ns}"' in message and "failed" in message
    assert "KUBE-NO-SUCH-CHAIN" in message and "\n> " in message  # iptables' words and the payload line it names
    assert saved_chain_lines(kip.save(node_ns, backend, "nat")) == saved_chain_lines(before)
    with pytest.raises(KernelError, match=r'netns "t-kproxy-missing": does not exist'):
        kip.restore("t-kproxy-missing", good.payload, backend)


# --------------------------------------------------------------------------- real packets

POD_IP, POD_GATEWAY = "10.244.0.5", "10.244.0.1"  # the server pod, behind vethpod
CLIENT_IP = "10.244.1.6"  # a client pod on the same node, behind vethcli
NODE_IP, OUTSIDE_IP = "172.20.0.11", "172.20.0.1"  # the node's eth0; a client on the node network
SERVICES = [
    ("web", "10.96.0.10", 80, "TCP", 8080, True),
    ("dns", "10.96.0.53", 53, "UDP", 5353, True),
    ("empty", "10.96.0.14", 80, "TCP", 8080, False),
]


def packet_lab(prefix: str) -> dict[str, str]:
    """One node with two pods (a server and a client, each on its own veth and /24) and an
    outside client on the node network, which is also the node's default gateway."""
    ns = {role: f"{prefix}{role}" for role in ("node", "pod", "client", "outside")}
    kapply.apply((
        Netns(ns["node"]), Netns(ns["pod"]), Netns(ns["client"]), Netns(ns["outside"]),
        VethPair(ns["node"], "eth0", ns["outside"], "eth0"),
        Address(ns["node"], "eth0", f"{NODE_IP}/24"), Address(ns["outside"], "eth0", f"{OUTSIDE_IP}/24"),
        Route(ns["node"], "0.0.0.0/0", gateway=OUTSIDE_IP, dev="eth0"),
        Route(ns["outside"], "10.96.0.0/12", gateway=NODE_IP, dev="eth0"),
        VethPair(ns["node"], "vethpod", ns["pod"], "eth0"),
        Address(ns["node"], "vethpod", f"{POD_GATEWAY}/24"), Address(ns["pod"], "eth0", f"{POD_IP}/24"),
        Route(ns["pod"], "0.0.0.0/0", gateway=POD_GATEWAY, dev="eth0"),
        VethPair(ns["node"], "vethcli", ns["client"], "eth0"),
        Address(ns["node"], "vethcli", "10.244.1.1/24"), Address(ns["client"], "eth0", f"{CLIENT_IP}/24"),
        Route(ns["client"], "0.0.0.0/0", gateway="10.244.1.1", dev="eth0"),
        Sysctl(ns["node"], "net.ipv4.ip_forward", "1"),
    ))
    return ns


def lab_rules():
    from overlaynet.api.services import (EndpointConditions, EndpointPort, EndpointSlice, Service, ServicePort,
                                         SliceEndpoint)

    services, slices = [], []
    for name, ip, port, protocol, target, has_endpoints in SERVICES:
        node_port = 30080 if name == "web" else None
        svc = Service("default", name, (ServicePort("", port, target, protocol, node_port),),
                      type="NodePort" if node_port else "ClusterIP", cluster_ip=ip, selector=(("app", name),))
        services.append(svc)
        if has_endpoints:
            slices.append(EndpointSlice("default", f"{name}-x", name, (EndpointPort("", target, protocol),),
                                        (SliceEndpoint((POD_IP,), EndpointConditions(True, True, False), "node-1"),)))
    return R.render(node_config("node-1"), services, slices)


class Servers:
    """A TCP and a UDP server in the pod's namespace; each answers with the client address it saw."""

    def __init__(self, pod_ns: str):
        with netns.inside(pod_ns):
            self.tcp = socket.create_server((POD_IP, 8080))
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind((POD_IP, 5353))
        for sock in (self.tcp, self.udp):
            sock.settimeout(0.2)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._serve_tcp, daemon=True),
                        threading.Thread(target=self._serve_udp, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _serve_tcp(self):
        while not self.stop.is_set():
            try:
                conn, peer = self.tcp.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.sendall(peer[0].encode())

    def _serve_udp(self):
        while not self.stop.is_set():
            try:
                _, peer = self.udp.recvfrom(100)
            except (TimeoutError, OSError):
                continue
            self.udp.sendto(peer[0].encode(), peer)

    def close(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=2)
        self.tcp.close()
        self.udp.close()


def tcp_seen(ns: str, address: str, port: int, timeout: float = 3) -> str:
    with netns.inside(ns):
        with socket.create_connection((address, port), timeout=timeout) as conn:
            return conn.recv(100).decode()


def udp_seen(ns: str, address: str, port: int) -> str:
    with netns.inside(ns):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3)
            sock.sendto(b"hello", (address, port))
            return sock.recv(100).decode()


@pytest.mark.parametrize("backend", BACKENDS)
def test_packets_follow_the_rules(prefix, backend):
    ns = packet_lab(prefix)
    ruleset = lab_rules()
    kip.restore(ns["node"], ruleset.payload, backend)
    kip.ensure_jumps(ns["node"], ruleset.jumps, backend)
    servers = Servers(ns["pod"])
    try:
        # pod -> ClusterIP (TCP and UDP): DNAT to the endpoint, which sees the client pod's own IP.
        assert tcp_seen(ns["client"], "10.96.0.10", 80) == CLIENT_IP
        assert udp_seen(ns["client"], "10.96.0.53", 53) == CLIENT_IP
        # pod -> its own Service (hairpin): works only because the SEP chain masquerades it.
        assert tcp_seen(ns["pod"], "10.96.0.10", 80) == POD_GATEWAY
        # the node itself (source 172.20.0.11, outside the cluster CIDR) is masqueraded.
        assert tcp_seen(ns["node"], "10.96.0.10", 80) == POD_GATEWAY
        # a client on the node network: the NodePort and the ClusterIP, both masqueraded (eTP Cluster).
        assert tcp_seen(ns["outside"], NODE_IP, 30080) == POD_GATEWAY
        assert tcp_seen(ns["outside"], "10.96.0.10", 80) == POD_GATEWAY
        # no endpoints: the filter table REJECTs at once instead of letting the client time out.
        for client in ("client", "node"):
            start = time.monotonic()
            with pytest.raises(ConnectionRefusedError):
                tcp_seen(ns[client], "10.96.0.14", 80)
            assert time.monotonic() - start < 1.0
        # another port of the same address is no service: routed on, unanswered.
        with pytest.raises(TimeoutError):
            tcp_seen(ns["client"], "10.96.0.10", 81, timeout=1)
    finally:
        servers.close()
