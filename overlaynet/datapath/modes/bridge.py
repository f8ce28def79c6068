"""The pod side that Flannel's backends share: the CNI ``bridge`` delegate with host-local IPAM.

Whatever carries packets between nodes (flannel's vxlan, host-gw, ...), flannel's CNI plugin
hands every pod to the reference ``bridge`` plugin the same way, and this module plans that
part once for every mode built on it (pure):
- the node's bridge (``cni0``) with the pod CIDR's first address, the pods' gateway;
- per pod a veth whose host side is on the bridge with hairpin on, and the pod's ``eth0``
  with the address host-local IPAM gave it, a default route and a route for the cluster CIDR,
  both via the gateway;
- the conflist entry: the bridge options and host-local IPAM over the node's pod CIDR;
- STATUS: a device that has the bridge's name but is no bridge keeps pods out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from overlaynet import names
from overlaynet.datapath.modes import IPAM_PLUGIN, PluginOptions, pod_cidr_of
from overlaynet.datapath.plan import Address, Bridge, Plan, Route, VethPair

if TYPE_CHECKING:
    from overlaynet.api.model import ClusterSpec
    from overlaynet.datapath.topology import NodeInfo, PodInfo

BRIDGE = "cni0"


def gateway(pod_cidr: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return pod_cidr.network_address + 1


def plan_bridge(node: NodeInfo, netns: str, mtu: int, bridge: str = BRIDGE) -> Plan:
    """The bridge with the pod CIDR's gateway address (the bridge delegate's ``isGateway``)."""
    pod_cidr = pod_cidr_of(node)
    return (Bridge(netns, bridge, mtu=mtu), Address(netns, bridge, f"{gateway(pod_cidr)}/{pod_cidr.prefixlen}"))


def plan_bridged_pod(spec: ClusterSpec, node: NodeInfo, pod: PodInfo, mtu: int, options: PluginOptions) -> Plan:
    """The bridge delegate's part of a CNI ADD."""
    pod_cidr = pod_cidr_of(node)
    via = str(gateway(pod_cidr))
    return (
        VethPair(
            netns=pod.host_netns,
            name=names.pod_host_veth(pod.key),
            peer_netns=pod.netns,
            peer_name=pod.ifname,
            mtu=options.mtu or mtu,
            master=options.bridge or BRIDGE,
            hairpin=options.hairpin,
        ),
        Address(pod.netns, pod.ifname, f"{pod.ip}/{pod_cidr.prefixlen}"),
        Route(pod.netns, dst="0.0.0.0/0", gateway=via, dev=pod.ifname),
        Route(pod.netns, dst=str(spec.cluster_cidr), gateway=via, dev=pod.ifname),
    )


def render_bridge_entry(plugin_type: str, spec: ClusterSpec, pod_cidr: ipaddress.IPv4Network, mtu: int,
                        data_dir: str) -> dict:
    """A conflist entry for ``plugin_type`` with the bridge options and host-local IPAM."""
    return {
        "type": plugin_type, "bridge": BRIDGE, "mtu": mtu, "hairpinMode": True,
        "ipam": {"type": IPAM_PLUGIN, "ranges": [[{"subnet": str(pod_cidr), "gateway": str(gateway(pod_cidr))}]],
                 "routes": [{"dst": "0.0.0.0/0"}, {"dst": str(spec.cluster_cidr)}], "dataDir": data_dir},
    }


def bridge_problem(options: PluginOptions, links: Sequence[Mapping]) -> tuple[str, str] | None:
    """A device named like the bridge that is not one: ADD could not attach pods to it."""
    bridge = options.bridge or BRIDGE
    link = next((link for link in links if link["name"] == bridge), None)
    if link is not None and link["kind"] != "bridge":
        return (f"{bridge} in the node's namespace is a {link['kind'] or 'device'}, not a bridge",
                "ADD cannot attach pods to it")
    return None
