"""``overlaynet verify``: the Kubernetes network model, proven with real packets.

The three rules (https://kubernetes.io/docs/concepts/services-networking/#the-kubernetes-network-model):
  (a) pods can reach all other pods without NAT: the receiver reports the sender's own pod IP;
  (b) nodes can reach all pods and pods all nodes without NAT;
  (c) the IP a pod sees on its own ``eth0`` is the IP others see and the one ``get pods`` shows.

Planning the probes and judging their results are pure (``plan_probes``, ``judge``); the
probes themselves run in the cluster's agent, from inside each source namespace, over TCP
(HTTP ``/clientip``), UDP (``clientip``) and ICMP echo.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from overlaynet import names
from overlaynet.manifests import DEFAULT_TEST_PORT

PROTOCOLS = ("tcp", "udp", "icmp")
OK, NAT, FAIL = "ok", "nat", "fail"


@dataclass(frozen=True)
class Endpoint:
    """A probe source or target: a pod or a node, with the IP the cluster says it has."""

    kind: str  # "pod" | "node"
    name: str  # "default/web-1" or "node-1"
    netns: str
    ip: str
    node: str


@dataclass
class Check:
    rule: str  # "pod-pod" | "node-pod" | "pod-node" | "self"
    source: Endpoint | None
    target: Endpoint
    protocol: str
    status: str
    expected: str
    observed: str | None
    error: str | None = None

    def describe(self) -> str:
        where = f"{self.source.kind} {self.source.name} ({self.source.ip}) -> " if self.source else ""
        head = f"{where}{self.target.kind} {self.target.name} ({self.target.ip}) {self.protocol}"
        if self.status == NAT:
            return f"{head}: receiver saw {self.observed}, expected {self.expected} (NAT)"
        if self.rule == "self":
            return f"{head}: expected {self.expected}, observed {self.observed}"
        return f"{head}: {self.error or 'failed'}"

    def as_dict(self) -> dict:
        return {"rule": self.rule, "from": self.source.name if self.source else None,
                "fromKind": self.source.kind if self.source else None, "to": self.target.name,
                "toKind": self.target.kind, "protocol": self.protocol, "status": self.status,
                "expectedSource": self.expected, "observedSource": self.observed, "error": self.error}


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status != OK]

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter] = defaultdict(Counter)
        for check in self.checks:
            table[check.rule][check.status] += 1
        return {rule: {s: counts[s] for s in (OK, NAT, FAIL)} for rule, counts in table.items()}


def endpoints(cluster: str, nodes: list[dict], pods: list[dict]) -> tuple[list[Endpoint], list[Endpoint]]:
    node_eps = []
    for record in nodes:
        name = record["metadata"]["name"]
        ip = next(a["address"] for a in record["status"]["addresses"] if a["type"] == "InternalIP")
        node_eps.append(Endpoint("node", name, names.node_netns(cluster, name), ip, name))
    pod_eps = []
    for record in pods:
        if record["status"].get("phase") != "Running":
            continue
        meta = record["metadata"]
        pod_eps.append(Endpoint("pod", f"{meta['namespace']}/{meta['name']}",
                                names.pod_netns(cluster, meta["namespace"], meta["name"]),
                                record["status"]["podIP"], record["spec"]["nodeName"]))
    return node_eps, pod_eps


def plan_probes(node_eps: list[Endpoint], pod_eps: list[Endpoint]) -> tuple[list[dict], dict]:
    """Every ordered pod pair, node->pod and pod->node, over each protocol.

    Returns the probe requests for the agent and an index from probe id to (rule, source, target).
    """
    probes, index = [], {}

    def add(rule: str, source: Endpoint, target: Endpoint) -> None:
        for protocol in PROTOCOLS:
            probe_id = len(probes)
            probes.append({"id": probe_id, "netns": source.netns, "dst": target.ip,
                           "port": DEFAULT_TEST_PORT, "protocol": protocol})
            index[probe_id] = (rule, source, target, protocol)

    for source in pod_eps:
        for target in pod_eps:
            if source is not target:
                add("pod-pod", source, target)
    for node in node_eps:
        for pod in pod_eps:
            add("node-pod", node, pod)
            add("pod-node", pod, node)
    return probes, index


def judge(rule: str, source: Endpoint, target: Endpoint, protocol: str, result: dict) -> Check:
    """No NAT means: the sender used its own address and the receiver saw exactly that address."""
    local, seen = result.get("local"), result.get("seen")
    # A pod must send from its pod IP; a node may use any of its own addresses (flannel.1's
    # .0/32 towards remote pods, cni0's .1 towards local ones), which its socket reports.
    expected = source.ip if source.kind == "pod" else (local or source.ip)
    if not result.get("ok"):
        return Check(rule, source, target, protocol, FAIL, expected, seen, result.get("error") or "no answer")
    if protocol == "icmp":
        if seen != target.ip:
            return Check(rule, source, target, protocol, NAT, target.ip, seen, "echo reply from another address")
        if source.kind == "pod" and local != source.ip:
            return Check(rule, source, target, protocol, NAT, expected, local)
        return Check(rule, source, target, protocol, OK, expected, local)
    if seen != expected or (source.kind == "pod" and local != source.ip):
        return Check(rule, source, target, protocol, NAT, expected, seen)
    return Check(rule, source, target, protocol, OK, expected, seen)


def judge_self(pod: Endpoint, own_addresses: list[str], seen_by_others: set[str]) -> list[Check]:
    """Rule (c): eth0's address == get pods' podIP == what every receiver saw."""
    checks = []
    status = OK if own_addresses == [pod.ip] else FAIL
    checks.append(Check("self", None, pod, "eth0", status, pod.ip, ",".join(own_addresses) or "(none)"))
    others = sorted(seen_by_others - {pod.ip})
    checks.append(Check("self", None, pod, "seen-by-peers", OK if not others else NAT, pod.ip,
                        ",".join(others) if others else pod.ip))
    return checks


def build_report(index: dict, results: list[dict], own_addresses: dict[str, list[str]]) -> Report:
    report = Report()
    seen_by_others: dict[str, set[str]] = defaultdict(set)
    pods: dict[str, Endpoint] = {}
    for result in results:
        rule, source, target, protocol = index[result["id"]]
        check = judge(rule, source, target, protocol, result)
        report.checks.append(check)
        if source.kind == "pod":
            pods[source.name] = source
            if protocol != "icmp" and result.get("ok") and result.get("seen"):
                seen_by_others[source.name].add(result["seen"])
    for name, pod in sorted(pods.items()):
        report.checks.extend(judge_self(pod, own_addresses.get(name, []), seen_by_others[name]))
    return report


def matrix(report: Report, pod_eps: list[Endpoint], limit: int = 16) -> tuple[list[str], list[list[str]]]:
    """A readable grid: pod x pod when there are few pods, else node x node with pass counts."""
    cells: dict[tuple[str, str], Counter] = defaultdict(Counter)
    by_pods = len(pod_eps) <= limit
    for check in report.checks:
        if check.rule != "pod-pod":
            continue
        key = (check.source.name, check.target.name) if by_pods else (check.source.node, check.target.node)
        cells[key][check.status] += 1
    axis = [p.name for p in pod_eps] if by_pods else sorted({p.node for p in pod_eps})
    short = [a.split("/", 1)[-1] for a in axis]
    rows = []
    for source, label in zip(axis, short):
        row = [label]
        for target in axis:
            counts = cells.get((source, target))
            if counts is None:
                row.append("-" if source == target or not by_pods else "")
            elif by_pods:
                row.append("✓" if set(counts) == {OK} else ("NAT" if counts[NAT] and not counts[FAIL] else "✗"))
            else:
                total = sum(counts.values())
                row.append(f"{counts[OK]}/{total}" + ("" if counts[OK] == total else " ✗"))
        rows.append(row)
    header = ["FROM \\ TO"] + short
    return header, rows
