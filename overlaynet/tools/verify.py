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

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from overlaynet import names
from overlaynet.api.manifests import DEFAULT_TEST_PORT
from overlaynet.datapath.topology import internal_ip

PROTOCOLS = ("tcp", "udp", "icmp")
OK, NAT, FAIL = "ok", "nat", "fail"
# NetworkPolicy (tools/verify_policy.py): a probe the policies deny that did not connect, as
# expected; a Service probe whose endpoints' policies it does not judge
DENIED, POLICY = "denied", "policy"
PASSING = (OK, DENIED, POLICY)


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
        return [c for c in self.checks if c.status not in PASSING]

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter] = defaultdict(Counter)
        for check in self.checks:
            table[check.rule][check.status] += 1
        statuses = (OK, NAT, FAIL) + tuple(s for s in (DENIED, POLICY) if any(s in c for c in table.values()))
        return {rule: {s: counts[s] for s in statuses} for rule, counts in table.items()}


def endpoints(cluster: str, nodes: list[dict], pods: list[dict]) -> tuple[list[Endpoint], list[Endpoint]]:
    node_eps = []
    for record in nodes:
        name = record["metadata"]["name"]
        node_eps.append(Endpoint("node", name, names.node_netns(cluster, name), internal_ip(record), name))
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
                row.append(_cell(counts))
            else:
                total = sum(counts.values())
                passed = counts[OK] + counts[DENIED]
                row.append(f"{passed}/{total}" + ("" if passed == total else " ✗"))
        rows.append(row)
    header = ["FROM \\ TO"] + short
    return header, rows


def _cell(counts: Counter) -> str:
    """✓ all reached; x all denied by policy, as expected; ~ some of each; NAT; ✗ a failure."""
    if counts[FAIL]:
        return "✗"
    if counts[NAT]:
        return "NAT"
    if counts[DENIED]:
        return "x" if not counts[OK] else "~"
    return "✓"


# -- Services ---------------------------------------------------------------------------------

SERVICE_RULES = {
    "svc-endpoints": "(d) ClusterIP reaches every ready endpoint",
    "svc-no-snat": "(d) pod -> ClusterIP keeps the pod's IP",
    "svc-hairpin": "(d) a pod reaches its own Service",
    "svc-nodeport": "(d) NodePort from outside the cluster",
    "svc-refused": "(d) no endpoints: refused at once",
}


@dataclass(frozen=True)
class ServicePortTarget:
    """One port of one Service, with the endpoints kube-proxy should balance it over."""

    service: str  # namespace/name:port-name
    protocol: str  # tcp | udp
    cluster_ip: str
    port: int
    node_port: int | None
    affinity: bool
    local_only: bool  # externalTrafficPolicy: Local
    endpoints: tuple[tuple[str, str, str], ...]  # (pod name, pod IP, node) of ready endpoints

    def endpoint(self) -> Endpoint:
        return Endpoint("service", self.service, "", f"{self.cluster_ip}:{self.port}", "")


def service_targets(services: list, slices: list, pods: list[dict]) -> list[ServicePortTarget]:
    """Every port of every Service with a ClusterIP, and its ready endpoints (by pod)."""
    by_ip = {p["status"]["podIP"]: p for p in pods if p["status"].get("podIP")}
    targets = []
    for service in services:
        if service.headless or not service.cluster_ip:
            continue
        for port in service.ports:
            ready = set()
            for endpoint_slice in slices:
                if endpoint_slice.service_name != service.name or endpoint_slice.namespace != service.namespace:
                    continue
                if not any((p.name or "") == (port.name or "") for p in endpoint_slice.ports):
                    continue
                for endpoint in endpoint_slice.endpoints:
                    if endpoint.conditions.is_ready:
                        for address in endpoint.addresses:
                            pod = by_ip.get(address)
                            if pod is not None:
                                ready.add((pod["metadata"]["name"], address, pod["spec"]["nodeName"]))
            targets.append(ServicePortTarget(
                service=service.port_name_string(port), protocol=port.protocol.lower(),
                cluster_ip=service.cluster_ip, port=port.port, node_port=port.node_port,
                affinity=service.session_affinity == "ClientIP",
                local_only=service.external_traffic_policy == "Local", endpoints=tuple(sorted(ready))))
    return targets


