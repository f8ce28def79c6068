"""LoadBalancer Services on one host: the address pool, the service controller's allocation and
the layer-2 speaker's election, as MetalLB's layer-2 mode does them (pure: no store, no kernel).

What this module owns:
- the Cluster's ``loadBalancerPool`` (``172.20.0.200-172.20.0.250`` or a CIDR; default: hosts
  200/256 to 250/256 of the node network, 172.20.0.200-172.20.0.250 for the default /24), checked
  to lie inside the node network and to miss the gateway, the external client and every node;
- ``allocate_load_balancers``: the address each ``type: LoadBalancer`` Service gets
  (``status.loadBalancer.ingress[0].ip``), lowest free first; ``spec.loadBalancerIP`` honoured when
  it is in the pool and free, otherwise the Service stays ``<pending>`` with MetalLB's reason;
- ``elect_speaker``: the one node that answers ARP for an address (MetalLB
  ``speaker/layer2_controller.go`` ShouldAnnounce: the candidates are the nodes with a ready
  endpoint for ``externalTrafficPolicy: Local``, every node otherwise, and none without any ready
  endpoint; they are ordered by SHA-256 of ``<node>#<ip>`` and the first wins).

What it never does: create the announcement (``node/speaker.py`` plans it, ``kernel/`` makes it)
or render kube-proxy's rules (``proxy/render.py``).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from overlaynet.api.services import EndpointSlice, Service
from overlaynet.errors import invalid

POOL_FIELD = "loadBalancerPool"


@dataclass(frozen=True)
class AddressPool:
    """An inclusive range of IPv4 addresses (MetalLB's IPAddressPool with one range)."""

    first: ipaddress.IPv4Address
    last: ipaddress.IPv4Address

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"

    def __contains__(self, address: object) -> bool:
        return isinstance(address, ipaddress.IPv4Address) and self.first <= address <= self.last

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1


def default_pool(node_network: ipaddress.IPv4Network) -> str:
    """Hosts 200/256 to 250/256 of the node network: 172.20.0.200-172.20.0.250 for a /24."""
    base, count = int(node_network.network_address), node_network.num_addresses
    return f"{ipaddress.IPv4Address(base + count * 200 // 256)}-{ipaddress.IPv4Address(base + count * 250 // 256)}"


def parse_pool(cluster: str, value: object, node_network: ipaddress.IPv4Network,
               taken: Mapping[ipaddress.IPv4Address, str]) -> AddressPool:
    """``value`` (``first-last`` or a CIDR) as a pool inside ``node_network`` that holds none of
    ``taken`` (address -> what holds it: nodes, the gateway, the external client)."""
    text = str(value).strip()
    try:
        if "-" in text:
            first_text, last_text = (part.strip() for part in text.split("-", 1))
            first, last = ipaddress.IPv4Address(first_text), ipaddress.IPv4Address(last_text)
        else:
            network = ipaddress.IPv4Network(text, strict=True)
            first, last = network.network_address, network.broadcast_address
    except ValueError:
        raise invalid("cluster", cluster, f"{POOL_FIELD} {text!r} is not a range or a CIDR "
                                          "(e.g. 172.20.0.200-172.20.0.250 or 172.20.0.192/27)") from None
    if first > last:
        raise invalid("cluster", cluster, f"{POOL_FIELD} {text}: {first} comes after {last}")
    if first not in node_network or last not in node_network:
        raise invalid("cluster", cluster, f"{POOL_FIELD} {text} is not inside nodeNetwork {node_network} "
                                          "(layer-2 announcements reach only the node network)")
    for reserved in (node_network.network_address, node_network.broadcast_address):
        if first <= reserved <= last:
            raise invalid("cluster", cluster, f"{POOL_FIELD} {text} holds {reserved}, an address of nodeNetwork "
                                              f"{node_network} no host may have")
    for address, holder in sorted(taken.items()):
        if first <= address <= last:
            raise invalid("cluster", cluster, f"{POOL_FIELD} {text} overlaps {holder} {address}")
    return AddressPool(first, last)


@dataclass(frozen=True)
class Allocation:
    """What the service controller did with the LoadBalancer Services: the services (with
    ``ingress_ip`` set where an address was found) and, for those left ``<pending>``, why."""

    services: tuple[Service, ...]
    pending: Mapping[str, str]  # namespace/name -> reason


def allocate_load_balancers(services: Sequence[Service], pool: AddressPool) -> Allocation:
    """Give every LoadBalancer Service of the cluster (``services``: all of them) without an
    address one from ``pool``.

    A Service that holds an address keeps it while it is still in the pool and still what ``loadBalancerIP``
    asks for; requested addresses are placed before dynamic ones; a Service that is no longer
    LoadBalancer loses its address. Reasons are MetalLB's ``AllocationFailed`` messages.
    """
    owner: dict[ipaddress.IPv4Address, str] = {}
    pending: dict[str, str] = {}
    chosen: dict[str, str | None] = {}

    def keep(service: Service, address: ipaddress.IPv4Address) -> bool:
        if address not in pool or owner.get(address, service.key) != service.key:
            return False
        owner[address] = service.key
        chosen[service.key] = str(address)
        return True

    for service in services:  # pass 1: what is held
        if service.type != "LoadBalancer":
            chosen[service.key] = None
        elif service.ingress_ip and service.load_balancer_ip in (None, service.ingress_ip):
            keep(service, ipaddress.IPv4Address(service.ingress_ip))
    for service in services:  # pass 2: what is asked for
        if service.key in chosen:
            continue
        if service.load_balancer_ip:
            requested = ipaddress.IPv4Address(service.load_balancer_ip)
            if requested not in pool:
                pending[service.key] = f'Failed to allocate IP for "{service.key}": "{requested}" is not allowed in ' \
                                       f"config (the pool is {pool})"
                chosen[service.key] = None
            elif not keep(service, requested):
                pending[service.key] = f'Failed to allocate IP for "{service.key}": "{requested}" is already ' \
                                       f"allocated to {owner[requested]}"
                chosen[service.key] = None
    candidate = int(pool.first)
    for service in services:  # pass 3: the lowest free address
        if service.key in chosen:
            continue
        while candidate <= int(pool.last) and ipaddress.IPv4Address(candidate) in owner:
            candidate += 1
        if candidate > int(pool.last):
            pending[service.key] = f'Failed to allocate IP for "{service.key}": no available IPs ' \
                                   f"(the pool {pool} holds {pool.size})"
            chosen[service.key] = None
            continue
        owner[ipaddress.IPv4Address(candidate)] = service.key
        chosen[service.key] = str(ipaddress.IPv4Address(candidate))
    return Allocation(tuple(replace(s, ingress_ip=chosen.get(s.key)) for s in services), pending)


def ready_nodes(service_slices: Iterable[EndpointSlice]) -> set[str]:
    """The nodes with a ready endpoint of the service (MetalLB's nodesWithActiveEndpoints)."""
    return {e.node_name for s in service_slices for e in s.endpoints
            if e.conditions.is_ready and e.addresses and e.node_name}


def has_ready_endpoint(service_slices: Iterable[EndpointSlice]) -> bool:
    return any(e.conditions.is_ready and e.addresses for s in service_slices for e in s.endpoints)


def elect_speaker(service: Service, address: str, nodes: Iterable[str],
                  service_slices: Sequence[EndpointSlice]) -> str | None:
    """The node that announces ``address`` of ``service``, or None when no node may (no ready
    endpoint; with Local policy, no ready endpoint on any of ``nodes``)."""
    if not has_ready_endpoint(service_slices):
        return None
    candidates = set(nodes)
    if service.external_traffic_policy == "Local":
        candidates &= ready_nodes(service_slices)
    if not candidates:
        return None
    # layer2_controller.go: sort by sha256(node + "#" + ip), the first node announces.
    return min(candidates, key=lambda node: hashlib.sha256(f"{node}#{address}".encode()).digest())
