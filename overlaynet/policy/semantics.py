"""What NetworkPolicies mean for a connection, as the Kubernetes API defines it (pure).

This module owns the decision ``allowed(view, source, destination, port, protocol)`` and the
pieces the renderer shares with it (which policies isolate a pod, which pods a peer names,
what a named port resolves to), so the truth table ``verify`` expects and the rules the
kernel runs come from one reading of the API (kubernetes.io/docs/concepts/services-networking/
network-policies, and the upstream conformance suite test/e2e/network/netpol):

- a pod is isolated for ingress (egress) only when some policy of its namespace selects it
  and lists ``Ingress`` (``Egress``) in ``policyTypes``; a pod no policy isolates allows all;
- policies add up: a connection an isolated pod accepts is one that *some* rule of *some*
  policy selecting it allows (a policy with no rules for a direction allows nothing: the
  default deny);
- a connection between two pods needs egress allowed at the source and ingress allowed at
  the destination; replies of an allowed connection are always allowed (conntrack), and so
  is a pod talking to itself (loopback never leaves the pod: the e2e suite's AllowLoopback);
- a peer ``podSelector`` alone names pods of the policy's namespace, ``namespaceSelector``
  alone every pod of the selected namespaces, both in one peer the selected pods of the
  selected namespaces; ``ipBlock`` matches addresses, pods' included (as Calico does), minus
  its ``except`` ranges;
- a named port resolves against the destination pod's ``containerPorts`` (name and protocol);
  a destination that is not a pod has no named ports. ``endPort`` makes a range.

It never reads the store or the kernel: ``PolicyView`` is built by ``control/policies.py``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from overlaynet.api.manifests import ContainerPort
from overlaynet.api.netpol import EGRESS, INGRESS, NetworkPolicy, Peer, PolicyPort, PolicyRule, namespace_labels


@dataclass(frozen=True)
class PodEndpoint:
    """A pod as policy sees it: where it lives, its labels and its declared ports."""

    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    ip: ipaddress.IPv4Address | None = None
    node: str | None = None
    ports: tuple[ContainerPort, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class PolicyView:
    """Everything a policy decision depends on. ``namespaces`` maps a name to its labels
    (the automatic ``kubernetes.io/metadata.name`` is added for any namespace, written or not)."""

    pods: tuple[PodEndpoint, ...] = ()
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    policies: tuple[NetworkPolicy, ...] = ()

    def namespace_labels(self, name: str) -> dict[str, str]:
        return namespace_labels(name, self.namespaces.get(name))

    def pod_by_ip(self, ip: ipaddress.IPv4Address) -> PodEndpoint | None:
        return next((p for p in self.pods if p.ip == ip), None)


Endpoint = PodEndpoint | ipaddress.IPv4Address  # a pod, or an address outside the pods (a node, a client)


def selects(policy: NetworkPolicy, pod: PodEndpoint) -> bool:
    return policy.namespace == pod.namespace and policy.pod_selector.matches(pod.label_dict())


def isolating(view: PolicyView, pod: PodEndpoint, direction: str) -> list[NetworkPolicy]:
    """The policies that select ``pod`` for ``direction`` (Ingress or Egress), in name order."""
    found = [p for p in view.policies if direction in p.policy_types and selects(p, pod)]
    return sorted(found, key=lambda p: p.key)


def peer_selects_pod(view: PolicyView, policy: NetworkPolicy, peer: Peer, pod: PodEndpoint) -> bool:
    """Whether a pod-selecting ``peer`` of ``policy`` names ``pod`` (False for ipBlock peers)."""
    if peer.ip_block is not None:
        return False
    if peer.namespace_selector is None:
        in_namespace = pod.namespace == policy.namespace
    else:
        in_namespace = peer.namespace_selector.matches(view.namespace_labels(pod.namespace))
    return in_namespace and (peer.pod_selector is None or peer.pod_selector.matches(pod.label_dict()))


def peer_pods(view: PolicyView, policy: NetworkPolicy, peer: Peer) -> list[PodEndpoint]:
    """The pods (with an address) a pod-selecting peer names, in namespace/name order."""
    return sorted((p for p in view.pods if p.ip is not None and peer_selects_pod(view, policy, peer, p)),
                  key=lambda p: p.key)


def _peer_matches(view: PolicyView, policy: NetworkPolicy, peer: Peer, other: Endpoint) -> bool:
    if peer.ip_block is not None:
        ip = other.ip if isinstance(other, PodEndpoint) else other
        return ip is not None and peer.ip_block.holds(ip)
    return isinstance(other, PodEndpoint) and peer_selects_pod(view, policy, peer, other)


def resolve_port(spec: PolicyPort, destination: PodEndpoint | None) -> tuple[int, int] | None:
    """The port range ``spec`` stands for at ``destination``: (first, last), None if it cannot
    resolve (a named port the destination does not declare for the protocol); (1, 65535) for
    "every port"."""
    if spec.port is None:
        return 1, 65535
    if isinstance(spec.port, int):
        return spec.port, spec.end_port or spec.port
    if destination is None:
        return None
    number = next((p.port for p in destination.ports if p.name == spec.port and p.protocol == spec.protocol), None)
    return None if number is None else (number, number)


def _port_matches(rule: PolicyRule, destination: PodEndpoint | None, port: int, protocol: str) -> bool:
    if not rule.ports:
        return True
    for spec in rule.ports:
        span = resolve_port(spec, destination) if spec.protocol == protocol else None
        if span and span[0] <= port <= span[1]:
            return True
    return False


def _direction_allows(view: PolicyView, pod: PodEndpoint, direction: str, other: Endpoint,
                      destination: PodEndpoint | None, port: int, protocol: str) -> bool:
    policies = isolating(view, pod, direction)
    if not policies:
        return True
    for policy in policies:
        rules = policy.ingress if direction == INGRESS else policy.egress
        for rule in rules:
            if not _port_matches(rule, destination, port, protocol):
                continue
            if not rule.peers or any(_peer_matches(view, policy, peer, other) for peer in rule.peers):
                return True
    return False


def ingress_allowed(view: PolicyView, destination: PodEndpoint, source: Endpoint, port: int, protocol: str) -> bool:
    return _direction_allows(view, destination, INGRESS, source, destination, port, protocol)


def egress_allowed(view: PolicyView, source: PodEndpoint, destination: Endpoint, port: int, protocol: str) -> bool:
    target = destination if isinstance(destination, PodEndpoint) else None
    return _direction_allows(view, source, EGRESS, destination, target, port, protocol)


def allowed(view: PolicyView, source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """Whether a new connection from ``source`` to ``destination:port/protocol`` is allowed."""
    if isinstance(source, PodEndpoint) and isinstance(destination, PodEndpoint) and source.key == destination.key:
        return True  # loopback
    if isinstance(source, PodEndpoint) and not egress_allowed(view, source, destination, port, protocol):
        return False
    return not isinstance(destination, PodEndpoint) or ingress_allowed(view, destination, source, port, protocol)


def truth_table(view: PolicyView, port: int, protocol: str = "TCP",
                pods: list[PodEndpoint] | None = None) -> dict[tuple[str, str], bool]:
    """``(source key, destination key) -> allowed`` for every pair of ``pods`` (default: all)."""
    chosen = list(view.pods) if pods is None else pods
    return {(a.key, b.key): allowed(view, a, b, port, protocol) for a in chosen for b in chosen}


def policies_selecting(view: PolicyView, pod: PodEndpoint) -> dict[str, list[NetworkPolicy]]:
    """The policies isolating ``pod``, per direction (for ``describe pod``)."""
    return {INGRESS: isolating(view, pod, INGRESS), EGRESS: isolating(view, pod, EGRESS)}
