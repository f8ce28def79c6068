"""The cluster DNS's records, computed from Services, EndpointSlices and pods (pure).

What this module owns: the record set the cluster DNS serves, following the Kubernetes
DNS-Based Service Discovery specification, schema 1.1.0
(https://github.com/kubernetes/dns/blob/master/docs/specification.md), as CoreDNS's
``kubernetes`` plugin answers it with kubeadm's Corefile. It never opens a socket (the
agent's ``dnsserver`` answers queries from these records) and never reads the store.

For a zone ``<zone>`` (``clusterDomain``, ``cluster.local`` by default), TTL 5 s (the
plugin's default ``ttl``):

- ``dns-version.<zone>. TXT "1.1.0"``; the zone's ``NS ns.dns.<zone>.``, whose A is the
  kube-dns ClusterIP;
- a Service with a ClusterIP (ClusterIP, NodePort, LoadBalancer):
  ``<svc>.<ns>.svc.<zone>. A <ClusterIP>``, for each named port
  ``_<port>._<proto>.<svc>.<ns>.svc.<zone>. SRV 0 100 <port> <svc>.<ns>.svc.<zone>.`` and
  ``<reversed ClusterIP>.in-addr.arpa. PTR <svc>.<ns>.svc.<zone>.``;
- a headless Service: ``<svc>.<ns>.svc.<zone>. A`` for each *ready* endpoint (its slices'
  ``conditions.ready``, or every endpoint with ``publishNotReadyAddresses``), each endpoint
  named by its ``hostname`` or, without one, by its dashed address (``10-244-1-3``, as CoreDNS
  does): ``<name>.<svc>.<ns>.svc.<zone>. A``, a PTR from its address to that name, and per
  named port of the slice ``SRV 0 <100/n> <endpoint port> <name>.<svc>.<ns>.svc.<zone>.``;
- a pod with an IP: ``<a-b-c-d>.<ns>.pod.<zone>. A <a.b.c.d>`` (only pods that exist, as
  the plugin's ``pods verified`` answers; kubeadm's ``pods insecure`` would answer any
  well-formed name).

Names are lower case and absolute (trailing dot). What is not here does not exist:
the server answers NXDOMAIN (with the zone's SOA) inside the zones, and NOERROR with no
answer for an existing name asked for another type.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from overlaynet.api.services import EndpointSlice, Service

__all__ = ["REVERSE_ZONE", "SCHEMA_VERSION", "TTL", "Record", "plan_records", "zone_text"]

TTL = 5  # CoreDNS kubernetes plugin: ttl defaults to 5 seconds
SCHEMA_VERSION = "1.1.0"
REVERSE_ZONE = "in-addr.arpa."


@dataclass(frozen=True, order=True)
class Record:
    name: str  # absolute, lower case: "web.default.svc.cluster.local."
    type: str  # "A", "SRV", "PTR", "TXT", "NS"
    data: str  # the record's data in zone-file form: "10.96.0.12", "0 100 80 web.default.svc.cluster.local."

    def as_list(self) -> list[str]:
        return [self.name, self.type, self.data]


def reverse_name(address: str) -> str:
    return ipaddress.IPv4Address(address).reverse_pointer + "."


def dashed(address: str) -> str:
    return address.replace(".", "-")


def plan_records(domain: str, dns_service_ip: str, services: Iterable[Service],
                 slices: Iterable[EndpointSlice], pods: Iterable[dict]) -> tuple[Record, ...]:
    """Every record of the zone ``domain`` (and of the reverse zone), sorted, without duplicates."""
    zone = domain.lower().rstrip(".") + "."
    records: set[Record] = {
        Record(f"dns-version.{zone}", "TXT", f'"{SCHEMA_VERSION}"'),
        Record(zone, "NS", f"ns.dns.{zone}"),
        Record(f"ns.dns.{zone}", "A", dns_service_ip),
    }
    by_service: dict[tuple[str, str], list[EndpointSlice]] = {}
    for endpoint_slice in slices:
        if endpoint_slice.service_name and endpoint_slice.address_type == "IPv4":
            by_service.setdefault((endpoint_slice.namespace, endpoint_slice.service_name), []).append(endpoint_slice)
    for service in services:
        service_name = f"{service.name}.{service.namespace}.svc.{zone}"
        if service.headless:
            records |= _headless_records(service, service_name, by_service.get((service.namespace, service.name), []))
        elif service.cluster_ip:
            records.add(Record(service_name, "A", service.cluster_ip))
            records.add(Record(reverse_name(service.cluster_ip), "PTR", service_name))
            for port in service.ports:
                if port.name:
                    records.add(Record(f"_{port.name}._{port.protocol.lower()}.{service_name}", "SRV",
                                       f"0 100 {port.port} {service_name}"))
    for pod in pods:
        ip = (pod.get("status") or {}).get("podIP")
        namespace = (pod.get("metadata") or {}).get("namespace", "default")
        if ip:
            records.add(Record(f"{dashed(ip)}.{namespace}.pod.{zone}", "A", ip))
    return tuple(sorted(records))


def _headless_records(service: Service, service_name: str, slices: list[EndpointSlice]) -> set[Record]:
    ready: dict[str, tuple[str, EndpointSlice]] = {}  # address -> (endpoint name, its slice)
    for endpoint_slice in slices:
        for endpoint in endpoint_slice.endpoints:
            # An unset ready condition means ready (discovery.k8s.io/v1).
            if not (service.publish_not_ready_addresses or endpoint.conditions.ready in (None, True)):
                continue
            for address in endpoint.addresses:
                ready.setdefault(address, (endpoint.hostname or dashed(address), endpoint_slice))
    records: set[Record] = set()
    targets: dict[tuple[str, str], list[tuple[int, str]]] = {}  # (port name, proto) -> [(port, target)]
    for address, (endpoint_name, endpoint_slice) in ready.items():
        endpoint_fqdn = f"{endpoint_name}.{service_name}"
        records.add(Record(service_name, "A", address))
        records.add(Record(endpoint_fqdn, "A", address))
        records.add(Record(reverse_name(address), "PTR", endpoint_fqdn))
        for port in endpoint_slice.ports:
            if port.name and port.port is not None:
                targets.setdefault((port.name, port.protocol), []).append((port.port, endpoint_fqdn))
    for (port_name, protocol), entries in targets.items():
        weight = max(1, 100 // len(entries))
        for number, target in entries:
            records.add(Record(f"_{port_name}._{protocol.lower()}.{service_name}", "SRV",
                               f"0 {weight} {number} {target}"))
    return records


def zone_text(records: Iterable[Record]) -> str:
    """The records as zone-file lines (``name TTL IN type data``), for reading and golden files."""
    return "".join(f"{r.name} {TTL} IN {r.type} {r.data}\n" for r in records)
