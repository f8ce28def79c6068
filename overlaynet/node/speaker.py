"""The layer-2 speaker (MetalLB's ``speaker`` in L2 mode): which node answers for each
LoadBalancer address and external IP, and the kernel objects that make it answer.

What this module owns:
- ``plan_announcements`` (pure): one ``Announcement`` per address, its node elected by
  ``api.loadbalancer.elect_speaker`` (MetalLB's hash of node and address; with
  ``externalTrafficPolicy: Local`` only nodes with a ready endpoint). None while the Service
  has no ready endpoint, as MetalLB withdraws it;
- ``plan_steps`` (pure): an announcement as plan steps.
  * ``layer2`` (a load-balancer address, inside the node network): the node answers ARP for it
    on its ``eth0`` with ``eth0``'s MAC, as MetalLB's speaker does from user space. The kernel
    does it for us with a proxy neighbour entry (``ip neigh add proxy <ip> dev eth0``), which
    it honours only when the route to the address leaves by another device: hence
    ``<ip>/32 dev lo``; ``proxy_delay`` 0 answers at once. Packets for the address are
    DNATed by kube-proxy in PREROUTING before that route is ever looked up; a packet to a port
    no Service has loops on lo until its TTL runs out (MetalLB's node would forward it too).
  * ``route`` (an external IP): Kubernetes leaves it to the admin to bring external IPs to a
    node; overlaynet plays the admin's router: a ``<ip>/32 via <node>`` route in the external
    client's namespace;
- ``sync_announcements``: the difference between what is announced (recorded in the store)
  and what should be: stale ones removed, new ones recorded *before* they are made.

What it never does: choose addresses (``control/loadbalancers.py``), render kube-proxy's rules,
or touch the kernel except through the runtime's ``apply``/``remove``. Everything it makes lives
in a node's or the external client's namespace, so ``down`` removes it with them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from overlaynet import names
from overlaynet.api.loadbalancer import elect_speaker
from overlaynet.api.model import ClusterSpec
from overlaynet.api.services import EndpointSlice, Service
from overlaynet.control.records import is_ready
from overlaynet.control.seams import Runtime
from overlaynet.control.store import Store
from overlaynet.datapath.plan import Plan, ProxyNeighbour, Route, Sysctl
from overlaynet.datapath.topology import internal_ip

ANNOUNCED = "lb-announcements"  # store meta key: the list of Announcement records
LAYER2 = "layer2"
ROUTE = "route"


@dataclass(frozen=True)
class Announcement:
    service: str  # namespace/name
    ip: str
    node: str
    node_ip: str
    kind: str  # LAYER2 or ROUTE


def plan_announcements(nodes: Iterable[dict], services: Iterable[Service],
                       slices: Iterable[EndpointSlice]) -> list[Announcement]:
    """Who announces what: every LoadBalancer address and external IP with a ready endpoint."""
    ready = {n["metadata"]["name"]: internal_ip(n) for n in nodes if is_ready(n)}
    by_service: dict[str, list[EndpointSlice]] = {}
    for endpoint_slice in slices:
        if endpoint_slice.service_key is not None:
            by_service.setdefault(endpoint_slice.service_key, []).append(endpoint_slice)
    result = []
    for service in sorted(services, key=lambda s: s.key):
        addresses = [(service.ingress_ip, LAYER2)] if service.type == "LoadBalancer" and service.ingress_ip else []
        addresses += [(ip, ROUTE) for ip in service.external_ips]
        for ip, kind in addresses:
            node = elect_speaker(service, ip, ready, by_service.get(service.key, []))
            if node is not None:
                result.append(Announcement(service.key, ip, node, ready[node], kind))
    return result


def plan_steps(spec: ClusterSpec, announcement: Announcement) -> Plan:
    if announcement.kind == ROUTE:
        return (Route(names.external_netns(spec.name), dst=f"{announcement.ip}/32", gateway=announcement.node_ip,
                      dev=names.NODE_UPLINK),)
    netns = names.node_netns(spec.name, announcement.node)
    return (Sysctl(netns, f"net.ipv4.neigh.{names.NODE_UPLINK}.proxy_delay", "0"),
            Route(netns, dst=f"{announcement.ip}/32", dev="lo"),
            ProxyNeighbour(netns, names.NODE_UPLINK, announcement.ip))


def announced(store: Store, cluster: str) -> list[Announcement]:
    """What the speaker has announced (and made in the kernel, or is about to)."""
    return [Announcement(**record) for record in json.loads(store.get_meta(cluster, ANNOUNCED, "[]"))]


def _record(store: Store, cluster: str, announcements: Iterable[Announcement]) -> None:
    store.set_meta(cluster, ANNOUNCED, json.dumps([asdict(a) for a in announcements]))


def sync_announcements(store: Store, runtime: Runtime, spec: ClusterSpec, services: list[Service],
                       slices: list[EndpointSlice]) -> None:
    """Announce what should be, withdraw what should not (re-announcing moves an address)."""
    current = announced(store, spec.name)
    wanted = plan_announcements(store.list(spec.name, "Node"), services, slices)
    if current == wanted:
        return
    stale = [a for a in current if a not in wanted]
    withdrawn = {a.ip for a in stale}
    # New ones, and kept ones whose address a withdrawal takes away (two Services may share an external IP).
    to_make = [a for a in wanted if a not in current or a.ip in withdrawn]
    for announcement in stale:
        runtime.remove(plan_steps(spec, announcement))
    _record(store, spec.name, wanted)  # recorded before it is made
    for announcement in to_make:
        runtime.apply(plan_steps(spec, announcement))
