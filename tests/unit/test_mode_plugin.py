"""The Mode interface is closed and open: a mode that lives in the tests (``tests.modes.hostgw``,
Flannel's host-gw) is found by its import path and planned, addressed, scheduled and given a
conflist by the same code as the built-in modes; no module outside ``overlaynet.datapath.modes`` names
a mode. No root needed."""

from __future__ import annotations

import ipaddress
import pathlib
import re
import sys
import types

import pytest

from overlaynet import names
from overlaynet.api import model
from overlaynet.api.manifests import parse_document
from overlaynet.control.offline import run_offline
from overlaynet.control.pods import pod_capacity
from overlaynet.datapath import modes, plan, topology
from overlaynet.datapath.modes import Mode, PluginOptions, get_mode
from overlaynet.errors import InvalidInput
from overlaynet.ipam import allocators
from overlaynet.node import kubelet
from tests.modes import hostgw

HOSTGW = "tests.modes.hostgw"


def spec_and_nodes(nodes: int = 3) -> tuple[model.ClusterSpec, list[topology.NodeInfo]]:
    spec = model.build_spec(name="hgw", cni=HOSTGW, nodes=nodes)
    infos = []
    for index, node in enumerate(spec.nodes):
        ip = spec.node_network.network_address + model.FIRST_NODE_HOST + index
        annotations = hostgw.MODE.node_annotations(spec, node.name, str(ip))
        infos.append(topology.NodeInfo(node.name, ip, allocators.node_cidr_at(spec.cluster_cidr, 24, index),
                                       tuple(sorted(annotations.items()))))
    return spec, infos


def pod_on(spec: model.ClusterSpec, node: topology.NodeInfo, name: str = "web") -> topology.PodInfo:
    return topology.PodInfo("default", name, node.pod_cidr.network_address + 2, node.name,
                            names.pod_netns(spec.name, "default", name), names.node_netns(spec.name, node.name),
                            container_id="c" * 64)


def node_record(spec: model.ClusterSpec, node: topology.NodeInfo) -> dict:
    return {"metadata": {"name": node.name, "labels": {}, "annotations": dict(node.annotations)},
            "spec": {"podCIDR": str(node.pod_cidr)},
            "status": {"addresses": [{"type": "InternalIP", "address": str(node.ip)}]}}


# -- found by import path ---------------------------------------------------------------------


def test_a_mode_is_named_by_its_module_path_and_keeps_that_name():
    spec = model.build_spec(cni=HOSTGW)
    assert spec.cni == HOSTGW and spec.to_document()["spec"]["cni"] == HOSTGW
    assert model.spec_from_document(spec.to_document()) == spec
    assert get_mode(spec.cni) is hostgw.MODE and isinstance(hostgw.MODE, Mode)


@pytest.mark.parametrize("cni, words", [
    ("tests.modes.nowhere", 'cni "tests.modes.nowhere": cannot import tests.modes.nowhere'),
    ("tests.modes", 'cni "tests.modes": module tests.modes defines no MODE'),
    ("weave", 'cni "weave" is not a known CNI mode (known: flannel (vxlan), calico (routed); or the import path'),
])
def test_a_name_that_is_no_mode_is_refused_with_the_reason(cni, words):
    with pytest.raises(InvalidInput) as error:
        model.build_spec(name="lab", cni=cni)
    assert str(error.value).startswith('cluster "lab": ') and words in str(error.value)


def test_a_module_whose_mode_lacks_members_is_refused_naming_them(monkeypatch):
    incomplete = types.ModuleType("tests.modes.incomplete")
    incomplete.MODE = types.SimpleNamespace(**{member: None for member in ("name", "description", "plugin_type")})
    monkeypatch.setitem(sys.modules, "tests.modes.incomplete", incomplete)
    with pytest.raises(InvalidInput, match=r"tests.modes.incomplete.MODE is not a Mode: it has no ipam, kernel_features"):
        model.build_spec(cni="tests.modes.incomplete")


@pytest.mark.parametrize("field, value, words", [
    ("ipam", "dhcp", "MODE.ipam 'dhcp' is not one of host-local, blocks"),
    ("kernel_features", ("vxlan", "ipip"), "MODE.kernel_features: 'ipip' not among vxlan"),
])
def test_a_mode_outside_the_closed_sets_is_refused(monkeypatch, field, value, words):
    odd = types.ModuleType("tests.modes.odd")
    odd.MODE = hostgw.HostGwMode()
    setattr(odd.MODE, field, value)
    monkeypatch.setitem(sys.modules, "tests.modes.odd", odd)
    with pytest.raises(InvalidInput, match=re.escape(words)):
        model.build_spec(cni="tests.modes.odd")


