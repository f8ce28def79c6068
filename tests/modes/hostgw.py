"""A host-gw mode, as Flannel's ``host-gw`` backend, that lives in the tests only.

It proves a mode is one module behind ``overlaynet.datapath.modes.Mode``: a cluster names it by import
path (``cni: tests.modes.hostgw``), and every process that reads the Cluster document (the
CLI, the agent, a CNI plugin) finds it that way; nothing in ``overlaynet`` knows of it.

What it programs, as flannel's host-gw does (``pkg/backend/hostgw``): no tunnel and no
encapsulation (pod MTU = underlay MTU); pods on ``cni0`` exactly as in the vxlan mode (the
shared ``overlaynet.datapath.modes.bridge``, host-local IPAM over the node's pod CIDR); and per peer
node one plain route ``<peer podCIDR> via <peer node IP> dev eth0``, which works because all
nodes share one L2 network. No BGP, no blocks, no kernel feature beyond routing.

Its main plugin is ``overlaynet-hostgw``, a launcher of the one plugin skeleton that
``write_plugin`` puts into a directory for ``$OVERLAYNET_CNI_PATH``, as a mode shipped on its
own would install it.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping, Sequence

from overlaynet import names
from overlaynet.api.model import ClusterSpec
from overlaynet.datapath.modes import DEFAULT_OPTIONS, IPAM_HOST_LOCAL, Mode, PluginOptions, bridge
from overlaynet.datapath.plan import Plan, Route
from overlaynet.datapath.topology import NodeInfo, PodInfo
from overlaynet.ipam import allocators

PLUGIN = "overlaynet-hostgw"
ANNOTATION_PREFIX = "flannel.alpha.coreos.com/"


class HostGwMode:
    name = "host-gw"
    description = "Flannel-like host-gw (cni0 bridge, a route per peer via its node IP)"
    plugin_type = PLUGIN
    ipam = IPAM_HOST_LOCAL
    kernel_features: tuple[str, ...] = ()
    supports_bgp = False

    def check_spec(self, spec: ClusterSpec) -> None:
        """Every node is on the one node network, as host-gw needs: nothing to refuse."""

    def node_annotations(self, spec: ClusterSpec, node: str, node_ip: str) -> dict[str, str]:
        return {ANNOTATION_PREFIX + "backend-type": "host-gw", ANNOTATION_PREFIX + "public-ip": node_ip}

    def pod_mtu(self, spec: ClusterSpec) -> int:
        return spec.underlay_mtu

    def pod_capacity(self, spec: ClusterSpec, pod_cidr: ipaddress.IPv4Network) -> int:
        return allocators.pod_capacity(pod_cidr)

    def render_conflist_entry(self, spec: ClusterSpec, node: str, pod_cidr: ipaddress.IPv4Network,
                              state_dir: str, data_dir: str) -> dict:
        return bridge.render_bridge_entry(PLUGIN, spec, pod_cidr, self.pod_mtu(spec), data_dir)

    def plan_node(self, spec: ClusterSpec, node: NodeInfo) -> Plan:
        return bridge.plan_bridge(node, names.node_netns(spec.name, node.name), self.pod_mtu(spec))

    def plan_peer(self, spec: ClusterSpec, node: NodeInfo, peer: NodeInfo) -> Plan:
        return (Route(names.node_netns(spec.name, node.name), dst=str(peer.pod_cidr), gateway=str(peer.ip),
                      dev=names.NODE_UPLINK),)

    def plan_blocks(self, spec: ClusterSpec, node: NodeInfo) -> Plan:
        return ()

    def plan_pod(self, spec: ClusterSpec, node: NodeInfo, pod: PodInfo,
                 options: PluginOptions = DEFAULT_OPTIONS) -> Plan:
        return bridge.plan_bridged_pod(spec, node, pod, self.pod_mtu(spec), options)

    def plan_pod_prerequisites(self, spec: ClusterSpec, node: NodeInfo, netns: str, options: PluginOptions) -> Plan:
        return bridge.plan_bridge(node, netns, options.mtu or self.pod_mtu(spec), options.bridge or bridge.BRIDGE)

    def status_problem(self, options: PluginOptions, links: Sequence[Mapping],
                       routes: Sequence[Mapping]) -> tuple[str, str] | None:
        return bridge.bridge_problem(options, links)


MODE: Mode = HostGwMode()


def write_plugin(directory: str) -> str:
    """The mode's main plugin executable in ``directory``: the skeleton under its type name."""
    path = os.path.join(directory, PLUGIN)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"#!{sys.executable} -S\nimport sys\n\nfrom overlaynet.cni import skel\n\n"
                     f"sys.exit(skel.main({PLUGIN!r}))\n")
    os.chmod(path, 0o755)
    return path
