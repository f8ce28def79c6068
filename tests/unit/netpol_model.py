"""The upstream conformance model (test/e2e/network/netpol, mattfenwick/cyclonus): pods a, b, c
in namespaces x, y, z, each labelled ``pod: <name>`` and serving 80 and 81 over TCP and UDP
(named ``serve-80-tcp`` ...), and a ``Reachability`` like the e2e suite's for truth tables."""

from __future__ import annotations

import ipaddress

import yaml

from overlaynet.api.manifests import ContainerPort
from overlaynet.api.netpol import parse_networkpolicy_document
from overlaynet.policy.semantics import PodEndpoint, PolicyView, truth_table

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")


def model_pods() -> tuple[PodEndpoint, ...]:
    pods = []
    for n_index, namespace in enumerate(NAMESPACES):
        for p_index, pod in enumerate(PODS):
            ports = tuple(ContainerPort(port, proto, f"serve-{port}-{proto.lower()}")
                          for port in (80, 81) for proto in ("TCP", "UDP"))
            pods.append(PodEndpoint(namespace, pod, (("pod", pod),),
                                    ipaddress.IPv4Address(f"10.244.{n_index}.{p_index + 10}"),
                                    f"node-{p_index + 1}", ports))
    return tuple(pods)


def model_view(*policy_yaml: str, namespaces: dict | None = None, pods=None) -> PolicyView:
    labels = {ns: {"ns": ns} for ns in NAMESPACES}
    labels.update(namespaces or {})
    policies = tuple(parse_networkpolicy_document(yaml.safe_load(text), "test") for text in policy_yaml)
    return PolicyView(pods or model_pods(), labels, policies)


class Reachability:
    """Expected connectivity of every pair, from a default, as the e2e suite's NewReachability."""

    def __init__(self, default: bool):
        keys = [p.key for p in model_pods()]
        self.expected = {(a, b): default for a in keys for b in keys}

    def expect(self, source: str, destination: str, value: bool) -> Reachability:
        self.expected[(source, destination)] = value
        return self

    def expect_peer(self, source_ns: str | None, destination: str, value: bool) -> Reachability:
        for a, b in self.expected:
            if b == destination and (source_ns is None or a.startswith(source_ns + "/")):
                self.expected[(a, b)] = value
        return self

    def peers(self, value: bool, from_ns: str | None = None, from_pod: str | None = None,
              to_ns: str | None = None, to_pod: str | None = None) -> Reachability:
        """The e2e suite's ExpectPeer: every pair whose ends match the (namespace, pod) given."""
        def fits(key: str, ns: str | None, pod: str | None) -> bool:
            namespace, name = key.split("/")
            return (ns is None or ns == namespace) and (pod is None or pod == name)

        for a, b in self.expected:
            if fits(a, from_ns, from_pod) and fits(b, to_ns, to_pod):
                self.expected[(a, b)] = value
        return self

    def all_ingress(self, destination: str, value: bool) -> Reachability:
        return self.expect_peer(None, destination, value)

    def all_egress(self, source: str, value: bool) -> Reachability:
        for a, b in self.expected:
            if a == source:
                self.expected[(a, b)] = value
        return self

    def mismatches(self, view: PolicyView, port: int = 80, protocol: str = "TCP") -> list[str]:
        """Pairs whose verdict differs, loopback ignored (as the e2e suite's ignoreLoopback)."""
        actual = truth_table(view, port, protocol)
        return [f"{a} -> {b}: expected {self.expected[(a, b)]}, got {actual[(a, b)]}"
                for a, b in self.expected if a != b and actual[(a, b)] != self.expected[(a, b)]]


def policy(name: str, namespace: str, spec: str) -> str:
    return f"kind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"


# Named sets of policies over the model: the conformance cases the semantics tests check by
# truth table, reused to check that the rendered rules decide every pair the same way.
SCENARIOS = {
    "deny-ingress": [policy("deny", "x", "  podSelector: {}")],
    "deny-egress": [policy("deny", "x", "  podSelector: {}\n  policyTypes: [Egress]")],
    "allow-all-over-deny": [policy("deny", "x", "  podSelector: {}"),
                            policy("allow", "x", "  podSelector: {}\n  ingress: [{}]")],
    "pod-and-namespace-selector": [policy("p", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                                          "  ingress: [{from: [{namespaceSelector: {matchExpressions: "
                                          "[{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]},"
                                          " podSelector: {matchLabels: {pod: b}}}]}]")],
    "pod-or-namespace-selector": [policy("p", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                                         "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}},"
                                         " {podSelector: {matchLabels: {pod: b}}}]}]")],
    "ports-named-and-range": [policy("ports", "x", "  podSelector: {}\n"
                                     "  ingress: [{ports: [{port: serve-81-udp, protocol: UDP}, {port: 80, endPort: 80}]}]")],
    "egress-named-port": [policy("egress-named", "y", "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Egress]\n"
                                 "  egress: [{to: [{namespaceSelector: {}}], ports: [{port: serve-80-tcp}]}]")],
    "ip-block-except": [policy("ip-block", "x", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress, Ingress]\n"
                               "  egress: [{to: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.1.11/32]}}]}]\n"
                               "  ingress: [{from: [{ipBlock: {cidr: 10.244.2.0/24}}], ports: [{port: 81}]}]")],
    "ingress-egress-together": [policy("together", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                                       "  policyTypes: [Egress, Ingress]\n"
                                       "  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n"
                                       "  egress: [{ports: [{port: 80}]}]")],
    "protocol-only": [policy("by-proto", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                             "  ingress: [{ports: [{protocol: UDP}]}]")],
    "match-expressions-not-in": [policy("not-x", "y", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: "
                                        "{matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}}]}]")],
    "egress-and-ingress-both-needed": [
        policy("egress", "x", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n"
               "  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"),
        policy("deny", "y", "  podSelector: {matchLabels: {pod: c}}")],
}
