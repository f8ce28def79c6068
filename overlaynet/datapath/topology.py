"""What every cluster has whatever its CNI mode: the underlay and the nodes on it (pure).

This module owns the planning of the node network: the underlay namespace with its bridge,
and per node a namespace whose ``eth0`` is a veth on that bridge with the node's address and
IP forwarding on. It also owns the runtime facts planning works from (``NodeInfo``,
``PodInfo``, a stored Node's address: ``internal_ip``) and the assembly of a whole cluster's plan from a mode's per-node, per-peer and
per-pod parts. It never touches the kernel.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

from overlaynet import names
from overlaynet.api.model import ClusterSpec
from overlaynet.datapath.plan import Address, Bridge, Netns, Plan, Route, Sysctl, VethPair


@dataclass(frozen=True)
class NodeInfo:
    """A node as planning sees it: allocated addresses plus the mode's backend data."""

    name: str
    ip: ipaddress.IPv4Address
    pod_cidr: ipaddress.IPv4Network | None
    annotations: tuple[tuple[str, str], ...] = ()
    # Routed mode: the IPAM blocks this node holds (affinity) and the addresses it hosts
    # that belong to other nodes' blocks (borrowed); empty in modes with one pod CIDR.
    blocks: tuple[ipaddress.IPv4Network, ...] = ()
    borrowed: tuple[ipaddress.IPv4Address, ...] = ()

    def annotation(self, key: str) -> str:
        return dict(self.annotations)[key]

    def annotation_json(self, key: str) -> dict:
        return json.loads(self.annotation(key))


def internal_ip(node: dict) -> str:
    """The address of a stored Node object: its ``status.addresses`` entry of type InternalIP."""
    return next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")


@dataclass(frozen=True)
class PodInfo:
    """One pod attachment as a CNI ADD sees it.

    ``netns`` is the sandbox's network namespace, a name under /run/netns or an absolute path
    (``CNI_NETNS``); the runtime creates it before the plugin runs and deletes it after DEL.
    ``container_id`` and ``ifname`` are the CNI attachment key; namespace and name come from
    ``K8S_POD_NAMESPACE``/``K8S_POD_NAME`` and may be empty outside Kubernetes.
    """

    namespace: str
    name: str
    ip: ipaddress.IPv4Address
    node: str
    netns: str
    host_netns: str  # where the node side goes: the runtime's namespace, in which CNI plugins run
    container_id: str = ""
    ifname: str = "eth0"
    ports: tuple[tuple[int, str], ...] = field(default=())

    @property
    def key(self) -> str:
        """What names the attachment's host-side objects: the sandbox (container id and
        interface) when there is one, so a stale DEL of an older sandbox of the same pod
        cannot touch the new one's; else the pod's Kubernetes name."""
        return f"{self.container_id}/{self.ifname}" if self.container_id else f"{self.namespace}/{self.name}"


def plan_underlay(spec: ClusterSpec) -> Plan:
    """The node network: a bridge whose address is the network's router, as on a real LAN,
    and one machine on it that is not a node (where a user outside the cluster would be)."""
    netns = names.underlay_netns(spec.name)
    external = names.external_netns(spec.name)
    prefix = spec.node_network.prefixlen
    return (
        Netns(netns),
        Bridge(netns, names.UNDERLAY_BRIDGE, mtu=spec.underlay_mtu),
        Address(netns, names.UNDERLAY_BRIDGE, f"{spec.underlay_gateway}/{prefix}"),
        Netns(external),
        VethPair(netns=netns, name=names.EXTERNAL_PORT, peer_netns=external, peer_name=names.NODE_UPLINK,
                 mtu=spec.underlay_mtu, master=names.UNDERLAY_BRIDGE),
        Address(external, names.NODE_UPLINK, f"{spec.external_client}/{prefix}"),
        Route(external, dst="0.0.0.0/0", gateway=str(spec.underlay_gateway), dev=names.NODE_UPLINK),
    )


def plan_node_base(spec: ClusterSpec, node: NodeInfo) -> Plan:
    node_ns = names.node_netns(spec.name, node.name)
    return (
        Netns(node_ns),
        VethPair(
            netns=names.underlay_netns(spec.name),
            name=names.node_underlay_port(node.name),
            peer_netns=node_ns,
            peer_name=names.NODE_UPLINK,
            mtu=spec.underlay_mtu,
            master=names.UNDERLAY_BRIDGE,
        ),
        Address(node_ns, names.NODE_UPLINK, f"{node.ip}/{spec.node_network.prefixlen}"),
        # Every node has a default route (Calico's proxy ARP needs one, calico.md §1.3).
        Route(node_ns, dst="0.0.0.0/0", gateway=str(spec.underlay_gateway), dev=names.NODE_UPLINK),
        Sysctl(node_ns, "net.ipv4.ip_forward", "1"),
    )


def plan_node(spec: ClusterSpec, mode, node: NodeInfo, peers: list[NodeInfo]) -> Plan:
    """One node, complete: its base, its mode's devices, then a route set per peer node.

    With a conflist of the user's (``cniConfig``) the node is only its base: pod networking,
    across nodes too, is then entirely the user's plugins' business.
    """
    if spec.cni_config:
        return plan_node_base(spec, node)
    plan = plan_node_base(spec, node) + mode.plan_node(spec, node)
    for peer in peers:
        if peer.name != node.name:
            plan += mode.plan_peer(spec, node, peer)
    return plan


def plan_cluster(spec: ClusterSpec, mode, nodes: list[NodeInfo]) -> Plan:
    plan = plan_underlay(spec)
    for node in nodes:
        plan += plan_node(spec, mode, node, nodes)
    return plan
