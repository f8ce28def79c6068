"""The Calico-like routed mode: what Calico's CNI plugin and Felix/BIRD program on a node.

Faithful to shared/reference/calico.md §1, §2 and §4 (sources: projectcalico/calico
``cni-plugin/pkg/dataplane/linux/dataplane_linux.go``,
``libcalico-go/lib/backend/k8s/conversion/workload_endpoint_default.go``,
``felix/dataplane/linux/dataplanedefs/dataplane_defs.go``):

- no encapsulation and no bridge: the pod MTU is the underlay MTU;
- a pod's ``eth0`` has ``<podIP>/32`` and two routes, ``169.254.1.1 dev eth0 scope link`` then
  ``default via 169.254.1.1 dev eth0``; nothing answers for 169.254.1.1 but the host side of the
  veth, through proxy ARP, with the MAC ``ee:ee:ee:ee:ee:ee`` that every host veth carries;
- the host side is ``cali`` + 11 hex characters of SHA-1 of ``"<namespace>.<pod>"``
  (``VethNameForWorkload`` in workload_endpoint_default.go), has no address, and gets
  ``proxy_arp=1``, ``neigh/<if>/proxy_delay=0``, ``forwarding=1`` and ``route_localnet=1``;
  outside Kubernetes (no pod name) it is ``cali`` + the first 11 characters of the container
  id, as the plugin names it for other orchestrators (``cni-plugin/pkg/plugin/plugin.go``);
- the node reaches each pod through ``<podIP> dev cali… scope link``;
- the node netns needs a default route out of a non-``cali`` interface: proxy ARP only answers
  for a target the host can route elsewhere (calico.md §1.3, projectcalico/calico#3270). Every
  node's base (``topology.plan_node_base``) has one, via the underlay bridge, so this mode adds
  no device of its own to a node;
- the node's IPAM blocks (``overlaynet.ipam.blocks``) are blackholed (``plan_blocks``), so a pod
  address of this node that is not (or no longer) present is dropped, not sent to the default
  route; peers route each block via the node's IP and each address the node borrowed from
  another node's block as a /32 (``plan_peer``). Felix marks the routes it programs with
  protocol 80; with BGP, BIRD programs the same routes as ``proto bird`` instead and these two
  planners are not used (``overlaynet.node.bird_config`` renders BIRD's configuration).

Not done here: Felix's iptables chains (``cali-*``) and IPIP/VXLAN encapsulation.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from overlaynet import names
from overlaynet.datapath.modes import DEFAULT_OPTIONS, IPAM_BLOCKS, IPAM_PLUGIN, Mode, PluginOptions
from overlaynet.datapath.plan import Address, Plan, Route, Sysctl, VethPair
from overlaynet.errors import InvalidInput, InvalidName, invalid

if TYPE_CHECKING:
    from overlaynet.api.model import ClusterSpec
    from overlaynet.datapath.topology import NodeInfo, PodInfo

PLUGIN = "overlaynet-calico"
VETH_PREFIX = "cali"  # FELIX_INTERFACEPREFIX's default
HOST_VETH_MAC = "ee:ee:ee:ee:ee:ee"
POD_GATEWAY = "169.254.1.1"
FELIX_ROUTE_PROTO = "80"  # felix/dataplane/linux/dataplanedefs: routes Felix programs
ANNOTATION_PREFIX = "projectcalico.org/"
IPV4_ADDRESS = ANNOTATION_PREFIX + "IPv4Address"


def host_veth_name(pod: PodInfo) -> str:
    """``cali`` + sha1("<namespace>.<pod>")[:11]; without a pod name, ``cali`` + the
    container id's first 11 characters (hashed too if they are not valid in a name)."""
    if pod.name:
        digest = hashlib.sha1(f"{pod.namespace}.{pod.name}".encode()).hexdigest()
        return names.check_ifname(VETH_PREFIX + digest[:11])
    if not pod.container_id:
        raise InvalidInput(f'pod attachment "{pod.key}": needs a pod name or a container id to name its veth')
    candidate = VETH_PREFIX + pod.container_id[:11]
    try:
        return names.check_ifname(candidate)
    except InvalidName:
        digest = hashlib.sha1(pod.container_id.encode()).hexdigest()
        return names.check_ifname(VETH_PREFIX + digest[:11])


def _dev_sysctl(dev: str, *path: str) -> str:
    """A per-device sysctl key; the ``/`` form when the device name has a dot (see
    ``kernel.apply._sysctl_path``: a dotted key would split the name)."""
    if "." in dev:
        return "/".join(("net", "ipv4", path[0], dev, *path[1:]))
    return ".".join(("net", "ipv4", path[0], dev, *path[1:]))


