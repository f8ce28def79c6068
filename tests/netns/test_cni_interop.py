"""Interoperability with Debian's containernetworking-plugins (/usr/lib/cni), root, real namespaces.

(a) the reference ``bridge`` + ``host-local`` run through overlaynet's runtime and wire two
    sandboxes that ping each other: our runtime is a CNI runtime for any plugin;
(b) our ``overlaynet-flannel`` chained with the reference ``portmap`` and ``bandwidth``: the chain
    ADDs, portmap's DNAT rule is in the node's nat table and a connection from outside to the
    node's host port reaches a server in the sandbox, bandwidth's ifb and qdiscs exist; DEL in
    reverse order removes them. Debian's portmap needs ``disableCheck`` (cni.md §12.2);
(c) our ``overlaynet-flannel`` delegating to the reference ``host-local``, standalone and through
    the agent (which execs the delegate in the plugin's netns).

The plugins run in the node netns (``nsenter``), with ``CNI_PATH=<repo>/cni_plugins:/usr/lib/cni``.
These tests need the Debian package installed (scripts/setup); without it they fail.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import threading

import pytest

from overlaynet.cni.runtime import CniRuntime
from overlaynet.datapath.plan import Address, Sysctl, VethPair
from overlaynet.kernel import apply as kapply
from overlaynet.kernel import netns
from tests.netns.test_cni_conformance import CNI_PATH, REFERENCE_DIR, k8s_args, lab, ping, pod_ip, run  # noqa: F401

HOST_PORT = 18080
CONTAINER_PORT = 8080
NODE_IP = "192.168.77.1"
CLIENT_IP = "192.168.77.2"


def test_reference_plugins_are_installed():
    missing = [p for p in ("bridge", "host-local", "portmap", "bandwidth")
               if not os.access(os.path.join(REFERENCE_DIR, p), os.X_OK)]
    assert not missing, (f"{', '.join(missing)} missing from {REFERENCE_DIR}: "
                         "apt-get install containernetworking-plugins (scripts/setup does)")


def test_reference_bridge_and_host_local_through_our_runtime(lab):
    conflist = {"cniVersion": "1.0.0", "name": "refnet", "plugins": [{
        "type": "bridge", "bridge": "cniref0", "isGateway": True, "ipMasq": False, "hairpinMode": True, "mtu": 1400,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.1.0/24", "gateway": "10.99.1.1"}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": lab.data_dir}}]}
    rt = CniRuntime(conflist, CNI_PATH, lab.cache_dir, exec_netns=lab.node)
    a, b = lab.sandbox("a"), lab.sandbox("b")
    ra = rt.add("ctr-a", a, "eth0", k8s_args("a"))
    rb = rt.add("ctr-b", b, "eth0", k8s_args("b"))
    # the shape of cni.md §11: bridge, host veth, then the pod's eth0 in its sandbox
    assert [i["name"] for i in ra["interfaces"]][0] == "cniref0" and ra["interfaces"][2] == {
        "name": "eth0", "mac": ra["interfaces"][2]["mac"], "sandbox": a}
    assert ra["ips"] == [{"interface": 2, "address": "10.99.1.2/24", "gateway": "10.99.1.1"}]
    assert pod_ip(rb) == "10.99.1.3"
    assert ping(lab.prefix + "a", pod_ip(rb)).returncode == 0, "reference-wired pods cannot reach each other"
    with open(os.path.join(lab.data_dir, "refnet", "10.99.1.2"), "rb") as handle:
        assert handle.read() == b"ctr-a\r\neth0"
    rt.check("ctr-a", a, "eth0")
    rt.delete("ctr-a", a, "eth0")
    rt.delete("ctr-b", b, "eth0")
    rt.delete("ctr-b", b, "eth0")
    assert sorted(os.listdir(os.path.join(lab.data_dir, "refnet"))) == ["last_reserved_ip.0", "lock"]
    assert set(lab.links(lab.prefix + "a")) == {"lo"}


@pytest.mark.parametrize("path", ["standalone", "thin"])
def test_our_plugin_delegates_to_the_reference_host_local(lab, path):
    ipam = {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]], "dataDir": lab.data_dir}
    extra = {"agentSocket": lab.start_agent()} if path == "thin" else {}
    rt = lab.runtime(lab.conflist(lab.flannel(ipam=ipam, **extra)))
    a = lab.sandbox("a")
    result = rt.add("ctr-a", a, "eth0", k8s_args("a"))
    assert result["ips"] == [{"interface": 1, "address": "10.244.1.2/24", "gateway": "10.244.1.1"}]
    with open(os.path.join(lab.data_dir, "podnet", "10.244.1.2"), "rb") as handle:
        assert handle.read() == b"ctr-a\r\neth0"  # written by Debian's host-local
    rt.check("ctr-a", a, "eth0")
    rt.delete("ctr-a", a, "eth0")
    assert lab.allocations() == []
    if extra:
        assert "cni overlaynet-flannel DEL ctr-a/eth0: exit 0" in lab.agent_log(extra["agentSocket"])


def _serve_once(ns: str, port: int) -> tuple[socket.socket, threading.Thread, list]:
    """A TCP server inside ``ns`` that answers one connection with the peer address it saw."""
    with netns.inside(ns):
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(1)
    server.settimeout(10)
    seen: list = []

    def answer() -> None:
        try:
            conn, peer = server.accept()
        except OSError as exc:
            seen.append(exc)
            return
        with conn:
            seen.append(peer)
            conn.sendall(f"hello from the pod, you are {peer[0]}".encode())

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return server, thread, seen


def test_flannel_chained_with_portmap_and_bandwidth(lab):
    client = lab.namespace("client")
    kapply.apply((VethPair(lab.node, "uplink0", client, "eth0"), Address(lab.node, "uplink0", f"{NODE_IP}/24"),
                  Address(client, "eth0", f"{CLIENT_IP}/24"), Sysctl(lab.node, "net.ipv4.ip_forward", "1")))
    conflist = lab.conflist(
        lab.flannel(),
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        disableCheck=True,
    )
    runtime_config = {
        "portMappings": [{"hostPort": HOST_PORT, "containerPort": CONTAINER_PORT, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 50_000_000,
                      "egressRate": 100_000_000, "egressBurst": 50_000_000},
    }
    rt = CniRuntime(conflist, CNI_PATH, lab.cache_dir, exec_netns=lab.node)
    a = lab.sandbox("a")
    result = rt.add("ctr-a", a, "eth0", k8s_args("a"), runtime_config=runtime_config)
    ip = pod_ip(result)
    host_veth = result["interfaces"][0]["name"]
    # bandwidth appended its ifb device to our interfaces
    names = [i["name"] for i in result["interfaces"]]
    assert names[:2] == [host_veth, "eth0"] and len(names) == 3 and names[2].startswith("bwp")
    ifb = names[2]
    links = lab.links()
    assert links[ifb]["kind"] == "ifb"
    qdiscs = run("tc", "-n", lab.node, "qdisc", "show", "dev", host_veth).stdout
    assert "tbf" in qdiscs and "ingress" in qdiscs, qdiscs
    assert "tbf" in run("tc", "-n", lab.node, "qdisc", "show", "dev", ifb).stdout
    # portmap's DNAT in the node's nat table
    nat = subprocess.run(["nsenter", f"--net={netns.path(lab.node)}", "--", "iptables-save", "-t", "nat"],
                         capture_output=True, text=True, timeout=30).stdout
    dnat = [line for line in nat.splitlines() if f"--to-destination {ip}:{CONTAINER_PORT}" in line]
    assert dnat and any(f"--dport {HOST_PORT}" in line for line in dnat), nat
    # a connection from outside the node to the host port reaches the pod
    server, thread, seen = _serve_once(lab.prefix + "a", CONTAINER_PORT)
    try:
        with netns.inside(client):
            conn = socket.create_connection((NODE_IP, HOST_PORT), timeout=5)
        with conn:
            reply = conn.recv(200).decode()
        thread.join(10)
    finally:
        server.close()
    assert reply.startswith("hello from the pod") and seen and seen[0][0] == CLIENT_IP, (reply, seen)
    rt.check("ctr-a", a, "eth0")  # disableCheck: nothing is asked of Debian's portmap
    # DEL in reverse order: bandwidth, portmap, then ours
    rt.delete("ctr-a", a, "eth0", runtime_config=runtime_config)
    links = lab.links()
    assert ifb not in links and host_veth not in links
    nat = subprocess.run(["nsenter", f"--net={netns.path(lab.node)}", "--", "iptables-save", "-t", "nat"],
                         capture_output=True, text=True, timeout=30).stdout
    assert f"{ip}:{CONTAINER_PORT}" not in nat
    assert lab.allocations() == []
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("10.244.1.0/24")
    assert set(lab.links(lab.prefix + "a")) == {"lo"}
