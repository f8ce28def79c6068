"""The desired state of a cluster, as plain validated values (pure: no I/O).

This module owns the ``Cluster`` document (nodes, CNI mode and the four address ranges) and
the checks that make the ranges consistent *before* anything is created:

- node network   the underlay the nodes' ``eth0`` live on (e.g. 172.20.0.0/24)
- cluster CIDR   every pod address (Kubernetes ``--cluster-cidr``, Flannel ``Network``)
- node mask      the prefix length of each node's pod CIDR (``--node-cidr-mask-size``)
- service CIDR   ClusterIPs (``--service-cluster-ip-range``)

Defaults are Kubernetes' and Flannel's: 10.244.0.0/16, /24 per node, 10.96.0.0/12.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from overlaynet import names
from overlaynet.datapath.modes import DEFAULT_MODE, canonical_mode, check_cluster
from overlaynet.errors import CapacityError, invalid

if TYPE_CHECKING:
    from overlaynet.api.loadbalancer import AddressPool

DEFAULT_CLUSTER_NAME = "overlaynet"
DEFAULT_NODE_COUNT = 3
DEFAULT_CNI = DEFAULT_MODE
DEFAULT_CLUSTER_CIDR = "10.244.0.0/16"
DEFAULT_NODE_MASK = 24
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
DEFAULT_NODE_NETWORK = "172.20.0.0/24"
DEFAULT_UNDERLAY_MTU = 1500
DEFAULT_BLOCK_SIZE = 26  # Calico's IPv4 IPPool default
DEFAULT_BGP_AS = 64512  # Calico's default node-to-node mesh AS
DEFAULT_CLUSTER_DOMAIN = "cluster.local"  # the kubelet's --cluster-domain, CoreDNS's kubernetes zone
# kubeadm puts the cluster DNS at the service CIDR's tenth address (its GetDNSIP): 10.96.0.10.
DNS_SERVICE_INDEX = 10
BGP_MODES = ("none", "bird")
# Node addresses start at the 11th host of the node network (172.20.0.11, .12, ...), as in
# the usual Vagrant labs; the first ten are left for gateways and outside clients.
FIRST_NODE_HOST = 11
# Two addresses of every pod CIDR are not for pods (network and broadcast) and one is the
# gateway; a /30 holds exactly one pod, as with the CNI host-local plugin.
LONGEST_NODE_MASK = 30


@dataclass(frozen=True)
class NodeSpec:
    name: str
    labels: tuple[tuple[str, str], ...] = ()

    def label_dict(self) -> dict[str, str]:
        return {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", **dict(self.labels)}


@dataclass(frozen=True)
class ClusterSpec:
    name: str = DEFAULT_CLUSTER_NAME
    nodes: tuple[NodeSpec, ...] = field(
        default_factory=lambda: tuple(NodeSpec(f"node-{i}") for i in range(1, DEFAULT_NODE_COUNT + 1))
    )
    cni: str = DEFAULT_CNI
    cluster_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network(DEFAULT_CLUSTER_CIDR)
    node_cidr_mask_size: int = DEFAULT_NODE_MASK
    service_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network(DEFAULT_SERVICE_CIDR)
    node_network: ipaddress.IPv4Network = ipaddress.IPv4Network(DEFAULT_NODE_NETWORK)
    underlay_mtu: int = DEFAULT_UNDERLAY_MTU
    block_size: int = DEFAULT_BLOCK_SIZE  # modes with IPAM blocks: the block prefix length
    bgp: str = "none"  # modes that support it: "bird" runs a BIRD 2 full mesh in every node
    cni_config: str | None = None  # a conflist of the user's instead of ours
    load_balancer_pool: str | None = None  # LoadBalancer addresses; None: api.loadbalancer.default_pool
    dns: bool = True  # the cluster DNS add-on (control/dns.py): CoreDNS pods and the kube-dns Service
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    # The reconciliation loop (control/heal.py): what is deleted behind overlaynet's back comes
    # back within a second, as flanneld, Felix and the kubelet put it back. Off by default, so
    # that a learner's break-it step stays broken until they repair it.
    self_heal: bool = False

    @property
    def dns_service_ip(self) -> ipaddress.IPv4Address:
        """The kube-dns Service's ClusterIP: the service CIDR's tenth address, as kubeadm picks it."""
        return self.service_cidr.network_address + DNS_SERVICE_INDEX

    @property
    def external_client(self) -> ipaddress.IPv4Address:
        """The outside client's address on the node network (NodePorts are tried from there)."""
        return self.node_network.network_address + 2

    @property
    def underlay_gateway(self) -> ipaddress.IPv4Address:
        """The node network's router (the underlay bridge's address), every node's default gateway."""
        return self.node_network.network_address + 1

    @property
    def node_subnet_count(self) -> int:
        return 2 ** (self.node_cidr_mask_size - self.cluster_cidr.prefixlen)

    @property
    def node_address_count(self) -> int:
        """How many node addresses the node network offers from FIRST_NODE_HOST up."""
        return max(0, self.node_network.num_addresses - 1 - FIRST_NODE_HOST)

    def to_document(self) -> dict:
        """The Cluster document this spec round-trips through (store, ``get clusters -o yaml``)."""
        return {
            "apiVersion": "overlaynet.dev/v1alpha1",
            "kind": "Cluster",
            "metadata": {"name": self.name},
            "spec": {
                "nodes": [{"name": n.name, **({"labels": dict(n.labels)} if n.labels else {})} for n in self.nodes],
                "cni": self.cni,
                "clusterCIDR": str(self.cluster_cidr),
                "nodeCIDRMaskSize": self.node_cidr_mask_size,
                "serviceCIDR": str(self.service_cidr),
                "nodeNetwork": str(self.node_network),
                "mtu": self.underlay_mtu,
                "blockSize": self.block_size,
                "bgp": self.bgp,
                **({"cniConfig": self.cni_config} if self.cni_config else {}),
                **({"loadBalancerPool": self.load_balancer_pool} if self.load_balancer_pool else {}),
                "dns": self.dns,
                "clusterDomain": self.cluster_domain,
                "selfHeal": self.self_heal,
            },
        }


