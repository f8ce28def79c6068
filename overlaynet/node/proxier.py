"""Services in a running cluster: what the API server, the EndpointSlice controller and
kube-proxy do with them.

This module owns applying Services and hand-written EndpointSlices (ClusterIP and NodePort
allocation against what other Services hold; LoadBalancer addresses by
``control/loadbalancers.py``, announced by ``node/speaker.py``, both run on every sync), keeping the controller's EndpointSlices in step
with the pods, and kube-proxy's sync: the node's rule set rendered by ``overlaynet.proxy``
(pure) and loaded into the node's namespace with one ``iptables-restore`` after the jumps
from the built-in chains are in place, stale service chains deleted. The
previous sync of each node is remembered in the store, so a change re-renders that state and
loads a partial sync (KEP-3453): only the changed services' chains plus the top-level ones.

A pod is an endpoint when its Ready condition is True: at once, or, with a readiness probe,
as the agent's prober reports (``ClusterManager.pod_health``). The rules reach a node only
through the ``Iptables`` seam of the runtime it is given; the one sysctl it needs, through its
``apply``; the service health checks kube-proxy serves on a ``healthCheckNodePort``
(``health_checks``, answered by the agent as the node: ``agent.healthcheck``), through the agent.
"""

from __future__ import annotations

import json

from overlaynet import names
from overlaynet.api.model import ClusterSpec, address_pool
from overlaynet.api.services import (
    CONTROLLER_NAME,
    MANAGED_BY_LABEL,
    EndpointSlice,
    Service,
    allocate,
    carry_over,
    parse_endpointslice_document,
    parse_service_document,
)
from overlaynet.control.endpoints import build_endpoint_slices
from overlaynet.control.loadbalancers import reconcile_load_balancers
from overlaynet.control.ownership import agent_socket
from overlaynet.control.records import node_key
from overlaynet.control.seams import Runtime
from overlaynet.control.store import Store
from overlaynet.datapath.plan import Sysctl
from overlaynet.datapath.topology import internal_ip
from overlaynet.errors import NotFoundError
from overlaynet.node.speaker import sync_announcements
from overlaynet.proxy.render import CANARY_TABLES, KUBE_PROXY_CANARY, NodeConfig, Ruleset, is_service_chain, render

SERVICE = "Service"
SLICE = "EndpointSlice"


def stored_services(manager, cluster: str) -> list[Service]:
    """The Services of ``cluster`` (``manager``: anything with the cluster's ``store``)."""
    return _services(manager.store, cluster)


def stored_slices(manager, cluster: str) -> list[EndpointSlice]:
    """The EndpointSlices of ``cluster``, the controller's and hand-written ones."""
    return _slices(manager.store, cluster)


def _services(store: Store, cluster: str) -> list[Service]:
    return [parse_service_document(doc, "store") for doc in store.list(cluster, SERVICE)]


def _slices(store: Store, cluster: str) -> list[EndpointSlice]:
    return [parse_endpointslice_document(doc, "store") for doc in store.list(cluster, SLICE)]


def render_node(spec: ClusterSpec, node: dict, services: list[Service], slices: list[EndpointSlice]) -> Ruleset:
    """What a full sync loads into ``node`` (pure)."""
    return render(_node_config(spec, node), services, slices, full=True)


def rendered_now(store: Store, spec: ClusterSpec, node: dict) -> Ruleset:
    """What a full sync would load into ``node`` now, from the stored Services and slices."""
    return render_node(spec, node, _services(store, spec.name), _slices(store, spec.name))


def _node_config(spec: ClusterSpec, node: dict) -> NodeConfig:
    return NodeConfig(name=node["metadata"]["name"], ips=(internal_ip(node),), cluster_cidr=str(spec.cluster_cidr))


def plan_services(store: Store, spec: ClusterSpec, services: list[Service],
                  slices: list[EndpointSlice]) -> tuple[list[str], list[dict]]:
    """Allocate Services and check slices against what is stored, without writing anything:
    kubectl-style lines and the documents to store (``store_documents`` writes them)."""
    if any(s.type == "LoadBalancer" for s in services):
        address_pool(spec)  # a pool that cannot be used is refused before anything is stored
    existing = {s.key: s for s in _services(store, spec.name)}
    updated = [carry_over(service, existing.get(service.key)) for service in services]
    keys = {s.key for s in updated}
    others = [s for key, s in existing.items() if key not in keys]
    used_ips = {s.cluster_ip: s.key for s in others if s.cluster_ip and not s.headless}
    used_ports = {p.node_port: s.key for s in others for p in s.ports if p.node_port}
    lines, documents = [], []
    for service in allocate(updated, spec.service_cidr, used_ips, used_ports) if updated else []:
        old = existing.get(service.key)
        document = service.to_document()
        verb = "created" if old is None else ("unchanged" if old.to_document() == document else "configured")
        lines.append(f"service/{service.name} {verb}")
        documents.append(document)
    for endpoint_slice in slices:
        document = endpoint_slice.to_document()
        meta = document["metadata"]
        stored = store.get(spec.name, SLICE, meta["name"], meta["namespace"])
        verb = "created" if stored is None else ("unchanged" if stored == document else "configured")
        lines.append(f"endpointslice.discovery.k8s.io/{meta['name']} {verb}")
        documents.append(document)
    return lines, documents


def store_documents(store: Store, spec: ClusterSpec, documents: list[dict]) -> None:
    with store.transaction():
        for document in documents:
            store.put(spec.name, document)


