"""The Flannel-like VXLAN mode: what flanneld and its bridge delegate program on a node.

Faithful to flannel's vxlan backend (see shared/reference/flannel.md, sources
flannel-io/flannel pkg/backend/vxlan/{device.go,vxlan_network.go}):
- ``flannel.<VNI>``: VNI 1, ``local <node IP> dev eth0``, UDP 8472 (the kernel's pre-IANA
  default that flannel's ``Port: 0`` means), learning off, MTU = underlay MTU - 50, and the
  node subnet's network address as a /32 (the source of host -> remote pod traffic);
- per peer node, in flannel's order (``handleSubnetEvents``): permanent neighbour
  (peer subnet .0 -> peer VTEP MAC), permanent FDB entry (VTEP MAC -> peer node IP), then the
  ``onlink`` route for the peer subnet, last so the kernel never has to ARP;
- pods as the CNI ``bridge`` delegate wires them (``overlaynet.datapath.modes.bridge``): ``cni0`` with
  the subnet's first address, a veth per pod with hairpin on, the pod's ``eth0`` at the
  flannel MTU with a default route and a route for the cluster CIDR, both via the bridge
  address; addresses from host-local IPAM over the node's subnet.

The VTEP MAC is derived from the cluster and node names (flannel picks a random one and keeps
it in the node annotation ``flannel.alpha.coreos.com/backend-data``; we record ours there too).
Not done here: flannel's FLANNEL-POSTRTG masquerade and FLANNEL-FWD rules (iptables belongs to
the kube-proxy work).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from overlaynet import names
from overlaynet.datapath.modes import (
    DEFAULT_OPTIONS,
    IPAM_HOST_LOCAL,
    KERNEL_VXLAN,
    Mode,
    PluginOptions,
    bridge,
    pod_cidr_of,
)
from overlaynet.datapath.plan import Address, FdbEntry, Neighbour, Plan, Route, Vxlan
from overlaynet.ipam import allocators

if TYPE_CHECKING:
    from overlaynet.api.model import ClusterSpec
    from overlaynet.datapath.topology import NodeInfo, PodInfo

VNI = 1
VXLAN_PORT = 8472
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
PLUGIN = "overlaynet-flannel"
ANNOTATION_PREFIX = "flannel.alpha.coreos.com/"
BACKEND_DATA = ANNOTATION_PREFIX + "backend-data"


class FlannelMode:
    name = "flannel"
    description = "Flannel-like VXLAN overlay (flannel.1, cni0 bridge)"
    plugin_type = PLUGIN
    ipam = IPAM_HOST_LOCAL
    kernel_features: tuple[str, ...] = (KERNEL_VXLAN,)
    supports_bgp = False

    def check_spec(self, spec: ClusterSpec) -> None:
        """Any valid set of ranges will do."""

    def node_annotations(self, spec: ClusterSpec, node: str, node_ip: str) -> dict[str, str]:
        vtep_mac = names.derived_mac(spec.name, "vtep", node)
        return {
            BACKEND_DATA: json.dumps({"VNI": VNI, "VtepMAC": vtep_mac}, separators=(",", ":")),
            ANNOTATION_PREFIX + "backend-type": "vxlan",
            ANNOTATION_PREFIX + "kube-subnet-manager": "true",
            ANNOTATION_PREFIX + "public-ip": node_ip,
        }

    def pod_mtu(self, spec: ClusterSpec) -> int:
        return spec.underlay_mtu - VXLAN_OVERHEAD

    def pod_capacity(self, spec: ClusterSpec, pod_cidr: ipaddress.IPv4Network) -> int:
        return allocators.pod_capacity(pod_cidr)

    def render_conflist_entry(self, spec: ClusterSpec, node: str, pod_cidr: ipaddress.IPv4Network,
                              state_dir: str, data_dir: str) -> dict:
        return bridge.render_bridge_entry(PLUGIN, spec, pod_cidr, self.pod_mtu(spec), data_dir)

    def plan_node(self, spec: ClusterSpec, node: NodeInfo) -> Plan:
        netns = names.node_netns(spec.name, node.name)
        device = names.vxlan_device(VNI)
        return bridge.plan_bridge(node, netns, self.pod_mtu(spec)) + (
            Vxlan(
                netns=netns,
                name=device,
                vni=VNI,
                local=str(node.ip),
                dev=names.NODE_UPLINK,
                port=VXLAN_PORT,
                mtu=self.pod_mtu(spec),
                mac=node.annotation_json(BACKEND_DATA)["VtepMAC"],
            ),
            Address(netns, device, f"{pod_cidr_of(node).network_address}/32"),
        )

    def plan_peer(self, spec: ClusterSpec, node: NodeInfo, peer: NodeInfo) -> Plan:
        netns = names.node_netns(spec.name, node.name)
        device = names.vxlan_device(VNI)
        peer_cidr = pod_cidr_of(peer)
        peer_vtep = str(peer_cidr.network_address)
        peer_mac = peer.annotation_json(BACKEND_DATA)["VtepMAC"]
        return (
            Neighbour(netns, device, ip=peer_vtep, mac=peer_mac),
            FdbEntry(netns, device, mac=peer_mac, dst=str(peer.ip)),
            Route(netns, dst=str(peer_cidr), gateway=peer_vtep, dev=device, onlink=True),
        )

    def plan_blocks(self, spec: ClusterSpec, node: NodeInfo) -> Plan:
        """No blocks: one subnet per node, routed by ``plan_peer``."""
        return ()

    def plan_pod(self, spec: ClusterSpec, node: NodeInfo, pod: PodInfo,
                 options: PluginOptions = DEFAULT_OPTIONS) -> Plan:
        """The bridge delegate's part of a CNI ADD (the sandbox namespace already exists)."""
        return bridge.plan_bridged_pod(spec, node, pod, self.pod_mtu(spec), options)

    def plan_pod_prerequisites(self, spec: ClusterSpec, node: NodeInfo, netns: str, options: PluginOptions) -> Plan:
        return bridge.plan_bridge(node, netns, options.mtu or self.pod_mtu(spec), options.bridge or bridge.BRIDGE)

    def status_problem(self, options: PluginOptions, links: Sequence[Mapping],
                       routes: Sequence[Mapping]) -> tuple[str, str] | None:
        return bridge.bridge_problem(options, links)


MODE: Mode = FlannelMode()
