"""overlaynet.cni.attachment: the main plugin's plan of one attachment, without root."""

import ipaddress

from overlaynet.cni import spec
from overlaynet.cni.attachment import host_netns, plan_attachment, pod_info, prev_address, veth_of
from overlaynet.cni.invocation import Invocation
from overlaynet.cni.main_config import parse_main_config
from overlaynet.datapath.plan import Netns, VethPair

CLUSTER = {"apiVersion": "overlaynet/v1", "kind": "Cluster", "metadata": {"name": "att"}, "spec": {"cni": "flannel"}}
CONF = {"cniVersion": "1.0.0", "name": "att", "type": "overlaynet-flannel", "ipam": {"type": "overlaynet-ipam"},
        "overlaynet": {"cluster": CLUSTER,
                       "node": {"name": "node-1", "ip": "172.20.0.11", "podCIDR": "10.244.1.0/24"}}}
POD_IP = ipaddress.IPv4Address("10.244.1.7")


def invocation(container_id: str, netns: str = "/run/netns/att-sandbox") -> Invocation:
    env = spec.parse_env({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
                          "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
                          "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"})
    return Invocation("overlaynet-flannel", env, b"", "/proc/1/ns/net", False)


def planned_veth(container_id: str, fill_macs: bool = True) -> VethPair:
    inv = invocation(container_id)
    cfg = parse_main_config(inv.plugin, CONF)
    return veth_of(plan_attachment(inv, cfg, pod_info(inv, cfg, POD_IP), fill_macs), inv)


def test_the_plan_leaves_the_sandbox_to_the_runtime_and_puts_the_host_side_in_the_runtimes_netns():
    inv = invocation("ctr-1")
    cfg = parse_main_config(inv.plugin, CONF)
    plan = plan_attachment(inv, cfg, pod_info(inv, cfg, POD_IP), fill_macs=True)
    assert not [step for step in plan if isinstance(step, Netns)]
    assert host_netns(inv, cfg) == "/proc/1/ns/net" and veth_of(plan, inv).netns == "/proc/1/ns/net"


def test_veth_macs_are_the_attachments_own_unicast_and_stable_for_a_retried_add():
    first = planned_veth("ctr-1")
    assert first.mac != first.peer_mac
    for mac in (first.mac, first.peer_mac):
        assert int(mac.split(":")[0], 16) & 0x03 == 0x02  # locally administered, unicast
    again = planned_veth("ctr-1")
    assert (again.mac, again.peer_mac) == (first.mac, first.peer_mac)
    newer = planned_veth("ctr-2")  # a newer attachment of the same pod: DEL tells them apart by MAC
    assert newer.mac != first.mac and newer.peer_mac != first.peer_mac
    unfilled = planned_veth("ctr-1", fill_macs=False)
    assert unfilled.mac is None and unfilled.peer_mac is None


def test_prev_address_is_the_sandbox_interfaces_ipv4():
    prev = spec.Result.from_dict({"cniVersion": "1.0.0",
                                  "interfaces": [{"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
                                  "ips": [{"address": "fd00::2/64", "interface": 1},
                                          {"address": "10.244.1.7/24", "interface": 0},
                                          {"address": "10.244.1.8/24", "interface": 1}]}, "prevResult")
    assert prev_address(prev, "eth0") == ipaddress.IPv4Address("10.244.1.8")
    assert prev_address(prev, "eth1") is None and prev_address(None, "eth0") is None