def delete_service(store: Store, spec: ClusterSpec, namespace: str, name: str) -> None:
    if store.get(spec.name, SERVICE, name, namespace) is None:
        raise NotFoundError(f'service "{name}" not found in namespace "{namespace}" of cluster "{spec.name}"')
    store.delete(spec.name, SERVICE, name, namespace)


def _controller_slices(store: Store, spec: ClusterSpec, services: list[Service]) -> list[EndpointSlice]:
    """The EndpointSlice controller: slices for every Service with a selector, stored for `get`."""
    pods = store.list(spec.name, "Pod")
    slices = []
    with store.transaction():
        for document in store.list(spec.name, SLICE):
            if document["metadata"].get("labels", {}).get(MANAGED_BY_LABEL) == CONTROLLER_NAME:
                store.delete(spec.name, SLICE, document["metadata"]["name"], document["metadata"]["namespace"])
        for service in services:
            for endpoint_slice in build_endpoint_slices(service, pods).slices:
                store.put(spec.name, endpoint_slice.to_document())
                slices.append(endpoint_slice)
    return slices


def sync(store: Store, runtime: Runtime, spec: ClusterSpec) -> None:
    """Endpoints from pods, then kube-proxy's rules into every node (a full sync)."""
    services = _services(store, spec.name)
    if not services and store.get_meta(spec.name, "kube-proxy-backend") is None:
        return  # a cluster that never had a Service has no kube-proxy rules to keep
    services = reconcile_load_balancers(store, spec, services)  # the service controller
    _controller_slices(store, spec, services)
    slices = _slices(store, spec.name)
    backend = store.get_meta(spec.name, "kube-proxy-backend") or runtime.iptables.backend()
    store.set_meta(spec.name, "kube-proxy-backend", backend)
    synced = json.loads(store.get_meta(spec.name, "kube-proxy-synced", "{}"))
    for node in store.list(spec.name, "Node"):
        node_name = node["metadata"]["name"]
        netns = names.node_netns(spec.name, node_name)
        config = _node_config(spec, node)
        previous = _previous_render(config, synced.get(node_name))
        existing = [c for c in runtime.iptables.chains(netns, backend, "nat") if is_service_chain(c)]
        ruleset = render(config, services, slices, previous, existing_chains=existing)
        if ruleset.full:
            # kube-proxy sets route_localnet for NodePorts on 127.0.0.1 (--iptables-localhost-nodeports).
            runtime.apply((Sysctl(netns, "net.ipv4.conf.all.route_localnet", "1"),))
            runtime.iptables.ensure_chains(netns, [(table, KUBE_PROXY_CANARY) for table in CANARY_TABLES], backend)
            runtime.iptables.ensure_jumps(netns, ruleset.jumps, backend)
        try:
            runtime.iptables.restore(netns, ruleset.payload, backend)
        except Exception:
            synced.pop(node_name, None)  # the next sync of this node is a full one, as kube-proxy does
            store.set_meta(spec.name, "kube-proxy-synced", json.dumps(synced))
            raise
        synced[node_name] = {"services": [s.to_document() for s in services],
                             "slices": [s.to_document() for s in slices]}
        store.set_meta(spec.name, "kube-proxy-synced", json.dumps(synced))
    sync_announcements(store, runtime, spec, services, slices)  # the layer-2 speaker
    _sync_health_checks(store, runtime, spec, services, slices)


HEALTH_CHECKED = "kube-proxy-health-checks"  # meta: set once some node served a health check


def health_checks(node: str, services: list[Service], slices: list[EndpointSlice]) -> list[dict]:
    """The health checks kube-proxy serves on ``node`` (pure): one per Service with a
    ``healthCheckNodePort``, counting the distinct addresses of its ready endpoints on the node
    (``EndpointsMap.LocalReadyEndpoints``: an address with two ports is one endpoint)."""
    local: dict[str, set[str]] = {}
    for slice_ in slices:
        for endpoint in slice_.endpoints:
            if slice_.service_key and endpoint.node_name == node and endpoint.conditions.ready is not False:
                local.setdefault(slice_.service_key, set()).update(endpoint.addresses)
    return [{"port": s.health_check_node_port, "namespace": s.namespace, "name": s.name,
             "localEndpoints": len(local.get(s.key, ()))}
            for s in sorted(services, key=lambda s: s.key) if s.health_check_node_port is not None]


def _sync_health_checks(store: Store, runtime: Runtime, spec: ClusterSpec, services: list[Service],
                        slices: list[EndpointSlice]) -> None:
    wanted = {node["metadata"]["name"]: health_checks(node["metadata"]["name"], services, slices)
              for node in store.list(spec.name, "Node")}
    if not any(wanted.values()) and store.get_meta(spec.name, HEALTH_CHECKED) is None:
        return  # no health check anywhere, before or now: nothing to tell the agent
    agent = runtime.agent(spec.name, agent_socket(store, spec.name))
    for node, checks in wanted.items():
        agent.health_checks(node_key(node), checks)
    if any(wanted.values()):  # from now on every sync tells the agent, also when the last check goes
        store.set_meta(spec.name, HEALTH_CHECKED, "1")


def _previous_render(config: NodeConfig, state: dict | None) -> Ruleset | None:
    """What this node was last synced to, rendered again (pure): the base of a partial sync
    that rewrites only the chains of services whose Service or endpoints changed."""
    if state is None:
        return None
    services = [parse_service_document(doc, "store") for doc in state["services"]]
    slices = [parse_endpointslice_document(doc, "store") for doc in state["slices"]]
    return render(config, services, slices, full=True)
