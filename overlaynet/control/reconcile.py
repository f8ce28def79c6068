"""Reconciliation: put back what was changed behind overlaynet's back, and say what it was.

Real components re-converge on their resync: flanneld re-adds the routes, neighbours and FDB
entries of its peers, Felix its routes, kube-proxy rewrites its chains in full, the kubelet
restarts what a pod runs. ``reconcile`` does one such pass over a cluster, in that order of
dependence:

1. the agent (the pods' processes): started again when it does not answer;
2. pods a process that died left half-created: created again (``pods.restart_stranded``);
3. the kernel objects of the cluster's plan (``topology.plan_cluster``: nodes, bridges,
   tunnels, peer routes, neighbours and FDB entries; the block routes of a Calico-like mode;
   each running pod's attachment as its mode plans it): the steps the kernel no longer shows
   (``Runtime.missing_steps``) are applied again; then every node's and running pod's test
   server is served again where the agent lacks it;
4. BIRD, with ``bgp: bird``: a daemon that is not running is started again;
5. kube-proxy: a full sync of every node (as after a restart), reporting the rules it wrote
   back (``iptables-save`` before and after, counters left out);
6. the NetworkPolicy agent (``node/netpol_sync``): its sync, reporting the ``cali-*`` rules
   of the ``filter`` table it wrote back, the same way;
7. the cluster DNS: its records pushed to the agent again (``dns.sync_zone``).

What it cannot put back it reports, with what to do: a pod whose network namespace is gone
(its sandbox is lost; the kubelet would make a new one: delete the pod). A cluster with the
user's own conflist (``cniConfig``) has its pods' attachments left to those plugins.

``drifted`` is the cheap look a self-heal pass (``ClusterManager.heal``) takes first: a BIRD
that is not running; after a netlink event, a step of the plan the kernel no longer shows;
after an nf_tables event, a node whose kube-proxy or policy chains are not what a sync would
load now, or that lost one of kube-proxy's canary chains (``rules_drifted``). Only then does
the pass reconcile.

What it never does: touch what the cluster does not own, or print (the CLI does).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re

from overlaynet import names
from overlaynet.api.model import ClusterSpec
from overlaynet.control import dns, pods
from overlaynet.control.ownership import PATH, agent_socket
from overlaynet.control.records import CONTAINER_ANNOTATION, NODE_SERVER_PORTS, node_info, node_key, pod_key
from overlaynet.control.seams import Runtime
from overlaynet.control.store import Store
from overlaynet.datapath import topology
from overlaynet.datapath.modes import get_mode, uses_ipam_blocks
from overlaynet.datapath.plan import Netns, Plan, Step, words
from overlaynet.datapath.topology import NodeInfo, PodInfo
from overlaynet.errors import AgentError, KernelError, RuleError
from overlaynet.node import bgp_mesh, netpol_sync, proxier, routes
from overlaynet.proxy.render import CANARY_TABLES, KUBE_PROXY_CANARY
from overlaynet.proxy.rules import owned_rule_lines, saved_chain_lines

__all__ = ["Repair", "reconcile"]

_COUNTERS = re.compile(r"^\[\d+:\d+\] ")


@dataclasses.dataclass(frozen=True)
class Repair:
    """One thing found wrong: where (``node/node-1``, ``pod/default/web-1``, ``agent``), what,
    and whether this pass put it back (else ``what`` says what to do)."""

    where: str
    what: str
    repaired: bool = True


KERNEL_ROUNDS = 3  # kernel passes in one reconcile: what a repair replaced is checked again


def _running_pods(store: Store, cluster: str) -> list[dict]:
    return [p for p in store.list(cluster, "Pod") if p["status"].get("podIP") and p["spec"].get("nodeName")]


def _pod_where(record: dict) -> str:
    return f"pod/{record['metadata']['namespace']}/{record['metadata']['name']}"


def _pod_netns(cluster: str, record: dict) -> str:
    return names.pod_netns(cluster, record["metadata"]["namespace"], record["metadata"]["name"])


def _node_infos(store: Store, spec: ClusterSpec) -> list[NodeInfo]:
    if uses_ipam_blocks(spec):
        return routes.node_infos(store, spec)
    return [node_info(record) for record in store.list(spec.name, "Node")]


def plan_desired(spec: ClusterSpec, nodes: list[NodeInfo], running: list[dict]) -> tuple[Plan, dict[Step, dict]]:
    """The kernel objects the cluster should have (pure, each once), and for the steps of a
    running pod's attachment, the pod (every running pod, unless the user's conflist makes
    them). A pod's steps start with its sandbox namespace: if that is missing, so is the pod."""
    mode = get_mode(spec.cni)
    plan = topology.plan_cluster(spec, mode, nodes)
    if uses_ipam_blocks(spec) and spec.bgp != "bird":
        for node in nodes:
            plan += routes.plan_routes(spec, node, nodes)
    owners: dict[Step, dict] = {}
    by_name = {node.name: node for node in nodes}
    for record in [] if spec.cni_config else running:
        meta, node = record["metadata"], by_name.get(record["spec"]["nodeName"])
        if node is None:
            continue
        pod = PodInfo(namespace=meta["namespace"], name=meta["name"],
                      ip=ipaddress.IPv4Address(record["status"]["podIP"]), node=node.name,
                      netns=_pod_netns(spec.name, record), host_netns=names.node_netns(spec.name, node.name),
                      container_id=meta.get("annotations", {}).get(CONTAINER_ANNOTATION, ""))
        steps = (Netns(pod.netns), *mode.plan_pod(spec, node, pod))
        owners.update(dict.fromkeys(steps, record))
        plan += steps
    return tuple(dict.fromkeys(plan)), owners


