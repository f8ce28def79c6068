"""The control plane of one emulated cluster: node IPAM, scheduling, the kubelet's pod setup.

``ClusterManager`` turns requests (up, down, add or remove a node, apply or delete
workloads) into store updates and plans, and hands the plans to the kernel side through a
``Runtime``. It owns the order that makes crashes harmless: every namespace is recorded in
the store before it is created, and any failure part-way through an operation removes what
that operation built before the error reaches the user. It never builds kernel objects
itself (``topology`` and ``modes`` plan them, ``overlaynet.kernel`` makes them) and never
prints (the CLI does).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, replace

from overlaynet import names
from overlaynet.api.manifests import (
    DeploymentManifest,
    Manifest,
    PodManifest,
    PodTemplate,
    parse_document,
    pod_probes,
    served_ports,
)
from overlaynet.api.model import ClusterSpec, NodeSpec, spec_from_document
from overlaynet.api.services import EndpointSlice, Service
from overlaynet.control import scheduler
from overlaynet.control.store import Store
from overlaynet.datapath import topology
from overlaynet.datapath.modes import get_mode, uses_ipam_blocks
from overlaynet.datapath.plan import Netns, Plan
from overlaynet.datapath.topology import NodeInfo, internal_ip
from overlaynet.errors import AgentError, ConflictError, InvalidInput, KernelError, NotFoundError
from overlaynet.ipam import allocators
from overlaynet.kernel import netns
from overlaynet.node import bgp_mesh, kubelet, proxier

NETNS = "netns"
AGENT = "agent"
PATH = "path"  # a file or directory the cluster owns (agent log, CNI configuration and caches, BIRD files)
NETNS_ANNOTATION = "overlaynet.dev/netns"
CONTAINER_ANNOTATION = "overlaynet.dev/container-id"  # the sandbox id CNI calls are keyed by
HOST = "_host"  # the store's name for host-wide state; never a valid cluster name
NODE_SERVER_PORTS = ((8080, "TCP"), (8080, "UDP"))


class Runtime:
    """The side-effecting collaborators of the controller: the kernel and the agent process.

    Imports are deferred so that reading commands (``get``) never load pyroute2.
    """

    def apply(self, plan: Plan) -> None:
        from overlaynet.kernel.apply import apply

        apply(plan)

    def remove(self, plan: Plan) -> None:
        from overlaynet.kernel.apply import remove

        remove(plan)

    def delete_namespaces(self, netns_names: list[str]) -> list[str]:
        """Delete namespaces; return those the kernel still shows after waiting."""
        from overlaynet.kernel import netns

        for name in netns_names:
            netns.delete(name)
        return netns.wait_gone(netns_names)

    def cni_add(self, state_dir: str, cluster: str, sandboxes: list) -> dict:
        return kubelet.add_all(state_dir, cluster, sandboxes)

    def cni_delete(self, state_dir: str, cluster: str, sandboxes: list) -> None:
        kubelet.delete_all(state_dir, cluster, sandboxes)

    def write_conflist(self, paths: kubelet.NodePaths, conflist: dict) -> None:
        kubelet.write_conflist(paths, conflist)

    def remove_path(self, path: str) -> None:
        """Remove a file or a directory tree; gone already is fine."""
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)

    def start_agent(self, cluster: str, socket_path: str, log_path: str) -> int:
        from overlaynet.agent.client import start_agent

        return start_agent(cluster, socket_path, log_path)

    def stop_agent(self, cluster: str, socket_path: str) -> None:
        from overlaynet.agent.client import stop_agent

        stop_agent(cluster, socket_path)

    def host_limits(self) -> dict[str, int]:
        from overlaynet.kernel import host

        return host.current_limits()

    def raise_host_limits(self) -> None:
        from overlaynet.kernel import host

        host.raise_limits()

    def restore_host_limits(self, originals: dict[str, int]) -> None:
        from overlaynet.kernel import host

        host.restore(originals)

    def agent(self, cluster: str, socket_path: str):
        from overlaynet.agent.client import AgentClient

        return AgentClient(socket_path, cluster=cluster)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_key(node: str) -> str:
    return f"node/{node}"


def pod_key(namespace: str, name: str) -> str:
    return f"pod/{namespace}/{name}"


def node_info(record: dict) -> NodeInfo:
    address = internal_ip(record)
    return NodeInfo(
        name=record["metadata"]["name"],
        ip=ipaddress.IPv4Address(address),
        pod_cidr=ipaddress.IPv4Network(record["spec"]["podCIDR"]),
        annotations=tuple(sorted(record["metadata"].get("annotations", {}).items())),
    )


def sandbox_of(cluster: str, record: dict) -> kubelet.Sandbox:
    """The CNI attachment of a scheduled pod, as recorded when its sandbox was made."""
    meta = record["metadata"]
    return kubelet.Sandbox(meta["namespace"], meta["name"], record["spec"]["nodeName"],
                           netns.path(names.pod_netns(cluster, meta["namespace"], meta["name"])),
                           meta["annotations"][CONTAINER_ANNOTATION])


@dataclass
class _PodRequest:
    namespace: str
    name: str
    template: PodTemplate
    owner: str | None = None  # the Deployment's name


class ClusterManager:
    def __init__(self, store: Store, runtime: Runtime | None = None):
        self.store = store
        self.runtime = runtime or Runtime()

    # -- reading --------------------------------------------------------------------------------

    def spec(self, cluster: str) -> ClusterSpec:
        entry = self.store.get_cluster(cluster)
        if entry is None:
            raise NotFoundError(f'cluster "{cluster}" does not exist (create it with `overlaynet up --name {cluster}`)')
        return spec_from_document(entry["document"])

    def nodes(self, cluster: str) -> list[dict]:
        return self.store.list(cluster, "Node")

    def node(self, cluster: str, name: str) -> dict:
        record = self.store.get(cluster, "Node", name)
        if record is None:
            raise NotFoundError(f'node "{name}" not found in cluster "{cluster}"')
        return record

    def pods(self, cluster: str, namespace: str | None = None) -> list[dict]:
        return self.store.list(cluster, "Pod", namespace)

    def pod(self, cluster: str, namespace: str, name: str) -> dict:
        record = self.store.get(cluster, "Pod", name, namespace)
        if record is None:
            raise NotFoundError(f'pod "{name}" not found in namespace "{namespace}" of cluster "{cluster}"')
        return record

    def deployments(self, cluster: str, namespace: str | None = None) -> list[dict]:
        return self.store.list(cluster, "Deployment", namespace)

    def agent_socket(self, cluster: str) -> str:
        return self.store.runtime_path(cluster, "sock")

    def agent(self, cluster: str):
        """A client of the cluster's agent (the test servers and verify's probes)."""
        return self.runtime.agent(cluster, self.agent_socket(cluster))

    # -- cluster lifecycle ----------------------------------------------------------------------

    def up(self, spec: ClusterSpec) -> None:
        mode = get_mode(spec.cni)
        with self.store.cluster_lock(spec.name):
            if self.store.get_cluster(spec.name) is not None:
                raise ConflictError(
                    f'cluster "{spec.name}" already exists (remove it with `overlaynet down --name {spec.name}`)'
                )
            self.store.put_cluster(spec.name, spec.to_document(), "Creating")
            try:
                self._raise_host_limits()
                nodes = [self._allocate_node(spec, mode, node_spec) for node_spec in spec.nodes]
                plan = topology.plan_cluster(spec, mode, nodes)
                self._record_namespaces(spec.name, plan)
                self.runtime.apply(plan)
                self._start_agent(spec.name)
                agent = self.agent(spec.name)
                for node in nodes:
                    self._configure_node_cni(spec, node.name)
                    agent.serve(node_key(node.name), names.node_netns(spec.name, node.name), node.name,
                                list(NODE_SERVER_PORTS))
                    self._set_node_ready(spec.name, node.name)
                self._sync_routes(spec)
                self.store.set_phase(spec.name, "Running")
            except BaseException:
                self._teardown(spec.name)
                raise

    def down(self, cluster: str) -> dict:
        """Remove everything ``cluster`` owns; return what was removed."""
        with self.store.cluster_lock(cluster):
            if self.store.get_cluster(cluster) is None and not any(
                    self.store.owned(cluster, kind) for kind in (NETNS, AGENT, PATH)):
                raise NotFoundError(f'cluster "{cluster}" does not exist')
            return self._teardown(cluster)

    def _teardown(self, cluster: str) -> dict:
        socket_path = self.agent_socket(cluster)
        self.runtime.stop_agent(cluster, socket_path)
        self.store.forget(cluster, AGENT, socket_path)
        bgp_mesh.stop_all(self, cluster)  # a BIRD would outlive its namespace's name
        namespaces = self.store.owned(cluster, NETNS)  # newest first: pods, then nodes, underlay
        lingering = self.runtime.delete_namespaces(namespaces)
        for name in namespaces:
            if name not in lingering:
                self.store.forget(cluster, NETNS, name)
        if lingering:
            raise KernelError(f'cluster "{cluster}": namespaces still present after delete: {", ".join(lingering)}')
        for path in self.store.owned(cluster, PATH):
            self.runtime.remove_path(path)
            self.store.forget(cluster, PATH, path)
        self.store.delete_cluster(cluster)
        self._restore_host_limits()
        return {"namespaces": len(namespaces)}

    def _raise_host_limits(self) -> None:
        """Raise host-wide limits (the shared ARP table) and remember the originals first."""
        with self.store.cluster_lock(HOST):
            if self.store.get_meta(HOST, "host-limits") is None:
                self.store.set_meta(HOST, "host-limits", json.dumps(self.runtime.host_limits()))
            self.runtime.raise_host_limits()

    def _restore_host_limits(self) -> None:
        """Put host-wide limits back once no cluster is left."""
        with self.store.cluster_lock(HOST):
            originals = self.store.get_meta(HOST, "host-limits")
            if originals is None or self.store.cluster_names():
                return
            self.runtime.restore_host_limits(json.loads(originals))
            self.store.delete_cluster(HOST)

    def _configure_node_cni(self, spec: ClusterSpec, node: str) -> None:
        """Write the node's CNI configuration, as a CNI DaemonSet installs it on a real node."""
        root = kubelet.cni_root(self.store.directory, spec.name)
        self.store.record(spec.name, PATH, root)
        if spec.cni_config:
            conflist = kubelet.load_user_conflist(spec.cni_config)
        else:
            conflist = kubelet.render_conflist(spec, self.node(spec.name, node), self.store.directory,
                                               self.agent_socket(spec.name))
        self.runtime.write_conflist(kubelet.node_paths(self.store.directory, spec.name, node), conflist)

    def _start_agent(self, cluster: str) -> None:
        socket_path = self.agent_socket(cluster)
        log_path = self.store.runtime_path(cluster, "agent.log")
        self.store.record(cluster, AGENT, socket_path)
        self.store.record(cluster, PATH, log_path)
        self.runtime.start_agent(cluster, socket_path, log_path)

    def _record_namespaces(self, cluster: str, plan: Plan) -> None:
        from overlaynet.datapath.plan import namespaces

        with self.store.transaction():
            for name in namespaces(plan):
                self.store.record(cluster, NETNS, name)

    # -- nodes ------------------------------------------------------------------------------------

    def _allocate_node(self, spec: ClusterSpec, mode, node_spec: NodeSpec) -> NodeInfo:
        existing = self.nodes(spec.name)
        cursor = int(self.store.get_meta(spec.name, "node-cidr-cursor", "0"))
        cidr, cursor = allocators.allocate_node_cidr(
            spec.cluster_cidr, spec.node_cidr_mask_size,
            [ipaddress.IPv4Network(n["spec"]["podCIDR"]) for n in existing], cursor,
        )
        ip = allocators.allocate_node_ip(spec.node_network, [node_info(n).ip for n in existing])
        annotations = {NETNS_ANNOTATION: names.node_netns(spec.name, node_spec.name),
                       **mode.node_annotations(spec, node_spec.name, str(ip))}
        record = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node_spec.name, "labels": node_spec.label_dict(), "annotations": annotations,
                         "creationTimestamp": _now()},
            "spec": {"podCIDR": str(cidr), "podCIDRs": [str(cidr)]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": str(ip)}, {"type": "Hostname", "address": node_spec.name}],
                "conditions": [{"type": "Ready", "status": "False", "reason": "NodeStarting"}],
                "nodeInfo": {"containerRuntimeVersion": "overlaynet", "kubeProxyVersion": "", "operatingSystem": "linux"},
            },
        }
        with self.store.transaction():
            self.store.set_meta(spec.name, "node-cidr-cursor", str(cursor))
            self.store.put(spec.name, record)
        return node_info(record)

    def _set_node_ready(self, cluster: str, node: str) -> None:
        record = self.node(cluster, node)
        record["status"]["conditions"] = [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                           "message": "overlaynet node is ready", "lastTransitionTime": _now()}]
        self.store.put(cluster, record)

    def add_node(self, cluster: str, node_spec: NodeSpec) -> dict:
        with self.store.cluster_lock(cluster):
            spec = self.spec(cluster)
            if self.store.get(cluster, "Node", node_spec.name) is not None:
                raise ConflictError(f'node "{node_spec.name}" already exists in cluster "{cluster}"')
            mode = get_mode(spec.cni)
            grown = replace(spec, nodes=spec.nodes + (node_spec,))
            from overlaynet.api.model import check_ranges

            check_ranges(grown)
            peers = [node_info(n) for n in self.nodes(cluster)]
            node = self._allocate_node(spec, mode, node_spec)
            plan = topology.plan_node(spec, mode, node, peers)
            for peer in peers:
                plan += mode.plan_peer(spec, peer, node)
            self._record_namespaces(cluster, plan)
            try:
                self.runtime.apply(plan)
                self._configure_node_cni(spec, node.name)
                self.agent(cluster).serve(
                    node_key(node.name), names.node_netns(cluster, node.name), node.name, list(NODE_SERVER_PORTS))
            except BaseException:
                self._remove_node_objects(spec, mode, node, peers)
                raise
            self._set_node_ready(cluster, node.name)
            self._update_document(cluster, grown)
            self._schedule_pending(spec)
            proxier.sync(self, spec)
            return self.node(cluster, node.name)

    def remove_node(self, cluster: str, name: str) -> None:
        with self.store.cluster_lock(cluster):
            spec = self.spec(cluster)
            record = self.node(cluster, name)
            if len(self.nodes(cluster)) == 1:
                raise InvalidInput(f'node "{name}": it is the last node of cluster "{cluster}"; use `overlaynet down`')
            mode = get_mode(spec.cni)
            self._delete_pods(spec, [p for p in self.pods(cluster) if p["spec"].get("nodeName") == name])
            node = node_info(record)
            peers = [node_info(n) for n in self.nodes(cluster) if n["metadata"]["name"] != name]
            self._remove_node_objects(spec, mode, node, peers)
            self._update_document(cluster, replace(spec, nodes=tuple(n for n in spec.nodes if n.name != name)))
            self._reconcile_deployments(spec)
            self._sync_routes(spec)
            proxier.sync(self, spec)

    def _remove_node_objects(self, spec: ClusterSpec, mode, node: NodeInfo, peers: list[NodeInfo]) -> None:
        """Undo a node: the peers' routes to it first (Flannel's lease removal), then the node."""
        if spec.bgp == "bird":
            bgp_mesh.stop_node(self, spec.name, node.name)
        if uses_ipam_blocks(spec):
            from overlaynet.ipam.blocks import BlockIPAM

            BlockIPAM(self.store, spec.name, spec.cluster_cidr, spec.block_size).release_node(node.name)
            self.store.set_meta(spec.name, f"routes/{node.name}", "[]")
        try:
            self.agent(spec.name).unserve(node_key(node.name))
        except AgentError:  # the agent may be the thing that failed; its sockets die with the netns
            pass
        plan: Plan = ()
        for peer in peers:
            plan += mode.plan_peer(spec, peer, node)
        self.runtime.remove(plan + topology.plan_node(spec, mode, node, []))
        self.runtime.remove_path(os.path.dirname(kubelet.node_paths(self.store.directory, spec.name, node.name).conf_dir))
        self.store.forget(spec.name, NETNS, names.node_netns(spec.name, node.name))
        self.store.delete(spec.name, "Node", node.name)

    def _update_document(self, cluster: str, spec: ClusterSpec) -> None:
        entry = self.store.get_cluster(cluster)
        self.store.put_cluster(cluster, spec.to_document(), entry["phase"] if entry else "Running")

    # -- workloads --------------------------------------------------------------------------------

    def apply(self, cluster: str, manifests: list[Manifest]) -> list[str]:
        """Apply Pods and Deployments; return kubectl-style lines (``pod/web created``)."""
        with self.store.cluster_lock(cluster):
            spec = self.spec(cluster)
            report: list[str] = []
            creates: list[_PodRequest] = []
            deletes: list[dict] = []
            deployments: list[dict] = []
            service_lines, service_documents = proxier.plan_services(
                self, spec, [m for m in manifests if isinstance(m, Service)],
                [m for m in manifests if isinstance(m, EndpointSlice)])
            for manifest in manifests:
                if isinstance(manifest, PodManifest):
                    report.append(self._apply_pod_manifest(cluster, manifest, creates))
                elif isinstance(manifest, DeploymentManifest):
                    line, record = self._apply_deployment_manifest(cluster, manifest, creates, deletes)
                    report.append(line)
                    deployments.append(record)
            for request in creates:  # a name the kernel would refuse stops the apply before any change
                names.pod_netns(cluster, request.namespace, request.name)
            proxier.store(self, spec, service_documents)
            self._delete_pods(spec, deletes)
            self._create_pods(spec, creates)
            for record in deployments:
                self.store.put(cluster, record)
            self._refresh_deployment_status(cluster)
            proxier.sync(self, spec)
            return report + service_lines

    def _apply_pod_manifest(self, cluster: str, manifest: PodManifest, creates: list[_PodRequest]) -> str:
        """A new pod is queued on ``creates``; a label change is stored at once. The kubectl line."""
        existing = self.store.get(cluster, "Pod", manifest.name, manifest.namespace)
        if existing is None:
            if any(r.namespace == manifest.namespace and r.name == manifest.name for r in creates):
                raise InvalidInput(f'pod "{manifest.name}": defined twice in the applied files')
            creates.append(_PodRequest(manifest.namespace, manifest.name, manifest.template))
            return f"pod/{manifest.name} created"
        written = {k: v for k, v in existing["spec"].items() if k != "nodeName" or "nodeName" in manifest.template.spec}
        if written != manifest.template.spec:
            raise InvalidInput(
                f'pod "{manifest.name}": spec: Forbidden: pod updates may not change fields other than labels '
                "(delete the pod and apply it again)"
            )
        labels = dict(manifest.template.labels)
        if existing["metadata"].get("labels", {}) == labels:
            return f"pod/{manifest.name} unchanged"
        existing["metadata"]["labels"] = labels
        self.store.put(cluster, existing)
        return f"pod/{manifest.name} configured"

    def _apply_deployment_manifest(self, cluster: str, manifest: DeploymentManifest,
                                   creates: list[_PodRequest], deletes: list[dict]) -> tuple[str, dict]:
        """Queue the pods to create and delete for the replica count and template (the pod
        ordinal counter is stored at once); the kubectl line and the Deployment record to store."""
        existing = self.store.get(cluster, "Deployment", manifest.name, manifest.namespace)
        owned = self._owned_pods(cluster, manifest.namespace, manifest.name)
        template_hash = manifest.template_hash
        current = [p for p in owned if p["metadata"]["labels"].get("pod-template-hash") == template_hash]
        deletes.extend(p for p in owned if p not in current)  # a changed template: Recreate
        surplus = len(current) - manifest.replicas
        if surplus > 0:
            current.sort(key=lambda p: p["metadata"]["creationTimestamp"], reverse=True)
            deletes.extend(current[:surplus])
        # Like a ReplicaSet, never reuse a pod name: a replacement is a new pod.
        taken = {p["metadata"]["name"] for p in owned}
        counter = f"pod-ordinal/{manifest.namespace}/{manifest.name}"
        ordinal = int(self.store.get_meta(cluster, counter, "0"))
        for _ in range(max(0, -surplus)):
            while manifest.pod_name(ordinal) in taken:
                ordinal += 1
            taken.add(manifest.pod_name(ordinal))
            creates.append(self._deployment_pod_request(manifest, manifest.pod_name(ordinal)))
            ordinal += 1
        self.store.set_meta(cluster, counter, str(ordinal))
        record = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": manifest.name, "namespace": manifest.namespace,
                         "creationTimestamp": (existing or {}).get("metadata", {}).get("creationTimestamp", _now())},
            "spec": {"replicas": manifest.replicas, "selector": {"matchLabels": dict(manifest.selector)},
                     "template": {"metadata": {"labels": dict(manifest.template.labels)},
                                  "spec": manifest.template.spec}},
            "status": {},
        }
        if existing is None:
            verb = "created"
        elif existing["spec"] == record["spec"]:
            verb = "unchanged"
        else:
            verb = "configured"
        return f"deployment.apps/{manifest.name} {verb}", record

    @staticmethod
    def _deployment_pod_request(manifest: DeploymentManifest, pod_name: str) -> _PodRequest:
        labels = dict(manifest.template.labels) | {"pod-template-hash": manifest.template_hash}
        template = replace(manifest.template, labels=tuple(sorted(labels.items())))
        return _PodRequest(manifest.namespace, pod_name, template, owner=manifest.name)

    def _owned_pods(self, cluster: str, namespace: str, deployment: str) -> list[dict]:
        return [p for p in self.pods(cluster, namespace)
                if any(o.get("kind") == "Deployment" and o.get("name") == deployment
                       for o in p["metadata"].get("ownerReferences", []))]

    def delete_pod(self, cluster: str, namespace: str, name: str) -> None:
        with self.store.cluster_lock(cluster):
            spec = self.spec(cluster)
            self._delete_pods(spec, [self.pod(cluster, namespace, name)])
            self._reconcile_deployments(spec)
            self._schedule_pending(spec)
            proxier.sync(self, spec)

    def delete_deployment(self, cluster: str, namespace: str, name: str) -> None:
        with self.store.cluster_lock(cluster):
            spec = self.spec(cluster)
            if self.store.get(cluster, "Deployment", name, namespace) is None:
                raise NotFoundError(f'deployment "{name}" not found in namespace "{namespace}" of cluster "{cluster}"')
            self._delete_pods(spec, self._owned_pods(cluster, namespace, name))
            self.store.delete(cluster, "Deployment", name, namespace)
            self._schedule_pending(spec)
            proxier.sync(self, spec)

    def delete_service(self, cluster: str, namespace: str, name: str) -> None:
        with self.store.cluster_lock(cluster):
            spec = self.spec(cluster)
            proxier.delete_service(self, spec, namespace, name)
            proxier.sync(self, spec)

    # -- the kubelet's part: pods in and out of the kernel ---------------------------------------

    def _create_pods(self, spec: ClusterSpec, requests: list[_PodRequest]) -> None:
        """Schedule, create each sandbox, run the node's CNI chain, start the test server.

        A pod whose CNI ADD fails stays ContainerCreating with the plugin's message, its
        sandbox removed (the runtime already sent DEL), as a kubelet leaves it.
        """
        if not requests:
            return
        cluster = spec.name
        nodes = {n["metadata"]["name"]: n for n in self.nodes(cluster)}
        placed = Counter(p["spec"]["nodeName"] for p in self.pods(cluster) if p["spec"].get("nodeName"))
        sandboxes: list[tuple[kubelet.Sandbox, _PodRequest]] = []
        with self.store.transaction():
            for request in requests:
                candidates = [
                    scheduler.Candidate(
                        name=name, labels=record["metadata"].get("labels", {}),
                        ready=record["status"]["conditions"][0]["status"] == "True",
                        free_ips=self._pod_capacity(spec, record) - placed[name], pods=placed[name],
                    )
                    for name, record in nodes.items()
                ]
                decision = scheduler.schedule(request.template.node_name, dict(request.template.node_selector), candidates)
                if decision.node is None:
                    self.store.put(cluster, self._pod_record(cluster, request, None, "", decision))
                    continue
                placed[decision.node] += 1
                sandbox = kubelet.Sandbox(request.namespace, request.name, decision.node,
                                          netns.path(names.pod_netns(cluster, request.namespace, request.name)),
                                          kubelet.new_container_id())
                self.store.put(cluster, self._pod_record(cluster, request, node_info(nodes[decision.node]),
                                                         sandbox.container_id, decision))
                self.store.record(cluster, NETNS, names.pod_netns(cluster, request.namespace, request.name))
                sandboxes.append((sandbox, request))
        try:
            self.runtime.apply(tuple(Netns(names.pod_netns(cluster, s.namespace, s.name)) for s, _ in sandboxes))
            outcomes = self.runtime.cni_add(self.store.directory, cluster, [s for s, _ in sandboxes])
        except BaseException:
            self._delete_pods(spec, [self.pod(cluster, s.namespace, s.name) for s, _ in sandboxes])
            for request in requests:  # and the Pending ones this request wrote
                self.store.delete(cluster, "Pod", request.name, request.namespace)
            raise
        failed = [(s, outcome) for s, outcome in outcomes.items() if not isinstance(outcome, dict)]
        if failed:
            lingering = self.runtime.delete_namespaces([names.pod_netns(cluster, s.namespace, s.name) for s, _ in failed])
        with self.store.transaction():
            for sandbox, outcome in outcomes.items():
                record = self.pod(cluster, sandbox.namespace, sandbox.name)
                if isinstance(outcome, dict):
                    ip = kubelet.pod_ip(outcome)
                    record["status"].update(podIP=ip, podIPs=[{"ip": ip}])
                else:
                    record["status"]["message"] = f"FailedCreatePodSandBox: {outcome}"
                    netns_name = names.pod_netns(cluster, sandbox.namespace, sandbox.name)
                    if netns_name not in lingering:
                        self.store.forget(cluster, NETNS, netns_name)
                self.store.put(cluster, record)
        started = [(s, r) for s, r in sandboxes if isinstance(outcomes[s], dict)]
        try:
            agent = self.agent(cluster)
            for sandbox, request in started:
                pod_netns = names.pod_netns(cluster, sandbox.namespace, sandbox.name)
                probes = pod_probes(request.template.spec)
                health = {"specs": [p.as_dict() for p in probes], "podIP": kubelet.pod_ip(outcomes[sandbox]),
                          "nodeNetns": names.node_netns(cluster, sandbox.node), "podNetns": pod_netns} if probes else None
                agent.serve(pod_key(sandbox.namespace, sandbox.name), pod_netns, sandbox.name,
                            list(served_ports(request.template)), health)
        except BaseException:
            self._delete_pods(spec, [self.pod(cluster, s.namespace, s.name) for s, _ in started])
            raise
        self._sync_routes(spec)
        with self.store.transaction():
            for sandbox, _ in started:
                record = self.pod(cluster, sandbox.namespace, sandbox.name)
                self._mark_running(record)
                self.store.put(cluster, record)

    @staticmethod
    def _pod_capacity(spec: ClusterSpec, node: dict) -> int:
        """Pods a node can take: as many as the mode gives it, or the pool's addresses when a
        conflist of the user's wires the pods."""
        if spec.cni_config:
            return spec.cluster_cidr.num_addresses
        return get_mode(spec.cni).pod_capacity(spec, ipaddress.IPv4Network(node["spec"]["podCIDR"]))

    def _pod_record(self, cluster: str, request: _PodRequest, node: NodeInfo | None, container_id: str,
                    decision: scheduler.Decision) -> dict:
        spec = dict(request.template.spec)
        metadata = {"name": request.name, "namespace": request.namespace, "labels": dict(request.template.labels),
                    "creationTimestamp": _now()}
        if request.owner:
            metadata["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "Deployment", "name": request.owner}]
        if node is None:
            status = {"phase": "Pending", "reason": decision.reason, "message": decision.message,
                      "conditions": [{"type": "PodScheduled", "status": "False", "reason": decision.reason,
                                      "message": decision.message}]}
        else:
            spec["nodeName"] = node.name
            metadata["annotations"] = {NETNS_ANNOTATION: names.pod_netns(cluster, request.namespace, request.name),
                                       CONTAINER_ANNOTATION: container_id}
            status = {"phase": "Pending", "reason": "ContainerCreating", "hostIP": str(node.ip),
                      "conditions": [{"type": "PodScheduled", "status": "True"}]}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}

    @staticmethod
    def _mark_running(record: dict) -> None:
        """Running; Ready at once, or (with a readiness probe) once the probe first passes."""
        now = _now()
        ready = not any(p.kind == "readiness" for p in pod_probes(record["spec"]))
        status = record["status"]
        status.pop("reason", None)
        status.update(phase="Running", startTime=now, conditions=[
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
        ])
        status["containerStatuses"] = [
            {"name": c.get("name"), "ready": ready, "restartCount": 0, "state": {"running": {"startedAt": now}}}
            for c in record["spec"].get("containers", [])
        ]
        ClusterManager._set_ready(record, ready, now)

    @staticmethod
    def _set_ready(record: dict, ready: bool, now: str) -> None:
        conditions = [c for c in record["status"]["conditions"] if c["type"] not in ("ContainersReady", "Ready")]
        value = "True" if ready else "False"
        reason = {} if ready else {"reason": "ContainersNotReady"}
        conditions += [{"type": "ContainersReady", "status": value, **reason},
                       {"type": "Ready", "status": value, "lastTransitionTime": now, **reason}]
        record["status"]["conditions"] = conditions
        for container in record["status"].get("containerStatuses", []):
            container["ready"] = ready

    def pod_health(self, cluster: str, namespace: str, name: str, kind: str, ok: bool) -> None:
        """What the agent's prober found: readiness moves the pod in and out of its Services'
        endpoints; a failed liveness probe counts a restart (the agent restarted the server)."""
        with self.store.cluster_lock(cluster):
            record = self.store.get(cluster, "Pod", name, namespace)
            if record is None or record["status"].get("phase") != "Running":
                return
            if kind == "liveness":
                if not ok:
                    for container in record["status"].get("containerStatuses", []):
                        container["restartCount"] = container.get("restartCount", 0) + 1
                    self.store.put(cluster, record)
                return
            self._set_ready(record, ok, _now())
            self.store.put(cluster, record)
            spec = self.spec(cluster)
            self._refresh_deployment_status(cluster)
            proxier.sync(self, spec)

    def _delete_pods(self, spec: ClusterSpec, records: list[dict]) -> None:
        """Stop the test server, CNI DEL, delete the sandbox, forget the pod."""
        if not records:
            return
        cluster = spec.name
        # Attached pods only: a pod whose ADD failed was given its DEL then, and has no sandbox.
        bound = [r for r in records if r["status"].get("podIP")]
        if bound:
            try:
                agent = self.agent(cluster)
                for record in bound:
                    agent.unserve(pod_key(record["metadata"]["namespace"], record["metadata"]["name"]))
            except AgentError:  # an agent that is gone holds no sockets
                pass
            self.runtime.cni_delete(self.store.directory, cluster, [sandbox_of(cluster, r) for r in bound])
            lingering = self.runtime.delete_namespaces(
                [names.pod_netns(cluster, r["metadata"]["namespace"], r["metadata"]["name"]) for r in bound])
            if lingering:
                raise KernelError(f'cluster "{cluster}": pod namespaces still present after delete: {", ".join(lingering)}')
        with self.store.transaction():
            for record in records:
                meta = record["metadata"]
                self.store.forget(cluster, NETNS, names.pod_netns(cluster, meta["namespace"], meta["name"]))
                self.store.delete(cluster, "Pod", meta["name"], meta["namespace"])
        self._sync_routes(spec)

    def _sync_routes(self, spec: ClusterSpec) -> None:
        """Felix's or BIRD's part in a mode with IPAM blocks: the routes between nodes follow
        the blocks, on every node."""
        if not uses_ipam_blocks(spec):
            return
        from overlaynet.node.routes import sync_routes

        sync_routes(self, spec)

    def _schedule_pending(self, spec: ClusterSpec) -> None:
        """Give Pending pods another chance (a node joined or capacity was freed)."""
        pending = [p for p in self.pods(spec.name) if not p["status"].get("podIP")]
        requests = []
        for record in pending:
            meta = record["metadata"]
            manifest = parse_document({"kind": "Pod", "metadata": meta, "spec": record["spec"]}, "store")
            owner = next((o["name"] for o in meta.get("ownerReferences", []) if o.get("kind") == "Deployment"), None)
            requests.append(_PodRequest(meta["namespace"], meta["name"], manifest.template, owner))
            self.store.delete(spec.name, "Pod", meta["name"], meta["namespace"])
        self._create_pods(spec, requests)

    def _reconcile_deployments(self, spec: ClusterSpec) -> None:
        """Bring every Deployment back to its replica count (after a pod or node went away)."""
        creates: list[_PodRequest] = []
        deletes: list[dict] = []
        for record in self.deployments(spec.name):
            manifest = parse_document(record, "store")
            self._apply_deployment_manifest(spec.name, manifest, creates, deletes)
        self._delete_pods(spec, deletes)
        self._create_pods(spec, creates)
        self._refresh_deployment_status(spec.name)

    def _refresh_deployment_status(self, cluster: str) -> None:
        with self.store.transaction():
            for record in self.deployments(cluster):
                meta = record["metadata"]
                pods = self._owned_pods(cluster, meta["namespace"], meta["name"])
                ready = sum(1 for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                                   for c in p["status"].get("conditions", [])))
                record["status"] = {"replicas": len(pods), "readyReplicas": ready,
                                    "availableReplicas": ready, "updatedReplicas": len(pods)}
                self.store.put(cluster, record)
