"""Address allocation, as pure functions over what is already in use.

Three allocators, each faithful to the component it stands in for:
- node pod CIDRs: kube-controller-manager's range allocator (``pkg/controller/nodeipam/ipam/
  cidrset``): subnets of the cluster CIDR handed out round-robin from a moving cursor, so the
  first node gets 10.244.0.0/24 and a released CIDR is reused once the cursor wraps;
- pod IPs: the CNI ``host-local`` plugin: from the subnet's second address (the first is the
  gateway) to the last before broadcast, continuing after the last reserved address and
  wrapping, so a just-freed address is not handed out again at once;
- node IPs: the lowest free address of the node network from host ``FIRST_NODE_HOST``.
The callers keep the cursors (``next_index``, ``last_reserved``) in the store.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection

from overlaynet.api.model import FIRST_NODE_HOST
from overlaynet.errors import CapacityError


def node_cidr_at(cluster_cidr: ipaddress.IPv4Network, mask: int, index: int) -> ipaddress.IPv4Network:
    size = 2 ** (32 - mask)
    return ipaddress.IPv4Network((int(cluster_cidr.network_address) + index * size, mask))


def allocate_node_cidr(
    cluster_cidr: ipaddress.IPv4Network,
    mask: int,
    used: Collection[ipaddress.IPv4Network],
    next_index: int = 0,
) -> tuple[ipaddress.IPv4Network, int]:
    """Return the next free pod CIDR and the cursor to store for the next allocation."""
    count = 2 ** (mask - cluster_cidr.prefixlen)
    taken = set(used)
    for step in range(count):
        index = (next_index + step) % count
        candidate = node_cidr_at(cluster_cidr, mask, index)
        if candidate not in taken:
            return candidate, (index + 1) % count
    raise CapacityError(
        f"clusterCIDR {cluster_cidr} holds {count} node CIDRs of /{mask} and all {count} are in use"
    )


def pod_range(pod_cidr: ipaddress.IPv4Network) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """First and last pod address of a node's pod CIDR (gateway and broadcast excluded)."""
    return pod_cidr.network_address + 2, pod_cidr.broadcast_address - 1


def pod_capacity(pod_cidr: ipaddress.IPv4Network) -> int:
    first, last = pod_range(pod_cidr)
    return max(0, int(last) - int(first) + 1)


def allocate_pod_ip(
    node: str,
    pod_cidr: ipaddress.IPv4Network,
    used: Collection[ipaddress.IPv4Address],
    last_reserved: ipaddress.IPv4Address | None = None,
) -> ipaddress.IPv4Address:
    first, last = pod_range(pod_cidr)
    size = int(last) - int(first) + 1
    taken = set(used)
    start = 0
    if last_reserved is not None and first <= last_reserved <= last:
        start = int(last_reserved) - int(first) + 1
    for step in range(size):
        candidate = first + (start + step) % size
        if candidate not in taken:
            return candidate
    raise CapacityError(f'node "{node}": pod CIDR {pod_cidr} has no free address ({size} of {size} in use)')


def allocate_node_ip(
    node_network: ipaddress.IPv4Network, used: Collection[ipaddress.IPv4Address]
) -> ipaddress.IPv4Address:
    taken = set(used)
    for host in range(FIRST_NODE_HOST, node_network.num_addresses - 1):
        candidate = node_network.network_address + host
        if candidate not in taken:
            return candidate
    raise CapacityError(f"nodeNetwork {node_network} has no free node address")