def parse_cidr(cluster: str, field_name: str, value: object) -> ipaddress.IPv4Network:
    """Parse an IPv4 CIDR strictly; the error names the cluster and the field."""
    text = str(value)
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        reason = "host bits are set" if "host bits" in str(exc) else "not a valid CIDR"
        raise invalid("cluster", cluster, f"{field_name} {text!r}: {reason} (e.g. 10.244.0.0/16)") from None
    if network.version != 4:
        raise invalid("cluster", cluster, f"{field_name} {text!r}: only IPv4 ranges are supported")
    return network


def _int_field(cluster: str, field_name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            raise invalid("cluster", cluster, f"{field_name} {value!r} is not a whole number") from None
    if not low <= value <= high:
        raise invalid("cluster", cluster, f"{field_name} {value} is out of range {low}-{high}")
    return value


def build_spec(
    name: str = DEFAULT_CLUSTER_NAME,
    nodes: int | list | None = None,
    cni: str = DEFAULT_CNI,
    cluster_cidr: object = DEFAULT_CLUSTER_CIDR,
    node_cidr_mask_size: object = DEFAULT_NODE_MASK,
    service_cidr: object = DEFAULT_SERVICE_CIDR,
    node_network: object = DEFAULT_NODE_NETWORK,
    mtu: object = DEFAULT_UNDERLAY_MTU,
    block_size: object = DEFAULT_BLOCK_SIZE,
    bgp: object = "none",
    cni_config: str | None = None,
    load_balancer_pool: object = None,
    dns: object = True,
    cluster_domain: object = DEFAULT_CLUSTER_DOMAIN,
    self_heal: object = False,
) -> ClusterSpec:
    """Build and fully validate a ``ClusterSpec`` from raw values (flags or a document)."""
    names.check_cluster_name(name)
    node_specs = _node_specs(name, DEFAULT_NODE_COUNT if nodes is None else nodes)
    spec = ClusterSpec(
        name=name,
        nodes=node_specs,
        cni=canonical_mode(name, cni),
        cluster_cidr=parse_cidr(name, "clusterCIDR", cluster_cidr),
        node_cidr_mask_size=_int_field(name, "nodeCIDRMaskSize", node_cidr_mask_size, 1, 32),
        service_cidr=parse_cidr(name, "serviceCIDR", service_cidr),
        node_network=parse_cidr(name, "nodeNetwork", node_network),
        underlay_mtu=_int_field(name, "mtu", mtu, 1280, 65535),
        block_size=_int_field(name, "blockSize", block_size, 20, 32),
        bgp=_choice(name, "bgp", bgp, BGP_MODES),
        cni_config=cni_config,
        load_balancer_pool=None if load_balancer_pool in (None, "") else str(load_balancer_pool),
        dns=_bool_field(name, "dns", dns),
        cluster_domain=_cluster_domain(name, cluster_domain),
        self_heal=_bool_field(name, "selfHeal", self_heal),
    )
    check_ranges(spec)
    if spec.dns and spec.service_cidr.num_addresses <= DNS_SERVICE_INDEX + 1:
        raise invalid("cluster", name, f"serviceCIDR {spec.service_cidr} has no tenth address for the cluster DNS "
                                       "(kube-dns); use a larger range or dns: false")
    if spec.load_balancer_pool is not None:
        address_pool(spec)  # the pool is checked now; the error names the field

    check_cluster(spec)  # the mode's rules
    return spec


def address_pool(spec: ClusterSpec) -> AddressPool:
    """The LoadBalancer address pool (``api.loadbalancer.AddressPool``), checked against the node
    network, its gateway, the external client and the nodes."""
    from overlaynet.api.loadbalancer import default_pool, parse_pool  # it imports the Service API

    taken = {spec.underlay_gateway: "the node network's gateway", spec.external_client: "the external client"}
    taken.update({spec.node_network.network_address + FIRST_NODE_HOST + i: f'node "{n.name}"'
                  for i, n in enumerate(spec.nodes)})
    return parse_pool(spec.name, spec.load_balancer_pool or default_pool(spec.node_network), spec.node_network, taken)


def _bool_field(cluster: str, field_name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise invalid("cluster", cluster, f"{field_name} {value!r} must be true or false")
    return value


def _cluster_domain(cluster: str, value: object) -> str:
    """clusterDomain: a DNS-1123 subdomain (the kubelet's --cluster-domain), without a trailing dot."""
    text = value if isinstance(value, str) else ""
    if not names.is_subdomain(text):
        raise invalid("cluster", cluster, f"clusterDomain {value!r} must be a DNS-1123 subdomain "
                                          "(lower case labels of alphanumerics or '-' joined by dots, e.g. cluster.local)")
    return text


def _choice(cluster: str, field_name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise invalid("cluster", cluster, f'{field_name} "{value}" is not one of: {", ".join(allowed)}')
    return str(value)


def _node_specs(cluster: str, nodes: int | list) -> tuple[NodeSpec, ...]:
    if isinstance(nodes, int) and not isinstance(nodes, bool):
        if nodes < 1:
            raise invalid("cluster", cluster, f"nodes {nodes}: a cluster needs at least 1 node")
        return tuple(NodeSpec(f"node-{i}") for i in range(1, nodes + 1))
    if not isinstance(nodes, list) or not nodes:
        raise invalid("cluster", cluster, "nodes must be a count or a non-empty list of {name, labels}")
    specs, seen = [], set()
    for index, entry in enumerate(nodes):
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or "name" not in entry:
            raise invalid("cluster", cluster, f"nodes[{index}] must be a name or a mapping with a name")
        node_name = names.check_label("node", entry["name"])
        if node_name in seen:
            raise invalid("cluster", cluster, f'nodes[{index}]: duplicate node name "{node_name}"')
        seen.add(node_name)
        labels = entry.get("labels") or {}
        if not isinstance(labels, dict):
            raise invalid("node", node_name, "labels must be a mapping of strings")
        specs.append(NodeSpec(node_name, tuple(sorted((str(k), str(v)) for k, v in labels.items()))))
    return tuple(specs)


def check_ranges(spec: ClusterSpec) -> None:
    """The four ranges must fit together; each error names the ranges involved."""
    cluster = spec.name
    if spec.node_cidr_mask_size < spec.cluster_cidr.prefixlen:
        raise invalid(
            "cluster", cluster,
            f"nodeCIDRMaskSize /{spec.node_cidr_mask_size} is shorter than clusterCIDR "
            f"{spec.cluster_cidr} (/{spec.cluster_cidr.prefixlen}): a node's pod CIDR must fit inside the cluster CIDR",
        )
    if spec.node_cidr_mask_size > LONGEST_NODE_MASK:
        raise invalid(
            "cluster", cluster,
            f"nodeCIDRMaskSize /{spec.node_cidr_mask_size} leaves no address for a pod "
            f"(a pod CIDR needs network, gateway, one pod and broadcast: at most /{LONGEST_NODE_MASK})",
        )
    named = [("nodeNetwork", spec.node_network), ("clusterCIDR", spec.cluster_cidr), ("serviceCIDR", spec.service_cidr)]
    for i, (name_a, net_a) in enumerate(named):
        for name_b, net_b in named[i + 1:]:
            if net_a.overlaps(net_b):
                raise invalid("cluster", cluster, f"{name_a} {net_a} overlaps {name_b} {net_b}")
    if len(spec.nodes) > spec.node_subnet_count:
        raise CapacityError(
            f'cluster "{cluster}": {len(spec.nodes)} nodes need {len(spec.nodes)} pod CIDRs of '
            f"/{spec.node_cidr_mask_size}, but clusterCIDR {spec.cluster_cidr} holds only {spec.node_subnet_count}"
        )
    if len(spec.nodes) > spec.node_address_count:
        raise CapacityError(
            f'cluster "{cluster}": {len(spec.nodes)} nodes need {len(spec.nodes)} addresses, but nodeNetwork '
            f"{spec.node_network} offers only {spec.node_address_count} (node addresses start at host .{FIRST_NODE_HOST})"
        )


def check_host_overlap(spec: ClusterSpec, host_networks: list[ipaddress.IPv4Network]) -> None:
    """Refuse ranges that overlap a network the host itself is on (would shadow real routes for a learner)."""
    for field_name, network in (("nodeNetwork", spec.node_network), ("clusterCIDR", spec.cluster_cidr),
                                ("serviceCIDR", spec.service_cidr)):
        for host_network in host_networks:
            if network.overlaps(host_network):
                raise invalid(
                    "cluster", spec.name,
                    f"{field_name} {network} overlaps the host's network {host_network}; choose another range",
                )


def document_arguments(name: str, spec: dict) -> dict:
    """``build_spec``'s keyword arguments from a Cluster document's ``spec`` (defaults filled)."""
    return {
        "name": name,
        "nodes": spec.get("nodes"),
        "cni": spec.get("cni", DEFAULT_CNI),
        "cluster_cidr": spec.get("clusterCIDR", DEFAULT_CLUSTER_CIDR),
        "node_cidr_mask_size": spec.get("nodeCIDRMaskSize", DEFAULT_NODE_MASK),
        "service_cidr": spec.get("serviceCIDR", DEFAULT_SERVICE_CIDR),
        "node_network": spec.get("nodeNetwork", DEFAULT_NODE_NETWORK),
        "mtu": spec.get("mtu", DEFAULT_UNDERLAY_MTU),
        "block_size": spec.get("blockSize", DEFAULT_BLOCK_SIZE),
        "bgp": spec.get("bgp", "none"),
        "cni_config": spec.get("cniConfig"),
        "load_balancer_pool": spec.get("loadBalancerPool"),
        "dns": spec.get("dns", True),
        "cluster_domain": spec.get("clusterDomain", DEFAULT_CLUSTER_DOMAIN),
        "self_heal": spec.get("selfHeal", False),
    }


def spec_from_document(document: dict) -> ClusterSpec:
    """The spec of a stored Cluster document (the inverse of ``ClusterSpec.to_document``)."""
    return build_spec(**document_arguments(document["metadata"]["name"], document["spec"]))