class CalicoMode:
    name = "calico"
    description = "Calico-like routed mode (cali* veths with proxy ARP, IPAM blocks, no encapsulation)"
    plugin_type = PLUGIN
    ipam = IPAM_BLOCKS
    kernel_features: tuple[str, ...] = ()
    supports_bgp = True

    def check_spec(self, spec: ClusterSpec) -> None:
        """The pool (the cluster CIDR) must hold at least one block."""
        if spec.block_size < spec.cluster_cidr.prefixlen:
            raise invalid("cluster", spec.name, f"clusterCIDR {spec.cluster_cidr} (the IP pool) is smaller than one "
                                                f"IPAM block of /{spec.block_size}")

    def node_annotations(self, spec: ClusterSpec, node: str, node_ip: str) -> dict[str, str]:
        # What calico-node records on the Node (its autodetected address with the prefix).
        return {IPV4_ADDRESS: f"{node_ip}/{spec.node_network.prefixlen}"}

    def pod_mtu(self, spec: ClusterSpec) -> int:
        return spec.underlay_mtu

    def pod_capacity(self, spec: ClusterSpec, pod_cidr: ipaddress.IPv4Network) -> int:
        """Any node can take addresses from anywhere in the pool (borrowing from others' blocks)."""
        return spec.cluster_cidr.num_addresses

    def render_conflist_entry(self, spec: ClusterSpec, node: str, pod_cidr: ipaddress.IPv4Network,
                              state_dir: str, data_dir: str) -> dict:
        return {
            "type": PLUGIN, "mtu": self.pod_mtu(spec),
            "ipam": {"type": IPAM_PLUGIN, "mode": IPAM_BLOCKS, "stateDir": state_dir, "cluster": spec.name,
                     "pool": str(spec.cluster_cidr), "blockSize": spec.block_size, "node": node},
        }

    def plan_node(self, spec: ClusterSpec, node: NodeInfo) -> Plan:
        """Nothing beyond the base: no bridge, no tunnel. The default route proxy ARP needs is
        in every node's base plan (``topology.plan_node_base``)."""
        return ()

    def plan_blocks(self, spec: ClusterSpec, node: NodeInfo) -> Plan:
        """The node's own blocks as ``blackhole <block> proto 80`` (routes without BGP)."""
        netns = names.node_netns(spec.name, node.name)
        return tuple(Route(netns, str(block), type="blackhole", proto=FELIX_ROUTE_PROTO)
                     for block in node.blocks)

    def plan_peer(self, spec: ClusterSpec, node: NodeInfo, peer: NodeInfo) -> Plan:
        """In ``node``: each block of ``peer`` via the peer's IP, then each address the peer
        borrowed as a /32 (longer than the owner's block route, so it wins)."""
        netns = names.node_netns(spec.name, node.name)
        via = str(peer.ip)
        routes = [Route(netns, str(block), gateway=via, dev=names.NODE_UPLINK, proto=FELIX_ROUTE_PROTO)
                  for block in peer.blocks]
        routes += [Route(netns, f"{ip}/32", gateway=via, dev=names.NODE_UPLINK, proto=FELIX_ROUTE_PROTO)
                   for ip in peer.borrowed]
        return tuple(routes)

    def plan_pod(self, spec: ClusterSpec, node: NodeInfo, pod: PodInfo,
                 options: PluginOptions = DEFAULT_OPTIONS) -> Plan:
        """The Calico CNI plugin's part of an ADD (the sandbox namespace already exists); of
        the options only ``mtu`` applies (no bridge)."""
        veth = host_veth_name(pod)
        host = pod.host_netns
        return (
            VethPair(
                netns=host,
                name=veth,
                peer_netns=pod.netns,
                peer_name=pod.ifname,
                mtu=options.mtu or self.pod_mtu(spec),
                mac=HOST_VETH_MAC,
            ),
            Address(pod.netns, pod.ifname, f"{pod.ip}/32"),
            Route(pod.netns, f"{POD_GATEWAY}/32", dev=pod.ifname, scope="link"),
            Route(pod.netns, "0.0.0.0/0", gateway=POD_GATEWAY, dev=pod.ifname),
            Sysctl(host, _dev_sysctl(veth, "conf", "proxy_arp"), "1"),
            Sysctl(host, _dev_sysctl(veth, "neigh", "proxy_delay"), "0"),
            Sysctl(host, _dev_sysctl(veth, "conf", "forwarding"), "1"),
            Sysctl(host, _dev_sysctl(veth, "conf", "route_localnet"), "1"),
            Route(host, f"{pod.ip}/32", dev=veth, scope="link"),
        )

    def plan_pod_prerequisites(self, spec: ClusterSpec, node: NodeInfo, netns: str, options: PluginOptions) -> Plan:
        """Nothing: the host side of a pod is its own veth."""
        return ()

    def status_problem(self, options: PluginOptions, links: Sequence[Mapping],
                       routes: Sequence[Mapping]) -> tuple[str, str] | None:
        if not any(r["dst"] == "0.0.0.0/0" and r["type"] == "unicast" for r in routes):
            return ("the node has no default route",
                    "proxy ARP answers pods only for targets the node can route (calico.md §1.3)")
        return None


MODE: Mode = CalicoMode()
