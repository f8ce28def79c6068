"""The Flannel-like VXLAN mode: what flanneld and its bridge delegate program on a node.

Faithful to flannel's vxlan backend (see shared/reference/flannel.md, sources
flannel-io/flannel pkg/backend/vxlan/{device.go,vxlan_network.go}):
- ``flannel.<VNI>``: VNI 1, ``local <node IP> dev eth0``, UDP 8472 (the kernel's pre-IANA
  default that flannel's ``Port: 0`` means), learning off, MTU = underlay MTU - 50, and the
  node subnet's network address as a /32 (the source of host -> remote pod traffic);
- per peer node, in flannel's order (``handleSubnetEvents``): permanent neighbour
  (peer subnet .0 -> peer VTEP MAC), permanent FDB entry (VTEP MAC -> peer node IP), then the
  ``onlink`` route for the peer subnet, last so the kernel never has to ARP;
- pods as the CNI ``bridge`` delegate wires them: ``cni0`` with the subnet's first address,
  a veth per pod with hairpin on, the pod's ``eth0`` at the flannel MTU with a default route
  and a route for the cluster CIDR, both via the bridge address.

The VTEP MAC is derived from the cluster and node names (flannel picks a random one and keeps
it in the node annotation ``flannel.alpha.coreos.com/backend-data``; we record ours there too).
Not done here: flannel's FLANNEL-POSTRTG masquerade and FLANNEL-FWD rules (iptables belongs to
the kube-proxy work).
"""

from __future__ import annotations

import json

from overlaynet import names
from overlaynet.model import ClusterSpec
from overlaynet.plan import Address, Bridge, FdbEntry, Neighbour, Plan, Route, VethPair, Vxlan
from overlaynet.topology import NodeInfo, PodInfo

VNI = 1
VXLAN_PORT = 8472
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
BRIDGE = "cni0"
ANNOTATION_PREFIX = "flannel.alpha.coreos.com/"
BACKEND_DATA = ANNOTATION_PREFIX + "backend-data"


class FlannelMode:
    name = "flannel"
    description = "Flannel-like VXLAN overlay (flannel.1, cni0 bridge)"

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

    def plan_node(self, spec: ClusterSpec, node: NodeInfo) -> Plan:
        netns = names.node_netns(spec.name, node.name)
        device = names.vxlan_device(VNI)
        gateway = node.pod_cidr.network_address + 1
        return (
            Bridge(netns, BRIDGE, mtu=self.pod_mtu(spec)),
            Address(netns, BRIDGE, f"{gateway}/{node.pod_cidr.prefixlen}"),
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
            Address(netns, device, f"{node.pod_cidr.network_address}/32"),
        )

    def plan_peer(self, spec: ClusterSpec, node: NodeInfo, peer: NodeInfo) -> Plan:
        netns = names.node_netns(spec.name, node.name)
        device = names.vxlan_device(VNI)
        peer_vtep = str(peer.pod_cidr.network_address)
        peer_mac = peer.annotation_json(BACKEND_DATA)["VtepMAC"]
        return (
            Neighbour(netns, device, ip=peer_vtep, mac=peer_mac),
            FdbEntry(netns, device, mac=peer_mac, dst=str(peer.ip)),
            Route(netns, dst=str(peer.pod_cidr), gateway=peer_vtep, dev=device, onlink=True),
        )

    def plan_pod(self, spec: ClusterSpec, node: NodeInfo, pod: PodInfo) -> Plan:
        """The bridge delegate's part of a CNI ADD (the sandbox namespace already exists)."""
        gateway = str(node.pod_cidr.network_address + 1)
        mtu = self.pod_mtu(spec)
        return (
            VethPair(
                netns=pod.host_netns,
                name=names.pod_host_veth(pod.key),
                peer_netns=pod.netns,
                peer_name=pod.ifname,
                mtu=mtu,
                master=BRIDGE,
                hairpin=True,
            ),
            Address(pod.netns, pod.ifname, f"{pod.ip}/{node.pod_cidr.prefixlen}"),
            Route(pod.netns, dst="0.0.0.0/0", gateway=gateway, dev=pod.ifname),
            Route(pod.netns, dst=str(spec.cluster_cidr), gateway=gateway, dev=pod.ifname),
        )


MODE = FlannelMode()