def requests_to_hit_all(endpoints: int, miss_probability: float = 1e-6) -> int:
    """How many random requests reach each of ``endpoints`` with all but ``miss_probability``
    certainty (kube-proxy picks uniformly): the union bound k(1-1/k)^n <= p, solved for n."""
    if endpoints <= 1:
        return 1
    return min(500, math.ceil(math.log(endpoints / miss_probability) / -math.log(1 - 1 / endpoints)))


def plan_service_probes(targets: list[ServicePortTarget], node_eps: list[Endpoint], pod_eps: list[Endpoint],
                        external: Endpoint, first_id: int) -> tuple[list[dict], dict]:
    """From one pod on every node: repeated ``hostname`` requests (which endpoints answer) and a
    ``clientip`` one (which source they saw); a hairpin from an endpoint; NodePorts from outside."""
    probes, index = [], {}

    def add(rule, source: Endpoint, target: ServicePortTarget, dst: str, port: int, request: str,
            node: Endpoint | None = None) -> None:
        probe_id = first_id + len(probes)
        probes.append({"id": probe_id, "netns": source.netns, "dst": dst, "port": port,
                       "protocol": target.protocol, "request": request})
        index[probe_id] = (rule, source, target, node)

    for target in targets:
        endpoint_ips = {ip for _, ip, _ in target.endpoints}
        clients: dict[str, Endpoint] = {}
        for pod in pod_eps:  # one client per node, not an endpoint of this Service where possible
            if pod.node not in clients or (clients[pod.node].ip in endpoint_ips and pod.ip not in endpoint_ips):
                clients[pod.node] = pod
        for client in clients.values():
            repeats = 8 if target.affinity else requests_to_hit_all(len(target.endpoints))
            for _ in range(repeats if target.endpoints else 1):
                add("svc-endpoints" if target.endpoints else "svc-refused", client, target,
                    target.cluster_ip, target.port, "hostname")
            if target.endpoints and client.ip not in endpoint_ips:
                # (an endpoint reaching its own Service may land on itself: that hairpin is
                # masqueraded by design, and checked below on its own)
                add("svc-no-snat", client, target, target.cluster_ip, target.port, "clientip")
        hairpin = next((p for p in pod_eps if target.endpoints and p.ip == target.endpoints[0][1]), None)
        if hairpin is not None:
            add("svc-hairpin", hairpin, target, target.cluster_ip, target.port, "clientip")
        if target.node_port:
            for node in node_eps:
                add("svc-nodeport", external, target, node.ip, target.node_port, "clientip", node)
    return probes, index


def judge_services(index: dict, results: list[dict]) -> list[Check]:
    checks: list[Check] = []
    answers: dict[tuple, list[dict]] = defaultdict(list)
    for result in results:
        rule, source, target, node = index[result["id"]]
        if rule in ("svc-endpoints", "svc-refused"):
            answers[(rule, source, target)].append(result)
            continue
        if rule == "svc-nodeport":
            checks.append(_judge_node_port(source, target, node, result))
            continue
        expected = source.ip if rule == "svc-no-snat" else "any"
        seen = result.get("seen")
        if not result.get("ok"):
            checks.append(Check(rule, source, target.endpoint(), target.protocol, FAIL, expected, seen,
                                result.get("error")))
        elif rule == "svc-no-snat" and seen != source.ip:
            checks.append(Check(rule, source, target.endpoint(), target.protocol, NAT, expected, seen))
        else:
            checks.append(Check(rule, source, target.endpoint(), target.protocol, OK, expected, seen))
    for (rule, source, target), group in answers.items():
        checks.append(_judge_spread(rule, source, target, group))
    return checks