def _where(spec: ClusterSpec, step: Step, owners: dict[Step, dict]) -> str:
    """``pod/default/web-1``, ``node/node-1`` or the namespace, for a step of the cluster."""
    if step in owners:
        return _pod_where(owners[step])
    ns = step.name if isinstance(step, Netns) else step.netns
    for node in spec.nodes:
        if ns == names.node_netns(spec.name, node.name):
            return f"node/{node.name}"
    return f'netns "{ns}"'


def _reconcile_kernel(store: Store, runtime: Runtime, spec: ClusterSpec,
                      running: list[dict]) -> tuple[list[Repair], set[str], set[str]]:
    """The repairs, the pod namespaces that are lost (not re-created: the sandbox is gone), and
    the namespaces made again (a node's: what the agent serves there must be served afresh)."""
    plan, owners = plan_desired(spec, _node_infos(store, spec), running)
    missing = runtime.missing_steps(plan)
    lost = {step.name: owners[step] for step in missing if isinstance(step, Netns) and step in owners}
    repairs = [Repair(_pod_where(record),
                      f'its network namespace "{sandbox}" is gone, and its sandbox with it: '
                      f"`overlaynet delete pod {record['metadata']['name']}` (a Deployment makes "
                      "a new one; a bare pod you apply again)", repaired=False)
               for sandbox, record in sorted(lost.items())]
    missing = [step for step in missing if not (step in owners and _pod_netns(spec.name, owners[step]) in lost)]
    remade = {step.name for step in missing if isinstance(step, Netns)}
    for _ in range(KERNEL_ROUNDS):
        if not missing:
            break
        runtime.apply(tuple(missing))
        repairs += [Repair(_where(spec, step, owners), f"{words(step)}: put back") for step in missing]
        # A device made again (a pod's eth0 whose peer was in a deleted node namespace) comes
        # without what was configured on the old one: look again.
        missing = [step for step in runtime.missing_steps(plan)
                   if not (step in owners and _pod_netns(spec.name, owners[step]) in lost)]
    return repairs, set(lost), remade


def _ensure_agent(store: Store, runtime: Runtime, spec: ClusterSpec) -> tuple[list[Repair], set[str]]:
    """The agent answering (started again if it does not), and the keys it serves."""
    socket_path = agent_socket(store, spec.name)
    try:
        return [], {served["key"] for served in runtime.agent(spec.name, socket_path).list()}
    except AgentError:
        log_path = store.runtime_path(spec.name, "agent.log")
        store.record(spec.name, PATH, log_path)
        pid = runtime.start_agent(spec.name, socket_path, log_path)
        return [Repair("agent", f"did not answer; started again (pid {pid}), log {log_path}")], set()


