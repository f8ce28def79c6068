"""A cluster's lifecycle: the order of up, down, node add and remove, apply and delete.

``ClusterManager`` turns requests into store updates and plans, and hands the plans to the
kernel side through the ``Runtime`` it is given (``overlaynet.control.seams``; by default the
host's, ``overlaynet.control.runtime``). It owns the order that makes crashes harmless: every
namespace is recorded in the store before it is created, and any failure part-way through an
operation removes what that operation built before the error reaches the user. The steps are other modules':
node IPAM (``node_ipam``), the Deployment controller (``deployments``), the pods' lifecycle
(``pods``), the object shapes (``records``), kube-proxy and the routes (``overlaynet.node``).
It never builds kernel objects itself (``topology`` and ``modes`` plan them) and never
prints (the CLI does).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from overlaynet import names
from overlaynet.api.manifests import DeploymentManifest, Manifest, PodManifest
from overlaynet.api.model import ClusterSpec, NodeSpec, check_ranges, spec_from_document
from overlaynet.api.netpol import Namespace, NetworkPolicy
from overlaynet.api.services import EndpointSlice, Service
from overlaynet.control import deployments, dns, pods, policies, reconcile
from overlaynet.control.node_ipam import allocate_node
from overlaynet.control.ownership import AGENT, HOST, NETNS, PATH, agent_socket
from overlaynet.control.reconcile import Repair
from overlaynet.control.records import (
    NODE_SERVER_PORTS,
    PodRequest,
    node_info,
    node_key,
    node_ready,
    now,
    set_ready,
)
from overlaynet.control.seams import Agent, Runtime
from overlaynet.control.store import Store
from overlaynet.datapath import topology
from overlaynet.datapath.modes import Mode, get_mode, uses_ipam_blocks
from overlaynet.datapath.plan import Plan, namespaces
from overlaynet.datapath.topology import NodeInfo
from overlaynet.errors import AgentError, BusyError, ConflictError, InvalidInput, KernelError, NotFoundError
from overlaynet.ipam.blocks import BlockIPAM
from overlaynet.node import bgp_mesh, kubelet, netpol_sync, proxier, routes

__all__ = ["ClusterManager"]


class ClusterManager:
    def __init__(self, store: Store, runtime: Runtime | None = None):
        self.store = store
        self._runtime = runtime

    @property
    def runtime(self) -> Runtime:
        """The side effects: the host's (``HostRuntime``) unless another was given."""
        if self._runtime is None:
            # Loaded on first use: reading commands (`get`) never load the kernel side or asyncio.
            from overlaynet.control.runtime import HostRuntime

            self._runtime = HostRuntime()
        return self._runtime

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
        return agent_socket(self.store, cluster)

    def agent(self, cluster: str) -> Agent:
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
                nodes = [allocate_node(self.store, spec, mode, node_spec) for node_spec in spec.nodes]
                plan = topology.plan_cluster(spec, mode, nodes)
                self._record_namespaces(spec.name, plan)
                # The agent's interpreter starts (~0.2 s) while the nodes are built: it touches
                # no namespace before it is asked to serve one.
                socket_path, log_path = self._record_agent(spec.name)
                with ThreadPoolExecutor(max_workers=1) as starter:
                    agent_started = starter.submit(self.runtime.start_agent, spec.name, socket_path, log_path)
                    self.runtime.apply(plan)
                agent_started.result()
                agent = self.agent(spec.name)
                for node in nodes:
                    self._configure_node_cni(spec, node.name)
                    agent.serve(node_key(node.name), names.node_netns(spec.name, node.name), node.name,
                                list(NODE_SERVER_PORTS))
                    self._set_node_ready(spec.name, node.name)
                routes.sync_routes(self.store, self.runtime, spec)
                if spec.dns:  # kubeadm's CoreDNS add-on: ordinary objects in kube-system
                    self._apply(spec, dns.addon_manifests(spec))
                self._watch(spec)
                self.store.set_phase(spec.name, "Running")
            except BaseException:
                self._teardown(spec.name)
                raise

    def down(self, cluster: str) -> dict:
        """Remove everything ``cluster`` owns; return what was removed."""
        with self.store.cluster_lock(cluster):
            if self.store.get_cluster(cluster) is None and not any(
                    self.store.owned(cluster, kind) for kind in (NETNS, AGENT, PATH)):
                # An `up` killed before it recorded anything left only its lock file and,
                # perhaps, its kernel probe's throwaway namespace (swept by delete_namespaces).
                self.store.remove_lock(cluster)
                self.runtime.delete_namespaces([])
                raise NotFoundError(f'cluster "{cluster}" does not exist')
            removed = self._teardown(cluster)
            self.store.remove_lock(cluster)
            return removed

    def _teardown(self, cluster: str) -> dict:
        socket_path = self.agent_socket(cluster)
        self.runtime.stop_agent(cluster, socket_path)
        self.store.forget(cluster, AGENT, socket_path)
        bgp_mesh.stop_all(self.store, self.runtime.bird, cluster)  # a BIRD would outlive its namespace's name
        owned = self.store.owned(cluster, NETNS)  # newest first: pods, then nodes, underlay
        lingering = self.runtime.delete_namespaces(owned)
        with self.store.transaction():
            for name in set(owned) - set(lingering):
                self.store.forget(cluster, NETNS, name)
        if lingering:
            raise KernelError(f'cluster "{cluster}": namespaces still present after delete: {", ".join(lingering)}')
        for path in self.store.owned(cluster, PATH):
            self.runtime.remove_path(path)
            self.store.forget(cluster, PATH, path)
        self.store.delete_cluster(cluster)
        self._restore_host_limits()
        return {"namespaces": len(owned)}

    def _raise_host_limits(self) -> None:
        """Raise host-wide limits (the shared ARP table) and remember the originals first."""
        with self.store.cluster_lock(HOST):
            if self.store.get_meta(HOST, "host-limits") is None:
                self.store.set_meta(HOST, "host-limits", json.dumps(self.runtime.host_limits()))
            self.runtime.raise_host_limits()

    def _restore_host_limits(self) -> None:
        """Put host-wide limits back once no cluster is left."""
        with self.store.cluster_lock(HOST):
            if self.store.cluster_names():
                return
            originals = self.store.get_meta(HOST, "host-limits")
            if originals is not None:
                self.runtime.restore_host_limits(json.loads(originals))
                self.store.delete_cluster(HOST)
            self.store.remove_lock(HOST)

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

    def _record_agent(self, cluster: str) -> tuple[str, str]:
        """Record the agent's socket and log before it starts; both paths."""
        socket_path = self.agent_socket(cluster)
        log_path = self.store.runtime_path(cluster, "agent.log")
        self.store.record(cluster, AGENT, socket_path)
        self.store.record(cluster, PATH, log_path)
        return socket_path, log_path

    def _record_namespaces(self, cluster: str, plan: Plan) -> None:
        with self.store.transaction():
            for name in namespaces(plan):
                self.store.record(cluster, NETNS, name)

    # -- nodes ------------------------------------------------------------------------------------

    def _set_node_ready(self, cluster: str, node: str) -> None:
        record = self.node(cluster, node)
        node_ready(record)
        self.store.put(cluster, record)

    def add_node(self, cluster: str, node_spec: NodeSpec) -> dict:
        with self.store.cluster_lock(cluster):
            spec = self.spec(cluster)
            if self.store.get(cluster, "Node", node_spec.name) is not None:
                raise ConflictError(f'node "{node_spec.name}" already exists in cluster "{cluster}"')
            mode = get_mode(spec.cni)
            grown = replace(spec, nodes=spec.nodes + (node_spec,))
            check_ranges(grown)
            peers = [node_info(n) for n in self.nodes(cluster)]
            node = allocate_node(self.store, spec, mode, node_spec)
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
            self._watch(grown)
            self._schedule_pending(spec)
            self._sync_services(spec)
            netpol_sync.sync(self.store, self.runtime, spec)
            return self.node(cluster, node.name)

    def remove_node(self, cluster: str, name: str) -> None:
        with self.store.cluster_lock(cluster):
            spec = self.spec(cluster)
            record = self.node(cluster, name)
            if len(self.nodes(cluster)) == 1:
                raise InvalidInput(f'node "{name}": it is the last node of cluster "{cluster}"; use `overlaynet down`')
            mode = get_mode(spec.cni)
            pods.delete_pods(self.store, self.runtime, spec,
                             [p for p in self.pods(cluster) if p["spec"].get("nodeName") == name])
            node = node_info(record)
            peers = [node_info(n) for n in self.nodes(cluster) if n["metadata"]["name"] != name]
            self._remove_node_objects(spec, mode, node, peers)
            self._update_document(cluster, replace(spec, nodes=tuple(n for n in spec.nodes if n.name != name)))
            self._watch(self.spec(cluster))
            self._reconcile_deployments(spec)
            routes.sync_routes(self.store, self.runtime, spec)
            self._sync_services(spec)
            netpol_sync.sync(self.store, self.runtime, spec)

    def _remove_node_objects(self, spec: ClusterSpec, mode: Mode, node: NodeInfo, peers: list[NodeInfo]) -> None:
        """Undo a node: the peers' routes to it first (Flannel's lease removal), then the node."""
        if spec.bgp == "bird":
            bgp_mesh.stop_node(self.store, self.runtime.bird, spec.name, node.name)
        if uses_ipam_blocks(spec):
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
            pods.restart_stranded(self.store, self.runtime, spec)  # an earlier apply that died part-way
            return self._apply(spec, manifests)

    def _apply(self, spec: ClusterSpec, manifests: list[Manifest]) -> list[str]:
        cluster = spec.name
        report: list[str] = []
        creates: list[PodRequest] = []
        deletes: list[dict] = []
        applied: list[dict] = []
        service_lines, service_documents = proxier.plan_services(
            self.store, spec, [m for m in manifests if isinstance(m, Service)],
            [m for m in manifests if isinstance(m, EndpointSlice)])
        for manifest in manifests:
            if isinstance(manifest, PodManifest):
                report.append(self._apply_pod_manifest(cluster, manifest, creates))
            elif isinstance(manifest, DeploymentManifest):
                line, record = deployments.apply_manifest(self.store, cluster, manifest, creates, deletes)
                report.append(line)
                applied.append(record)
        for request in creates:  # a name the kernel would refuse stops the apply before any change
            names.pod_netns(cluster, request.namespace, request.name)
        policy_objects = [m for m in manifests if isinstance(m, NetworkPolicy | Namespace)]
        if any(isinstance(m, NetworkPolicy) for m in policy_objects):
            netpol_sync.check_supported(spec)
            netpol_sync.prepare_nodes(self.store, self.runtime, spec)  # refused before anything is stored
        report += policies.apply_objects(self.store, cluster, policy_objects)
        proxier.store_documents(self.store, spec, service_documents)
        pods.delete_pods(self.store, self.runtime, spec, deletes)
        pods.create_pods(self.store, self.runtime, spec, creates)
        for record in applied:
            self.store.put(cluster, record)
        deployments.refresh_status(self.store, cluster)
        self._sync_services(spec)
        netpol_sync.sync(self.store, self.runtime, spec)
        return report + service_lines

    def _apply_pod_manifest(self, cluster: str, manifest: PodManifest, creates: list[PodRequest]) -> str:
        """A new pod is queued on ``creates``; a label change is stored at once. The kubectl line."""
        existing = self.store.get(cluster, "Pod", manifest.name, manifest.namespace)
        if existing is None:
            if any(r.namespace == manifest.namespace and r.name == manifest.name for r in creates):
                raise InvalidInput(f'pod "{manifest.name}": defined twice in the applied files')
            creates.append(PodRequest(manifest.namespace, manifest.name, manifest.template))
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

    def delete_pod(self, cluster: str, namespace: str, name: str) -> None:
        with self.store.cluster_lock(cluster):
            spec = self.spec(cluster)
            pods.delete_pods(self.store, self.runtime, spec, [self.pod(cluster, namespace, name)])
            self._reconcile_deployments(spec)
            self._schedule_pending(spec)
            self._sync_services(spec)
            netpol_sync.sync(self.store, self.runtime, spec)

    def delete_deployment(self, cluster: str, namespace: str, name: str) -> None:
        with self.store.cluster_lock(cluster):
            spec = self.spec(cluster)
            if self.store.get(cluster, "Deployment", name, namespace) is None:
                raise NotFoundError(f'deployment "{name}" not found in namespace "{namespace}" of cluster "{cluster}"')
            pods.delete_pods(self.store, self.runtime, spec, deployments.owned_pods(self.store, cluster, namespace, name))
            self.store.delete(cluster, "Deployment", name, namespace)
            self._schedule_pending(spec)
            self._sync_services(spec)
            netpol_sync.sync(self.store, self.runtime, spec)

    def delete_service(self, cluster: str, namespace: str, name: str) -> None:
        with self.store.cluster_lock(cluster):
            spec = self.spec(cluster)
            proxier.delete_service(self.store, spec, namespace, name)
            self._sync_services(spec)

    def reconcile(self, cluster: str) -> list[Repair]:
        """One repair pass over what was changed behind overlaynet's back (``reconcile``)."""
        with self.store.cluster_lock(cluster):
            spec = self.spec(cluster)
            repairs = reconcile.reconcile(self.store, self.runtime, spec)
            self._watch(spec)  # an agent started again watches nothing yet
            return repairs

    def heal(self, cluster: str, kernel_changed: bool, rules_changed: bool = False,
             agent_lost: bool = False) -> list[Repair] | None:
        """A pass of the self-heal loop (``selfHeal: true``; the agent's watcher, or with
        ``agent_lost`` its guardian): reconcile when the agent died or ``reconcile.drifted``
        finds work. None when an operation holds the cluster's lock: the watcher asks again a
        second later (what the operation changed is not drift). [] for a cluster gone."""
        if self.store.get_cluster(cluster) is None:  # down removed it, and with it the lock file
            return []
        try:
            with self.store.cluster_lock(cluster, wait=False):
                found = self.store.get_cluster(cluster)
                if found is None or found["phase"] != "Running":
                    return []
                spec = self.spec(cluster)
                if not spec.self_heal or not (agent_lost or reconcile.drifted(self.store, self.runtime, spec,
                                                                              kernel_changed, rules_changed)):
                    return []
                repairs = reconcile.reconcile(self.store, self.runtime, spec)
                self._watch(spec)
                return repairs
        except BusyError:
            return None

    def _watch(self, spec: ClusterSpec) -> None:
        """Tell the agent which namespaces to watch for the self-heal loop: the underlay and
        the nodes (a pod's veth and routes are its node's; a pod netns deleted takes its veth)."""
        if spec.self_heal:
            self.agent(spec.name).watch([names.underlay_netns(spec.name)] +
                                        [names.node_netns(spec.name, n["metadata"]["name"]) for n in self.nodes(spec.name)])

    def delete_policy(self, cluster: str, namespace: str, name: str) -> None:
        with self.store.cluster_lock(cluster):
            spec = self.spec(cluster)
            policies.delete_policy(self.store, cluster, namespace, name)
            netpol_sync.sync(self.store, self.runtime, spec)

    def delete_namespace(self, cluster: str, name: str) -> None:
        with self.store.cluster_lock(cluster):
            spec = self.spec(cluster)
            policies.delete_namespace(self.store, cluster, name)
            netpol_sync.sync(self.store, self.runtime, spec)

    def label(self, cluster: str, kind: str, namespace: str, name: str, setting: dict[str, str],
              removing: list[str], overwrite: bool = False) -> str:
        """kubectl label on a pod (its Services' endpoints and the policies follow) or a namespace."""
        with self.store.cluster_lock(cluster):
            spec = self.spec(cluster)
            if kind == "pod":
                line = policies.label_pod(self.store, cluster, namespace, name, setting, removing, overwrite)
                self._sync_services(spec)
            else:
                line = policies.label_namespace(self.store, cluster, name, setting, removing, overwrite)
            netpol_sync.sync(self.store, self.runtime, spec)
            return line

    def pod_health(self, cluster: str, namespace: str, name: str, kind: str, ok: bool,
                   current: Callable[[], bool] = lambda: True) -> None:
        """What the agent's prober found: readiness moves the pod in and out of its Services'
        endpoints; a failed liveness probe counts a restart (the agent restarted the server).
        ``current()``, asked once the lock is held, is False when the prober that found it was
        replaced meanwhile (the pod served again): its successor reports for itself."""
        with self.store.cluster_lock(cluster):
            if not current():
                return
            record = self.store.get(cluster, "Pod", name, namespace)
            if record is None or record["status"].get("phase") != "Running":
                return
            if kind == "liveness":
                if not ok:
                    for container in record["status"].get("containerStatuses", []):
                        container["restartCount"] = container.get("restartCount", 0) + 1
                    self.store.put(cluster, record)
                return
            set_ready(record, ok, now())
            self.store.put(cluster, record)
            spec = self.spec(cluster)
            deployments.refresh_status(self.store, cluster)
            self._sync_services(spec)

    def _sync_services(self, spec: ClusterSpec) -> None:
        """kube-proxy's sync (with the EndpointSlice controller), then the cluster DNS's records."""
        proxier.sync(self.store, self.runtime, spec)
        dns.sync_zone(self.store, self.runtime, spec)

    def _schedule_pending(self, spec: ClusterSpec) -> None:
        """Give Pending pods another chance (a node joined or capacity was freed)."""
        pods.create_pods(self.store, self.runtime, spec, pods.pending_requests(self.store, spec.name))

    def _reconcile_deployments(self, spec: ClusterSpec) -> None:
        """Bring every Deployment back to its replica count (after a pod or node went away)."""
        creates, deletes = deployments.reconcile(self.store, spec.name)
        pods.delete_pods(self.store, self.runtime, spec, deletes)
        pods.create_pods(self.store, self.runtime, spec, creates)
        deployments.refresh_status(self.store, spec.name)