def _judge_spread(rule: str, source: Endpoint, target: ServicePortTarget, group: list[dict]) -> Check:
    if rule == "svc-refused":
        result = group[0]
        refused = not result.get("ok") and (target.protocol == "udp" or result.get("error") == "connection refused")
        return Check(rule, source, target.endpoint(), target.protocol, OK if refused else FAIL,
                     "connection refused", result.get("error") or result.get("answer"),
                     None if refused else "expected an immediate refusal")
    expected = sorted(name for name, _, _ in target.endpoints)
    answered = sorted({r["answer"] for r in group if r.get("ok") and r.get("answer")})
    failed = [r.get("error") for r in group if not r.get("ok")]
    wanted = expected[:1] if target.affinity else expected
    if target.affinity:
        good = not failed and len(answered) == 1 and answered[0] in expected
        why = "ClientIP affinity: every request should reach the same endpoint"
    else:
        good = not failed and answered == wanted
        why = f"reached {', '.join(answered) or 'nothing'}"
    return Check(rule, source, target.endpoint(), target.protocol, OK if good else FAIL,
                 "one endpoint" if target.affinity else ",".join(wanted), ",".join(answered),
                 None if good else (failed[0] if failed else why))


def _judge_node_port(external: Endpoint, target: ServicePortTarget, node_ep: Endpoint, result: dict) -> Check:
    node = Endpoint("node", f"{node_ep.name} {node_ep.ip}:{target.node_port}", node_ep.netns, node_ep.ip, node_ep.name)
    seen = result.get("seen")
    if target.local_only:
        has_local = any(node_name == node_ep.name for _, _, node_name in target.endpoints)
        if not has_local:  # Local policy: a node without a local endpoint drops the traffic
            status = OK if not result.get("ok") else FAIL
            return Check("svc-nodeport", external, node, target.protocol, status, "no answer (no local endpoint)",
                         seen, None if status == OK else "answered without a local endpoint")
        good = result.get("ok") and seen == external.ip
        return Check("svc-nodeport", external, node, target.protocol, OK if good else (NAT if result.get("ok") else FAIL),
                     external.ip, seen, None if result.get("ok") else result.get("error"))
    if not result.get("ok"):
        return Check("svc-nodeport", external, node, target.protocol, FAIL, "masqueraded", seen, result.get("error"))
    masqueraded = seen != external.ip
    return Check("svc-nodeport", external, node, target.protocol, OK if masqueraded else FAIL,
                 "a node address (masqueraded)", seen, None if masqueraded else "the client IP was not masqueraded")


# -- the cluster DNS ----------------------------------------------------------------------------

DNS_RULES = {
    "dns-names": "(e) every Service name resolves, from a pod on every node",
    "dns-nxdomain": "(e) a name that does not exist: NXDOMAIN",
}
DNS_SKIPPED = "(e) cluster DNS: skipped, the Cluster document says dns: false"


def plan_dns_probes(expected: dict[str, str], missing: str, pod_eps: list[Endpoint], dns_ip: str,
                    first_id: int) -> tuple[list[dict], dict]:
    """From one pod on every node (not a DNS pod where possible), an A query to the kube-dns
    ClusterIP for every Service name (``expected``: name -> the addresses, sorted and comma-joined)
    and for ``missing``, a name in the zone that does not exist."""
    clients: dict[str, Endpoint] = {}
    for pod in pod_eps:
        if pod.node not in clients or (clients[pod.node].name.startswith("kube-system/")
                                       and not pod.name.startswith("kube-system/")):
            clients[pod.node] = pod
    server = Endpoint("service", "kube-dns", "", dns_ip, "")
    probes, index = [], {}
    for client in clients.values():
        for name, addresses in [*sorted(expected.items()), (missing, "")]:
            probe_id = first_id + len(probes)
            probes.append({"id": probe_id, "netns": client.netns, "dst": dns_ip, "port": 53, "protocol": "dns",
                           "name": name})
            rule = "dns-nxdomain" if name == missing else "dns-names"
            index[probe_id] = (rule, client, Endpoint("name", name, "", dns_ip, ""), addresses, server)
    return probes, index


def judge_dns(index: dict, results: list[dict]) -> list[Check]:
    checks = []
    for result in results:
        rule, client, target, addresses, _server = index[result["id"]]
        expected = "NXDOMAIN" if rule == "dns-nxdomain" else addresses
        if not result.get("ok"):
            checks.append(Check(rule, client, target, "dns", FAIL, expected, None, result.get("error")))
            continue
        observed = result.get("rcode") if rule == "dns-nxdomain" or result.get("rcode") != "NOERROR" \
            else result.get("answer", "")
        good = observed == expected
        checks.append(Check(rule, client, target, "dns", OK if good else FAIL, expected, observed,
                            None if good else f"answered {observed or 'nothing'}, expected {expected}"))
    return checks
