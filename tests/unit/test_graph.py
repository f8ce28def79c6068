"""overlaynet.tools.graph: the topology joined from store records and observed kernel state,
a broken tunnel or route named, and both renderings; no root."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from overlaynet.api import model
from overlaynet.tools import graph

SPEC = model.build_spec(name="g", nodes=2)
IPS = {"node-1": "172.20.0.11", "node-2": "172.20.0.12"}
CIDRS = {"node-1": "10.244.0.0/24", "node-2": "10.244.1.0/24"}
MACS = {"node-1": "fe:00:00:00:00:01", "node-2": "fe:00:00:00:00:02"}


def node_record(name: str) -> dict:
    return {"metadata": {"name": name}, "spec": {"podCIDR": CIDRS[name]},
            "status": {"addresses": [{"type": "InternalIP", "address": IPS[name]}]}}


def pod_record(name: str, node: str | None, ip: str | None) -> dict:
    status = {"phase": "Running", "podIP": ip} if ip else {"phase": "Pending"}
    return {"metadata": {"name": name, "namespace": "default"}, "spec": {"nodeName": node} if node else {},
            "status": status}


def link(name: str, index: int, kind: str | None = None, master: str | None = None, **extra) -> dict:
    return {"name": name, "index": index, "kind": kind, "master": master, "up": True, **extra}


def flannel_node(name: str, peer: str, veths: dict[int, str]) -> dict:
    """A node as kernel.cluster_view observes it in a flannel-like cluster."""
    peer_gateway = CIDRS[peer].split("/")[0]
    return {"exists": True,
            "links": [link("eth0", 2, "veth"), link("cni0", 3, "bridge"),
                      link("flannel.1", 4, "vxlan", vni=1, port=8472)]
            + [link(veth, index, "veth", "cni0") for index, veth in veths.items()],
            "addresses": [{"dev": "cni0", "cidr": CIDRS[name].replace(".0/", ".1/")}],
            "routes": [{"dst": CIDRS[peer], "gateway": peer_gateway, "dev": "flannel.1", "type": "unicast"},
                       {"dst": "0.0.0.0/0", "gateway": "172.20.0.1", "dev": "eth0", "type": "unicast"}],
            "vxlan": {"flannel.1": {"neighbours": [{"ip": peer_gateway, "mac": MACS[peer]}],
                                    "fdb": [{"mac": MACS[peer], "dst": IPS[peer]}]}}}


def healthy_kernel() -> dict:
    return {"underlay": {"exists": True, "links": [link("underlay0", 2, "bridge"),
                                                   link("node-1", 3, "veth", "underlay0"),
                                                   link("node-2", 4, "veth", "underlay0")]},
            "nodes": {"node-1": flannel_node("node-1", "node-2", {5: "vetha"}),
                      "node-2": flannel_node("node-2", "node-1", {5: "vethb"})},
            "pods": {"default/a": {"up": True, "peer_index": 5}, "default/b": {"up": True, "peer_index": 5}}}


PODS = [pod_record("a", "node-1", "10.244.0.2"), pod_record("b", "node-2", "10.244.1.2"),
        pod_record("waiting", None, None)]


def topology(kernel: dict, ranges: dict | None = None) -> graph.Topology:
    return graph.build_topology(SPEC, "VXLAN overlay", [node_record("node-1"), node_record("node-2")], PODS,
                                ranges or {n: [c] for n, c in CIDRS.items()}, "pod CIDR", kernel)


def test_a_healthy_flannel_cluster_has_pods_on_bridges_and_whole_tunnels():
    t = topology(healthy_kernel())
    assert t.all_problems == []
    one = t.nodes[0]
    assert [(p.name, p.host_device, p.bridge) for p in one.pods] == [("a", "vetha", "cni0")]
    assert [(p.peer, p.kind, p.via) for p in one.paths] == [("node-2", "vxlan", "encapsulated to 172.20.0.12")]
    assert [p.name for p in t.unscheduled] == ["waiting"]


@pytest.mark.parametrize("breaking, problem", [
    (lambda k: k["nodes"]["node-1"]["vxlan"]["flannel.1"].update(fdb=[]),
     "node-1 -> node-2 (10.244.1.0/24): no FDB entry for fe:00:00:00:00:02 on flannel.1 (bridge fdb)"),
    (lambda k: k["nodes"]["node-1"]["vxlan"]["flannel.1"].update(neighbours=[]),
     "node-1 -> node-2 (10.244.1.0/24): no neighbour entry for 10.244.1.0 on flannel.1 (ip neigh)"),
    (lambda k: k["nodes"]["node-1"]["vxlan"]["flannel.1"]["fdb"][0].update(dst="172.20.0.99"),
     "node-1 -> node-2 (10.244.1.0/24): the FDB sends fe:00:00:00:00:02 to 172.20.0.99, not 172.20.0.12"),
    (lambda k: k["nodes"]["node-2"].update(routes=[]),
     "node-2 -> node-1 (10.244.0.0/24): no route to 10.244.0.0/24"),
    (lambda k: k["pods"].update({"default/a": None}),
     "pod a: no eth0 (namespace g.pod.default.a or device gone)"),
    (lambda k: k["pods"]["default/b"].update(peer_index=99), "pod b: the node side of its veth pair is gone"),
    (lambda k: k["underlay"]["links"].pop(), "node node-2: eth0 is not plugged into underlay0 (no port node-2)"),
    (lambda k: k["nodes"]["node-1"].update(exists=False, links=[], addresses=[], routes=[], vxlan={}),
     "node node-1: its namespace g.node.node-1 is gone"),
])
def test_a_missing_kernel_object_is_named_as_the_problem(breaking, problem):
    kernel = healthy_kernel()
    breaking(kernel)
    assert problem in topology(kernel).all_problems


def test_routed_paths_go_via_the_peer_and_a_bgp_route_says_so():
    kernel = healthy_kernel()
    for name, peer in (("node-1", "node-2"), ("node-2", "node-1")):
        kernel["nodes"][name].update(
            links=[link("eth0", 2, "veth"), link("cali0123", 5, "veth")], vxlan={}, addresses=[],
            routes=[{"dst": "10.244.64.0/26" if peer == "node-2" else "10.244.128.0/26", "gateway": IPS[peer],
                     "dev": "eth0", "type": "unicast", "proto": "bird" if name == "node-1" else "static"}])
    t = topology(kernel, {"node-1": ["10.244.128.0/26"], "node-2": ["10.244.64.0/26"]})
    assert t.all_problems == []
    assert [(p.kind, p.via) for p in t.nodes[0].paths] == [("route", "via 172.20.0.12 dev eth0 (BGP)")]
    assert [(p.host_device, p.bridge) for p in t.nodes[0].pods] == [("cali0123", None)]
    text = graph.render_text(t)
    assert "pods routed by the node (a /32 route each, no bridge)" in text and "routes to the peers' pods" in text
    dot = graph.render_dot(t)
    assert '"node-1/routes" -> "pod/default/a" [xlabel="cali0123"]' in dot
    assert 'label="routes"' in dot  # node-2's route is static: not every way is learned over BGP


def test_a_route_through_another_node_is_a_problem():
    kernel = healthy_kernel()
    kernel["nodes"]["node-1"]["routes"] = [{"dst": "10.244.1.0/24", "gateway": "172.20.0.13", "dev": "eth0",
                                            "type": "unicast"}]
    [path] = topology(kernel).nodes[0].paths
    assert path.problem == "the route to 10.244.1.0/24 goes via 172.20.0.13 dev eth0, not via 172.20.0.12"


def test_the_text_tree_shows_the_four_ranges_nodes_pods_and_tunnels():
    text = graph.render_text(topology(healthy_kernel()))
    assert text.splitlines()[:5] == [
        'cluster "g": cni flannel (VXLAN overlay)',
        "  node network  172.20.0.0/24      real: the nodes' eth0 on bridge underlay0",
        "  cluster CIDR  10.244.0.0/16      virtual: every pod's address comes from it",
        "  pod CIDRs     node-1 10.244.0.0/24, node-2 10.244.1.0/24  (one per node, from the cluster CIDR)",
        "  service CIDR  10.96.0.0/12       virtual: ClusterIPs live only in iptables rules"]
    assert "│   ├── cni0 (bridge) 10.244.0.1/24" in text
    assert "│   │   └── pod a                      10.244.0.2       vetha" in text
    assert "│       └── → node-2     10.244.1.0/24      encapsulated to 172.20.0.12" in text
    assert "└── not on a node: waiting (Pending)" in text
    assert text.endswith("no problems found")


def test_a_broken_tunnel_is_red_in_the_picture_with_its_direction():
    kernel = healthy_kernel()
    kernel["nodes"]["node-1"]["vxlan"]["flannel.1"]["fdb"] = []
    dot = graph.render_dot(topology(kernel))
    assert '"node-1/flannel.1" -> "node-2/flannel.1"' in dot
    assert "node-1 → node-2 10.244.1.0/24: ✗ no FDB entry" in dot
    assert 'problems [shape=note' in dot
    assert graph.render_text(topology(kernel)).endswith("1 problem found")


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz's dot (scripts/setup installs it)")
def test_graphviz_lays_the_dot_out():
    result = subprocess.run(["dot", "-Tsvg"], input=graph.render_dot(topology(healthy_kernel())), text=True,
                            capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "<svg" in result.stdout and "eth0 172.20.0.11" in result.stdout and "10.244.0.2" in result.stdout


def test_as_dict_lists_every_problem_for_scripts():
    kernel = healthy_kernel()
    kernel["nodes"]["node-2"]["routes"] = []
    document = topology(kernel).as_dict()
    assert document["problems"] == ["node-2 -> node-1 (10.244.0.0/24): no route to 10.244.0.0/24"]
    assert document["nodes"][0]["pods"][0]["host_device"] == "vetha"
    json.dumps(document)  # plain values only
