"""Route distribution for modes with IPAM blocks (Calico-like): what Felix and BIRD do on each node.

IPAM blocks are claimed by nodes on demand, so the routes between nodes change as pods come
and go: each node needs its own blocks' routes (the mode's ``plan_blocks``: Calico blackholes
them) and, from the mode's ``plan_peer``, a route via the owning node for every other node's
block and a /32 via the borrowing node for every borrowed address. By default
overlaynet programs these itself (``proto 80``, Felix's route protocol), remembering in the
store what it applied to each node so that stale routes are removed; with ``bgp: bird`` it
only writes each node's BIRD configuration and BIRD learns the routes over BGP.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace

from overlaynet.api.model import ClusterSpec
from overlaynet.control.records import node_info
from overlaynet.control.seams import Runtime
from overlaynet.control.store import Store
from overlaynet.datapath.modes import get_mode, uses_ipam_blocks
from overlaynet.datapath.plan import Plan, Route
from overlaynet.datapath.topology import NodeInfo
from overlaynet.ipam.blocks import BlockIPAM
from overlaynet.node import bgp_mesh


def node_infos(store: Store, spec: ClusterSpec) -> list[NodeInfo]:
    """Every node with the blocks it holds and the addresses it borrowed, from the IPAM state."""
    ipam = BlockIPAM(store, spec.name, spec.cluster_cidr, spec.block_size)
    return [replace(node_info(record), blocks=ipam.node_blocks(record["metadata"]["name"]),
                    borrowed=ipam.borrowed(record["metadata"]["name"]))
            for record in store.list(spec.name, "Node")]


def plan_routes(spec: ClusterSpec, node: NodeInfo, nodes: list[NodeInfo]) -> Plan:
    """All routes one node needs for the blocks of the whole cluster (pure)."""
    mode = get_mode(spec.cni)
    plan = mode.plan_blocks(spec, node)
    for peer in nodes:
        if peer.name != node.name:
            plan += mode.plan_peer(spec, node, peer)
    return plan


def sync_routes(store: Store, runtime: Runtime, spec: ClusterSpec) -> None:
    """Bring every node's block routes in step with the IPAM state (nothing in a mode without blocks)."""
    if not uses_ipam_blocks(spec):
        return
    nodes = node_infos(store, spec)
    if spec.bgp == "bird":
        bgp_mesh.sync(store, runtime.bird, spec, nodes)
        return
    for node in nodes:
        key = f"routes/{node.name}"
        previous = tuple(Route(**entry) for entry in json.loads(store.get_meta(spec.name, key, "[]")))
        desired = plan_routes(spec, node, nodes)
        stale = tuple(route for route in previous if route not in desired)
        if stale:
            runtime.remove(stale)
        if desired != previous:
            runtime.apply(desired)
            store.set_meta(spec.name, key, json.dumps([asdict(route) for route in desired]))
