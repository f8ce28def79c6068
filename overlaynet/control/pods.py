"""The pods' lifecycle: scheduled, given a sandbox and a CNI ADD, served; and taken down again.

For a batch of pod requests this module does what the scheduler and then each node's kubelet
do: place every pod (``scheduler``, over the nodes' capacity), record its namespace, have the
runtime create it and run the node's CNI chain (``Runtime.cni_add``), start what the pod serves on the
agent (with its probes), mark it Running; deleting runs the same steps backwards. A failure
part-way removes what the batch built before the error travels on. It reaches side effects
only through the ``Runtime`` it is given and never decides how many pods a Deployment wants
(``deployments`` does).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import cast

from overlaynet import names
from overlaynet.api.manifests import PodManifest, PodTemplate, parse_document, pod_probes, served_ports
from overlaynet.api.model import ClusterSpec
from overlaynet.control import scheduler
from overlaynet.control.dns import DNS_PORT, runs_cluster_dns
from overlaynet.control.ownership import NETNS, agent_socket
from overlaynet.control.records import (
    PodRequest,
    mark_running,
    node_info,
    pod_key,
    pod_record,
    pod_sandbox,
    sandbox_of,
)
from overlaynet.control.seams import Agent, Runtime
from overlaynet.control.store import Store
from overlaynet.datapath.modes import get_mode
from overlaynet.errors import AgentError, KernelError, NotFoundError
from overlaynet.node import kubelet, resolv, routes

__all__ = ["create_pods", "delete_pods", "pending_requests", "pod_capacity", "restart_stranded", "serve_pod",
           "stored_template"]


def pod_capacity(spec: ClusterSpec, node: dict) -> int:
    """Pods a node can take: as many as the mode gives it, or the pool's addresses when a
    conflist of the user's wires the pods."""
    if spec.cni_config:
        return spec.cluster_cidr.num_addresses
    return get_mode(spec.cni).pod_capacity(spec, ipaddress.IPv4Network(node["spec"]["podCIDR"]))


def _pod(store: Store, cluster: str, namespace: str, name: str) -> dict:
    record = store.get(cluster, "Pod", name, namespace)
    if record is None:
        raise NotFoundError(f'pod "{name}" not found in namespace "{namespace}" of cluster "{cluster}"')
    return record


def create_pods(store: Store, runtime: Runtime, spec: ClusterSpec, requests: list[PodRequest]) -> None:
    """Schedule, create each sandbox, run the node's CNI chain, start the test server.

    A pod whose CNI ADD fails stays ContainerCreating with the plugin's message, its
    sandbox removed (the runtime already sent DEL), as a kubelet leaves it.
    """
    if not requests:
        return
    cluster = spec.name
    nodes = {n["metadata"]["name"]: n for n in store.list(cluster, "Node")}
    placed = Counter(p["spec"]["nodeName"] for p in store.list(cluster, "Pod") if p["spec"].get("nodeName"))
    capacity = {name: pod_capacity(spec, record) for name, record in nodes.items()}
    sandboxes: list[tuple[kubelet.Sandbox, PodRequest]] = []
    with store.transaction():
        for request in requests:
            candidates = [
                scheduler.Candidate(
                    name=name, labels=record["metadata"].get("labels", {}),
                    ready=record["status"]["conditions"][0]["status"] == "True",
                    free_ips=capacity[name] - placed[name], pods=placed[name],
                )
                for name, record in nodes.items()
            ]
            decision = scheduler.schedule(request.template.node_name, dict(request.template.node_selector), candidates)
            if decision.node is None:
                store.put(cluster, pod_record(cluster, request, None, "", decision))
                continue
            placed[decision.node] += 1
            attachment = pod_sandbox(cluster, request.namespace, request.name, decision.node, kubelet.new_container_id())
            store.put(cluster, pod_record(cluster, request, node_info(nodes[decision.node]),
                                          attachment.container_id, decision))
            store.record(cluster, NETNS, names.pod_netns(cluster, request.namespace, request.name))
            sandboxes.append((attachment, request))
    try:
        outcomes = runtime.cni_add(store.directory, cluster, [s for s, _ in sandboxes])
    except BaseException:
        delete_pods(store, runtime, spec, [_pod(store, cluster, s.namespace, s.name) for s, _ in sandboxes])
        for request in requests:  # and the Pending ones this request wrote
            store.delete(cluster, "Pod", request.name, request.namespace)
        raise
    failed = [(s, outcome) for s, outcome in outcomes.items() if not isinstance(outcome, dict)]
    lingering = runtime.delete_namespaces(
        [names.pod_netns(cluster, s.namespace, s.name) for s, _ in failed]) if failed else []
    with store.transaction():
        for sandbox, outcome in outcomes.items():
            record = _pod(store, cluster, sandbox.namespace, sandbox.name)
            if isinstance(outcome, dict):
                ip = kubelet.pod_ip(outcome)
                record["status"].update(podIP=ip, podIPs=[{"ip": ip}])
            else:
                record["status"]["message"] = f"FailedCreatePodSandBox: {outcome}"
                netns_name = names.pod_netns(cluster, sandbox.namespace, sandbox.name)
                if netns_name not in lingering:
                    store.forget(cluster, NETNS, netns_name)
            store.put(cluster, record)
    results = {s: outcome for s, outcome in outcomes.items() if isinstance(outcome, dict)}
    started = [(s, r) for s, r in sandboxes if s in results]
    try:
        resolv.write_pod_files(store, runtime, spec, [(s.namespace, s.name, r.template.spec) for s, r in started])
        agent = runtime.agent(cluster, agent_socket(store, cluster))
        for sandbox, request in started:
            serve_pod(agent, cluster, sandbox.namespace, sandbox.name, sandbox.node,
                      kubelet.pod_ip(results[sandbox]), request.template)
    except BaseException:
        delete_pods(store, runtime, spec, [_pod(store, cluster, s.namespace, s.name) for s, _ in started])
        raise
    routes.sync_routes(store, runtime, spec)
    with store.transaction():
        for sandbox, _ in started:
            record = _pod(store, cluster, sandbox.namespace, sandbox.name)
            mark_running(record)
            store.put(cluster, record)


