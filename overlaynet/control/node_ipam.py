"""The node IPAM controller: a joining node's pod CIDR and underlay address.

As kube-controller-manager's ``--allocate-node-cidrs`` does, each node gets its own pod CIDR
carved from the cluster CIDR (the search resumes at a cursor kept in the store, so a CIDR
given back is not reused at once), and, as a cloud provider would, the next free address of
the node network. This module owns that choice and writes the new Node record; the
arithmetic is ``overlaynet.ipam.allocators``' (pure), the kernel objects are the manager's.
"""

from __future__ import annotations

import ipaddress

from overlaynet import names
from overlaynet.api.model import ClusterSpec, NodeSpec
from overlaynet.control.records import NETNS_ANNOTATION, node_info, node_record
from overlaynet.control.store import Store
from overlaynet.datapath.modes import Mode
from overlaynet.datapath.topology import NodeInfo
from overlaynet.ipam import allocators

__all__ = ["CURSOR", "allocate_node"]

CURSOR = "node-cidr-cursor"  # the store's meta key of the pod CIDR search


def allocate_node(store: Store, spec: ClusterSpec, mode: Mode, node_spec: NodeSpec) -> NodeInfo:
    """Address the node and store its record (not Ready yet)."""
    existing = store.list(spec.name, "Node")
    cursor = int(store.get_meta(spec.name, CURSOR, "0"))
    cidr, cursor = allocators.allocate_node_cidr(
        spec.cluster_cidr, spec.node_cidr_mask_size,
        [ipaddress.IPv4Network(n["spec"]["podCIDR"]) for n in existing], cursor,
    )
    ip = allocators.allocate_node_ip(spec.node_network, [node_info(n).ip for n in existing])
    annotations = {NETNS_ANNOTATION: names.node_netns(spec.name, node_spec.name),
                   **mode.node_annotations(spec, node_spec.name, str(ip))}
    record = node_record(node_spec, cidr, ip, annotations)
    with store.transaction():
        store.set_meta(spec.name, CURSOR, str(cursor))
        store.put(spec.name, record)
    return node_info(record)