def test_bgp_needs_a_mode_that_supports_it():
    with pytest.raises(InvalidInput, match='bgp "bird" needs cni "calico"'):
        model.build_spec(cni=HOSTGW, bgp="bird")


def test_ipam_blocks_are_used_only_by_a_blocks_mode_with_our_plugins():
    assert modes.uses_ipam_blocks(model.build_spec(cni="calico"))
    assert not modes.uses_ipam_blocks(model.build_spec(cni="calico", cni_config="/etc/cni/net.d/x.conflist"))
    assert not modes.uses_ipam_blocks(model.build_spec(cni=HOSTGW))
    assert not modes.uses_ipam_blocks(model.build_spec(cni="flannel"))


# -- planned like any mode ------------------------------------------------------------------


def test_host_gw_routes_each_peer_pod_cidr_via_the_peer_node():
    spec, nodes = spec_and_nodes()
    steps = topology.plan_cluster(spec, hostgw.MODE, nodes)
    node1 = names.node_netns("hgw", "node-1")
    routes = [s for s in steps if isinstance(s, plan.Route) and s.netns == node1 and s.gateway != "172.20.0.1"]
    assert routes == [plan.Route(node1, "10.244.1.0/24", gateway="172.20.0.12", dev="eth0"),
                      plan.Route(node1, "10.244.2.0/24", gateway="172.20.0.13", dev="eth0")]
    assert plan.Bridge(node1, "cni0", mtu=1500) in steps and plan.Address(node1, "cni0", "10.244.0.1/24") in steps
    assert not [s for s in steps if isinstance(s, (plan.Vxlan, plan.FdbEntry, plan.Neighbour))]
    assert hostgw.MODE.plan_blocks(spec, nodes[0]) == ()


def test_host_gw_pods_are_bridged_at_the_underlay_mtu():
    spec, nodes = spec_and_nodes()
    pod = pod_on(spec, nodes[1])
    veth, address, default, cluster = hostgw.MODE.plan_pod(spec, nodes[1], pod)
    assert (veth.master, veth.hairpin, veth.mtu, veth.peer_name) == ("cni0", True, 1500, "eth0")
    assert address == plan.Address(pod.netns, "eth0", "10.244.1.2/24")
    assert (default.dst, default.gateway, cluster.dst, cluster.gateway) == ("0.0.0.0/0", "10.244.1.1",
                                                                            "10.244.0.0/16", "10.244.1.1")
    options = PluginOptions(mtu=1400, bridge="br-pods", hairpin=False)
    veth = hostgw.MODE.plan_pod(spec, nodes[1], pod, options)[0]
    assert (veth.master, veth.hairpin, veth.mtu) == ("br-pods", False, 1400)
    assert hostgw.MODE.plan_pod_prerequisites(spec, nodes[1], pod.host_netns, options) == (
        plan.Bridge(pod.host_netns, "br-pods", mtu=1400), plan.Address(pod.host_netns, "br-pods", "10.244.1.1/24"))


def test_status_refuses_a_bridge_name_taken_by_another_device():
    options = PluginOptions()
    assert hostgw.MODE.status_problem(options, [{"name": "cni0", "kind": "bridge"}], []) is None
    message, _ = hostgw.MODE.status_problem(options, [{"name": "cni0", "kind": "veth"}], [])
    assert message == "cni0 in the node's namespace is a veth, not a bridge"


# -- addressed, scheduled and configured like any mode ---------------------------------------


def test_the_kubelet_renders_the_modes_conflist_entry():
    spec, nodes = spec_and_nodes()
    conflist = kubelet.render_conflist(spec, node_record(spec, nodes[0]), "/state", "/state/hgw.sock")
    entry = conflist["plugins"][0]
    assert entry["type"] == "overlaynet-hostgw" and entry["mtu"] == 1500 and entry["bridge"] == "cni0"
    assert entry["ipam"]["ranges"] == [[{"subnet": "10.244.0.0/24", "gateway": "10.244.0.1"}]]
    assert entry["ipam"]["dataDir"] == kubelet.node_paths("/state", "hgw", "node-1").data_dir
    assert entry["overlaynet"]["cluster"]["spec"]["cni"] == HOSTGW and entry["agentSocket"] == "/state/hgw.sock"


