"""overlaynet.tools.faults: what each fault changes, how it is undone, and what it refuses."""

import ipaddress
import json

import pytest

from overlaynet import names
from overlaynet.api import model
from overlaynet.datapath import topology
from overlaynet.datapath.modes import get_mode
from overlaynet.datapath.plan import FdbEntry, Neighbour, Route, Vxlan
from overlaynet.errors import InvalidInput
from overlaynet.tools import faults as F


def infos(spec):
    mode = get_mode(spec.cni)
    nodes = []
    for index, node in enumerate(spec.nodes):
        ip = str(spec.node_network.network_address + 11 + index)
        nodes.append(topology.NodeInfo(node.name, ipaddress.IPv4Address(ip),
                                       ipaddress.IPv4Network(f"10.244.{index}.0/24"),
                                       tuple(sorted(mode.node_annotations(spec, node.name, ip).items()))))
    return mode, nodes


@pytest.fixture
def flannel():
    spec = model.build_spec(name="ft")
    mode, nodes = infos(spec)
    plan = topology.plan_node(spec, mode, nodes[0], nodes)
    return spec, mode, nodes, plan


def test_mtu_sets_the_tunnel_device_and_restores_the_planned_value(flannel):
    spec, _, _, plan = flannel
    netns = names.node_netns("ft", "node-1")
    fault = F.plan_mtu("node-1", netns, plan, 1400)
    assert fault.inject == (F.SetMtu(netns, "flannel.1", 1400),)
    assert fault.undo == (F.SetMtu(netns, "flannel.1", 1450),)
    assert fault.change == "flannel.1 mtu 1450 -> 1400" and "ping -M do -s 1422" in fault.hint
    without_tunnel = tuple(s for s in plan if not isinstance(s, Vxlan))
    assert F.plan_mtu("node-1", netns, without_tunnel, 1400).undo == (F.SetMtu(netns, "eth0", spec.underlay_mtu),)
    with pytest.raises(InvalidInput, match=r'node "node-1": fault mtu: --mtu 1450 is flannel.1\'s MTU already'):
        F.plan_mtu("node-1", netns, plan, 1450)
    with pytest.raises(InvalidInput, match="out of range 68-65535"):
        F.plan_mtu("node-1", netns, plan, 20)


def test_route_fdb_and_neigh_delete_planned_objects_and_recreate_them(flannel):
    spec, mode, nodes, plan = flannel
    fault = F.plan_route("node-1", plan, "10.244.1.0/24", learned_by_bgp=False)
    (route,) = fault.inject[0].steps
    assert isinstance(route, Route) and route.gateway == "10.244.1.0" and route.onlink
    assert fault.undo == (F.ApplySteps((route,)),)
    assert fault.hint == "overlaynet exec node/node-1 -- ip route get 10.244.1.1"
    with pytest.raises(InvalidInput, match=r"no planned route to 10.9.0.0/24 \(its routes to peers: "
                                           r"10.244.1.0/24, 10.244.2.0/24\)"):
        F.plan_route("node-1", plan, "10.9.0.0/24", learned_by_bgp=False)
    with pytest.raises(InvalidInput, match="BIRD's"):
        F.plan_route("node-1", plan, "10.244.1.0/24", learned_by_bgp=True)
    peer = mode.plan_peer(spec, nodes[0], nodes[1])
    fdb = F.plan_fdb("node-1", "node-2", peer, spec.cni)
    assert [type(s) for s in fdb.inject[0].steps] == [FdbEntry] and fdb.inject[0].steps[0].dst == "172.20.0.12"
    assert fdb.hint == "overlaynet exec node/node-1 -- bridge fdb show dev flannel.1"
    neigh = F.plan_neigh("node-1", "node-2", peer, spec.cni)
    assert [type(s) for s in neigh.undo[0].steps] == [Neighbour]


def test_vxlan_faults_on_a_routed_cluster_and_bird_without_bgp_are_refused():
    spec = model.build_spec(name="fc", cni="calico")
    mode, nodes = infos(spec)
    peer = mode.plan_peer(spec, nodes[0], nodes[1])
    with pytest.raises(InvalidInput, match='node "node-1": fault fdb: cni calico plans no VXLAN FDB entry for peer '
                                           '"node-2"'):
        F.plan_fdb("node-1", "node-2", peer, spec.cni)
    with pytest.raises(InvalidInput, match='cluster "fc": fault bird: bgp is off'):
        F.plan_bird("node-1", "fc", None)
    assert F.plan_bird("node-1", "fc", "bird").undo == (F.StartBird("node-1"),)


def test_masquerade_is_one_rule_with_a_comment_naming_the_fault():
    fault = F.plan_masquerade("node-1", "ft.node.node-1", "10.244.0.0/16", "fault-3")
    rule = fault.inject[0].rule
    assert rule == ('-A POSTROUTING -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment '
                    '"overlaynet fault fault-3: stray MASQUERADE" -j MASQUERADE')
    assert fault.undo == (F.DeleteRule("ft.node.node-1", "nat", rule),)


def test_a_record_round_trips_through_json_and_says_what_clear_does(flannel):
    _, _, _, plan = flannel
    for fault in (F.plan_route("node-1", plan, "10.244.1.0/24", False), F.plan_mtu("node-1", "n", plan, 1400),
                  F.plan_masquerade("node-1", "n", "10.244.0.0/16", "fault-1"), F.plan_bird("node-1", "c", "bird")):
        record = json.loads(json.dumps(F.fault_record("fault-1", fault, "2026-01-01T00:00:00Z")))
        assert record["kind"] == "Fault" and record["status"]["phase"] == "Injecting"
        assert F.fault_of(record) == fault
    assert F.undo_words(F.plan_mtu("node-1", "n", plan, 1400)) == "flannel.1 mtu 1450 again"


def test_the_same_fault_twice_is_refused(flannel):
    _, _, _, plan = flannel
    fault = F.plan_mtu("node-1", "n", plan, 1400)
    active = [F.fault_record("fault-1", fault, "t")]
    with pytest.raises(InvalidInput, match="fault-1 .* is active already"):
        F.check_not_active(F.plan_mtu("node-1", "n", plan, 1300), active)
    F.check_not_active(F.plan_mtu("node-2", "n", plan, 1300), active)
    F.check_not_active(F.plan_route("node-1", plan, "10.244.1.0/24", False), active)