def delete_pods(store: Store, runtime: Runtime, spec: ClusterSpec, records: list[dict]) -> None:
    """Stop the test server, CNI DEL, delete the sandbox, forget the pod."""
    if not records:
        return
    cluster = spec.name
    # Pods with a sandbox only: a pod whose ADD failed was given its DEL then, and its sandbox
    # went (and was forgotten); one a process that died left half-created still has it.
    sandboxes = set(store.owned(cluster, NETNS))
    bound = [r for r in records if names.pod_netns(cluster, r["metadata"]["namespace"], r["metadata"]["name"])
             in sandboxes]
    if bound:
        try:
            agent = runtime.agent(cluster, agent_socket(store, cluster))
            for record in bound:
                agent.unserve(pod_key(record["metadata"]["namespace"], record["metadata"]["name"]))
        except AgentError:  # an agent that is gone holds no sockets
            pass
        runtime.cni_delete(store.directory, cluster, [sandbox_of(cluster, r) for r in bound])
        lingering = runtime.delete_namespaces(
            [names.pod_netns(cluster, r["metadata"]["namespace"], r["metadata"]["name"]) for r in bound])
        if lingering:
            raise KernelError(f'cluster "{cluster}": pod namespaces still present after delete: {", ".join(lingering)}')
        resolv.remove_pod_files(store, runtime, cluster,
                                [(r["metadata"]["namespace"], r["metadata"]["name"]) for r in bound])
    with store.transaction():
        for record in records:
            meta = record["metadata"]
            store.forget(cluster, NETNS, names.pod_netns(cluster, meta["namespace"], meta["name"]))
            store.delete(cluster, "Pod", meta["name"], meta["namespace"])
    routes.sync_routes(store, runtime, spec)


def restart_stranded(store: Store, runtime: Runtime, spec: ClusterSpec) -> list[str]:
    """Pods left ContainerCreating by a process that died part-way (pods are only created under
    the cluster's lock, so the caller, holding it, sees no creation in progress): what is left
    of their sandboxes is removed and they are created again, as a kubelet's sync loop replaces a
    sandbox that is not ready. Their ``namespace/name``s."""
    stranded = [record for record in store.list(spec.name, "Pod")
                if record["spec"].get("nodeName") and record["status"].get("reason") == "ContainerCreating"
                and not record["status"].get("message")]
    if not stranded:
        return []
    requests = [PodRequest(r["metadata"]["namespace"], r["metadata"]["name"], stored_template(r), _owner(r))
                for r in stranded]
    delete_pods(store, runtime, spec, stranded)
    create_pods(store, runtime, spec, requests)
    return [f"{r.namespace}/{r.name}" for r in requests]


def _owner(record: dict) -> str | None:
    """The name of the Deployment that owns the pod, if one does."""
    return next((o["name"] for o in record["metadata"].get("ownerReferences", []) if o.get("kind") == "Deployment"),
                None)


def serve_pod(agent: Agent, cluster: str, namespace: str, name: str, node: str, pod_ip: str,
              template: PodTemplate) -> None:
    """What the pod runs: the test server on its ports (a CoreDNS pod: the cluster DNS on its
    port 53 as well), and its probes."""
    pod_netns = names.pod_netns(cluster, namespace, name)
    probes = pod_probes(template.spec)
    health = {"specs": [p.as_dict() for p in probes], "podIP": pod_ip,
              "nodeNetns": names.node_netns(cluster, node), "podNetns": pod_netns} if probes else None
    dns_ports = [(p.port, p.protocol) for p in template.ports if p.port == DNS_PORT] \
        if runs_cluster_dns(template.spec) else None
    agent.serve(pod_key(namespace, name), pod_netns, name, list(served_ports(template)), health, dns_ports=dns_ports)


def stored_template(record: dict) -> PodTemplate:
    """The pod's spec as its manifest had it, parsed back from the store."""
    manifest = parse_document({"kind": "Pod", "metadata": record["metadata"], "spec": record["spec"]}, "store")
    return cast(PodManifest, manifest).template


def pending_requests(store: Store, cluster: str) -> list[PodRequest]:
    """Take the Pending pods out of the store, as requests to schedule again (a node joined or
    capacity was freed)."""
    requests = []
    for record in store.list(cluster, "Pod"):
        if record["status"].get("podIP"):
            continue
        meta = record["metadata"]
        requests.append(PodRequest(meta["namespace"], meta["name"], stored_template(record), _owner(record)))
        store.delete(cluster, "Pod", meta["name"], meta["namespace"])
    return requests