def test_capacity_and_render_addresses_come_from_the_node_pod_cidr():
    spec = model.build_spec(name="hgw", cni=HOSTGW, nodes=2, node_cidr_mask_size=29)
    node = {"spec": {"podCIDR": "10.244.0.0/29"}}
    assert pod_capacity(spec, node) == 5
    manifest = parse_document({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                               "spec": {"replicas": 12, "selector": {"matchLabels": {"app": "web"}},
                                        "template": {"metadata": {"labels": {"app": "web"}},
                                                     "spec": {"containers": [{"name": "web"}]}}}}, "test")
    with run_offline(spec, [manifest]) as manager:
        nodes, pods = manager.nodes(spec.name), manager.pods(spec.name)
    cidrs = {n["metadata"]["name"]: ipaddress.IPv4Network(n["spec"]["podCIDR"]) for n in nodes}
    running = [p for p in pods if p["status"]["phase"] == "Running"]
    assert len(running) == 10  # 5 per /29, the rest stay Pending
    assert all(ipaddress.IPv4Address(p["status"]["podIP"]) in cidrs[p["spec"]["nodeName"]] for p in running)


def test_the_plugin_executable_is_the_skeleton_under_the_modes_type(tmp_path):
    path = hostgw.write_plugin(str(tmp_path))
    text = pathlib.Path(path).read_text()
    assert path.endswith("/overlaynet-hostgw") and "skel.main('overlaynet-hostgw')" in text


# -- nothing outside overlaynet.datapath.modes names a mode ---------------------------------------------


def test_no_module_outside_the_modes_package_names_a_mode():
    package = pathlib.Path(modes.__file__).parent
    root = package.parent
    named = re.compile(r"""["'](flannel|calico|routed)["']|\.cni\s*[!=]=|modes(\.|\s+import\s+)(flannel|calico)\b""")
    offenders = [f"{path.relative_to(root.parent)}:{number}: {line.strip()}"
                 for path in sorted(root.rglob("*.py")) if package not in path.parents
                 for number, line in enumerate(path.read_text().splitlines(), 1) if named.search(line)]
    assert offenders == []


# -- the plugin skeleton takes its mode from the Cluster document ------------------------------


def main_conf(cni: str, plugin_type: str, **extra) -> dict:
    cluster = model.build_spec(name="hgw", cni=cni, nodes=1).to_document()
    return {"cniVersion": "1.0.0", "name": "overlaynet", "type": plugin_type, "ipam": {"type": "overlaynet-ipam"},
            "overlaynet": {"cluster": cluster, "node": {"name": "node-1", "ip": "172.20.0.11",
                                                        "podCIDR": "10.244.0.0/24"}}, **extra}


def test_the_skeleton_runs_the_mode_of_the_document_with_the_entrys_options():
    from overlaynet.cni import main_config

    conf = main_conf(HOSTGW, "overlaynet-hostgw", mtu=1400, bridge="br-pods", hairpinMode=False)
    cfg = main_config.parse_main_config("overlaynet-hostgw", conf)
    assert cfg.mode is hostgw.MODE and cfg.options == PluginOptions(mtu=1400, bridge="br-pods", hairpin=False)
    assert main_config.parse_main_config("overlaynet-flannel", main_conf("vxlan", "overlaynet-flannel")).mode \
        is get_mode("flannel")


def test_the_skeleton_refuses_a_document_whose_mode_another_plugin_wires():
    from overlaynet.cni import main_config, spec
    from overlaynet.errors import CniError

    with pytest.raises(CniError) as error:
        main_config.parse_main_config("overlaynet-flannel", main_conf(HOSTGW, "overlaynet-flannel"))
    assert error.value.code == spec.ERR_UNSUPPORTED_FIELD
    assert "overlaynet-flannel does not wire that mode (its plugin is overlaynet-hostgw)" in error.value.msg
    conf = main_conf(HOSTGW, "overlaynet-hostgw")
    del conf["overlaynet"]["node"]["podCIDR"]
    with pytest.raises(CniError, match="podCIDR is required by the host-gw mode"):
        main_config.parse_main_config("overlaynet-hostgw", conf)