def _serve_missing(store: Store, runtime: Runtime, spec: ClusterSpec, running: list[dict], keys: set[str],
                   lost: set[str], remade: set[str]) -> list[Repair]:
    agent = runtime.agent(spec.name, agent_socket(store, spec.name))
    repairs = []
    for node in store.list(spec.name, "Node"):
        name = node["metadata"]["name"]
        if node_key(name) not in keys or names.node_netns(spec.name, name) in remade:
            agent.serve(node_key(name), names.node_netns(spec.name, name), name, list(NODE_SERVER_PORTS))
            repairs.append(Repair(f"node/{name}", "its test server served again"))
    for record in running:
        meta = record["metadata"]
        if pod_key(meta["namespace"], meta["name"]) in keys or _pod_netns(spec.name, record) in lost:
            continue
        pods.serve_pod(agent, spec.name, meta["namespace"], meta["name"], record["spec"]["nodeName"],
                       record["status"]["podIP"], pods.stored_template(record))
        repairs.append(Repair(_pod_where(record), "its test server served again"))
    return repairs


def _reconcile_bird(store: Store, runtime: Runtime, spec: ClusterSpec) -> list[Repair]:
    dead = _dead_birds(store, runtime, spec)
    if dead:
        bgp_mesh.sync(store, runtime.bird, spec, routes.node_infos(store, spec))
    return [Repair(f"node/{name}", "BIRD was not running; started again") for name in dead]


def _saved_rules(runtime: Runtime, netns_name: str, backend: str, table: str) -> list[str]:
    """The rules of ``table``, as ``iptables-save`` prints them without counters."""
    text = runtime.iptables.save(netns_name, backend, table)
    return [_COUNTERS.sub("", line) for line in text.splitlines() if line and not line.startswith(("#", ":"))]


def _written_back(node: str, before: list[str], after: list[str], who: str, table: str) -> list[Repair]:
    """The repair of a node whose rules a sync wrote back (the first three shown), if any."""
    restored = [line[2:] for line in difflib.ndiff(sorted(before), sorted(after)) if line.startswith("+ ")]
    if not restored:
        return []
    shown = "; ".join(restored[:3]) + (f"; and {len(restored) - 3} more" if len(restored) > 3 else "")
    return [Repair(f"node/{node}", f"{who} wrote back {len(restored)} {table} rule(s): {shown}")]


def _reconcile_policies(store: Store, runtime: Runtime, spec: ClusterSpec) -> list[Repair]:
    if store.get_meta(spec.name, netpol_sync.SYNCED) is None:
        return []  # the cluster never had a NetworkPolicy
    backend = store.get_meta(spec.name, "netpol-backend") or runtime.iptables.backend()
    nodes = [n["metadata"]["name"] for n in store.list(spec.name, "Node")]

    def policy_rules(node: str) -> list[str]:
        return [line for line in _saved_rules(runtime, names.node_netns(spec.name, node), backend, "filter")
                if "cali-" in line]

    before = {node: policy_rules(node) for node in nodes}
    netpol_sync.sync(store, runtime, spec)
    return [repair for node in nodes
            for repair in _written_back(node, before[node], policy_rules(node), "the policy agent", "filter")]


def _reconcile_proxy(store: Store, runtime: Runtime, spec: ClusterSpec) -> list[Repair]:
    backend = store.get_meta(spec.name, "kube-proxy-backend")  # None: never synced (a process died first)
    nodes = [n["metadata"]["name"] for n in store.list(spec.name, "Node")]
    before = {node: _saved_rules(runtime, names.node_netns(spec.name, node), backend, "nat") if backend else []
              for node in nodes}
    store.set_meta(spec.name, "kube-proxy-synced", "{}")  # the next sync is a full one, as after a restart
    proxier.sync(store, runtime, spec)
    backend = store.get_meta(spec.name, "kube-proxy-backend")
    if backend is None:
        return []  # the cluster never had a Service: kube-proxy has nothing to keep
    return [repair for node in nodes
            for repair in _written_back(node, before[node],
                                        _saved_rules(runtime, names.node_netns(spec.name, node), backend, "nat"),
                                        "kube-proxy", "nat")]


def _restart_stranded(store: Store, runtime: Runtime, spec: ClusterSpec) -> list[Repair]:
    """Pods a process that died left half-created, created again (``pods.restart_stranded``)."""
    repairs = []
    for pod in pods.restart_stranded(store, runtime, spec):
        namespace, name = pod.split("/")
        status = (store.get(spec.name, "Pod", name, namespace) or {}).get("status", {})
        what = "left half-created by a process that died; created again"
        if status.get("phase") == "Running":
            repairs.append(Repair(f"pod/{pod}", what))
        else:
            reason = status.get("message", status.get("reason", "not running"))
            repairs.append(Repair(f"pod/{pod}", f"{what}, but: {reason}", repaired=False))
    return repairs


def _dead_birds(store: Store, runtime: Runtime, spec: ClusterSpec) -> list[str]:
    """The nodes whose BIRD is not running (none without ``bgp: bird``)."""
    if not (uses_ipam_blocks(spec) and spec.bgp == "bird"):
        return []
    return [node.name for node in routes.node_infos(store, spec)
            if runtime.bird.running_pid(bgp_mesh.bird_files(store.directory, spec.name, node.name)[2]) is None]


def drifted(store: Store, runtime: Runtime, spec: ClusterSpec, kernel: bool, rules: bool = False) -> bool:
    """Whether a pass has work: a BIRD down, (``kernel``) a planned kernel object missing, or
    (``rules``) a node's iptables rules drifted."""
    if _dead_birds(store, runtime, spec):
        return True
    if kernel:
        plan, _ = plan_desired(spec, _node_infos(store, spec), _running_pods(store, spec.name))
        if runtime.missing_steps(plan):
            return True
    return rules and bool(rules_drifted(store, runtime, spec))


def rules_drifted(store: Store, runtime: Runtime, spec: ClusterSpec) -> list[str]:
    """The nodes whose ``KUBE-*`` and ``cali-*`` rules differ from what kube-proxy's and the
    policy agent's syncs would load now (compared as ``rules --diff`` does), or that lost a
    ``KUBE-PROXY-CANARY`` chain: one ``iptables-save`` a node."""
    proxy_backend = store.get_meta(spec.name, "kube-proxy-backend")  # None: kube-proxy never ran
    policies = store.get_meta(spec.name, netpol_sync.SYNCED) is not None
    if proxy_backend is None and not policies:
        return []
    backend = proxy_backend or store.get_meta(spec.name, "netpol-backend") or runtime.iptables.backend()
    found = []
    for node in store.list(spec.name, "Node"):
        name = node["metadata"]["name"]
        expected = ((proxier.rendered_now(store, spec, node).payload if proxy_backend else "") +
                    (netpol_sync.render_node(store, spec, name).payload if policies else ""))
        try:
            live = runtime.iptables.save(names.node_netns(spec.name, name), backend, None)
        except KernelError:  # the node's namespace is gone: its rules with it
            found.append(name)
            continue
        try:
            same = owned_rule_lines(live, ("nat", "filter")) == owned_rule_lines(expected, ("nat", "filter"))
        except RuleError:  # a rule this parser cannot read was added: a full sync decides
            same = False
        chains = saved_chain_lines(live)
        if not same or (proxy_backend and any(KUBE_PROXY_CANARY not in chains.get(t, {}) for t in CANARY_TABLES)):
            found.append(name)
    return found


def reconcile(store: Store, runtime: Runtime, spec: ClusterSpec) -> list[Repair]:
    """One pass over the cluster; what was found wrong, repaired or not."""
    repairs, keys = _ensure_agent(store, runtime, spec)
    restarted = _restart_stranded(store, runtime, spec)
    if restarted:  # created again, they are served again
        keys = {served["key"] for served in runtime.agent(spec.name, agent_socket(store, spec.name)).list()}
    repairs += restarted
    running = _running_pods(store, spec.name)
    kernel_repairs, lost, remade = _reconcile_kernel(store, runtime, spec, running)
    repairs += kernel_repairs
    repairs += _serve_missing(store, runtime, spec, running, keys, lost, remade)
    repairs += _reconcile_bird(store, runtime, spec)
    repairs += _reconcile_proxy(store, runtime, spec)
    repairs += _reconcile_policies(store, runtime, spec)
    dns.sync_zone(store, runtime, spec)  # the cluster DNS's records: an agent started again has none
    return repairs
