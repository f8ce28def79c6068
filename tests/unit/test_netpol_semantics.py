"""The API's meaning of NetworkPolicy, checked as the upstream conformance cases' truth tables
(kubernetes test/e2e/network/netpol/network_policy.go and cyclonus' generated cases): the model
x,y,z × a,b,c on ports 80 and 81, TCP and UDP; loopback ignored as the e2e suite does."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from overlaynet.policy.semantics import allowed, isolating, truth_table
from tests.unit.netpol_model import Reachability, model_pods, model_view

DENY_INGRESS_X = """
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec: {podSelector: {}}
"""


def policy(name: str, namespace: str, spec: str) -> str:
    return f"kind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"


def test_no_policy_allows_everything():
    assert Reachability(True).mismatches(model_view()) == []


def test_default_deny_ingress_isolates_only_its_namespace():
    reach = Reachability(True)
    for pod in ("x/a", "x/b", "x/c"):
        reach.all_ingress(pod, False)
    assert reach.mismatches(model_view(DENY_INGRESS_X)) == []
    assert reach.mismatches(model_view(DENY_INGRESS_X), 81, "UDP") == []


def test_default_deny_egress():
    view = model_view(policy("deny-egress", "x", "  podSelector: {}\n  policyTypes: [Egress]"))
    reach = Reachability(True)
    for pod in ("x/a", "x/b", "x/c"):
        reach.all_egress(pod, False)
    assert reach.mismatches(view) == []


def test_policy_types_default_as_the_api_server_does():
    """Ingress always; Egress only when egress rules are present (`egress: []` has none)."""
    assert model_view(policy("p", "x", "  podSelector: {}\n  egress: []")).policies[0].policy_types == ("Ingress",)
    assert model_view(policy("p", "x", "  podSelector: {}\n  egress: [{}]")).policies[0].policy_types == (
        "Ingress", "Egress")


def test_allow_all_ingress_overrides_deny_by_union():
    allow_all = policy("allow-all", "x", "  podSelector: {}\n  ingress: [{}]")
    assert Reachability(True).mismatches(model_view(DENY_INGRESS_X, allow_all)) == []


def test_allow_ingress_to_a_target():
    allow_a = policy("allow-all-to-a", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                     "  ingress: [{from: [{podSelector: {}, namespaceSelector: {}}]}]")
    reach = Reachability(True).all_ingress("x/b", False).all_ingress("x/c", False)
    assert reach.mismatches(model_view(DENY_INGRESS_X, allow_a)) == []


def test_pod_selector_within_namespace():
    view = model_view(policy("x-a-allows-x-b", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                             "  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]"))
    assert Reachability(True).all_ingress("x/a", False).expect("x/b", "x/a", True).mismatches(view) == []


def test_pod_selector_match_expressions():
    view = model_view(policy("x-a-allows-x-b", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                             "  ingress: [{from: [{podSelector: {matchExpressions: "
                             "[{key: pod, operator: In, values: [b]}]}}]}]"))
    assert Reachability(True).all_ingress("x/a", False).expect("x/b", "x/a", True).mismatches(view) == []


def test_namespace_selector_from_another_namespace():
    view = model_view(policy("allow-y", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                             "  ingress: [{from: [{namespaceSelector: {matchLabels: "
                             "{kubernetes.io/metadata.name: y}}}]}]"))
    reach = Reachability(True).expect_peer("x", "x/a", False).expect_peer("z", "x/a", False)
    assert reach.mismatches(view) == []


def test_pod_selector_or_namespace_selector_two_peers():
    view = model_view(policy("p", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                             "  ingress: [{from: [{namespaceSelector: {matchExpressions: "
                             "[{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}},"
                             " {podSelector: {matchLabels: {pod: b}}}]}]"))
    assert Reachability(True).expect("x/c", "x/a", False).mismatches(view) == []


def test_pod_selector_and_namespace_selector_one_peer():
    view = model_view(policy("p", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                             "  ingress: [{from: [{namespaceSelector: {matchExpressions: "
                             "[{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]},"
                             " podSelector: {matchLabels: {pod: b}}}]}]"))
    reach = Reachability(True).all_ingress("x/a", False).expect("y/b", "x/a", True).expect("z/b", "x/a", True)
    assert reach.mismatches(view) == []


def test_ports_by_number():
    view = model_view(policy("allow-81", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                             "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}],"
                             " ports: [{port: 81, protocol: TCP}]}]"))
    reach81 = Reachability(True).expect_peer("x", "x/a", False).expect_peer("z", "x/a", False)
    assert reach81.mismatches(view, 81) == []
    assert Reachability(True).all_ingress("x/a", False).mismatches(view, 80) == []
    assert Reachability(True).all_ingress("x/a", False).mismatches(view, 81, "UDP") == []


def test_ports_by_name_resolve_against_the_destination():
    view = model_view(policy("allow-named", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                             "  ingress: [{ports: [{port: serve-80-udp, protocol: UDP}]}]"))
    assert Reachability(True).mismatches(view, 80, "UDP") == []
    assert Reachability(True).all_ingress("x/a", False).mismatches(view, 80, "TCP") == []
    assert Reachability(True).all_ingress("x/a", False).mismatches(view, 81, "UDP") == []


def test_named_port_egress_resolves_at_each_destination():
    pods = model_pods()
    changed = tuple(dataclasses.replace(p, ports=()) if p.key == "y/b" else p for p in pods)
    view = model_view(policy("egress-named", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                             "  policyTypes: [Egress]\n  egress: [{ports: [{port: serve-80-tcp}]}]"), pods=changed)
    assert Reachability(True).expect("x/a", "y/b", False).mismatches(view, 80) == []


def test_end_port_range():
    view = model_view(policy("range", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                             "  ingress: [{ports: [{port: 81, endPort: 90}]}]"))
    assert Reachability(True).mismatches(view, 81) == []
    assert Reachability(True).all_ingress("x/a", False).mismatches(view, 80) == []
    a = next(p for p in view.pods if p.key == "x/a")
    b = next(p for p in view.pods if p.key == "x/b")
    assert allowed(view, b, a, 90) and not allowed(view, b, a, 91)


def test_ip_block_with_except():
    """"should enforce except clause while egress access to server in CIDR block": x/a may reach
    the pods' range except y/b's address."""
    view = model_view(policy("egress-cidr", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                             "  policyTypes: [Egress]\n"
                             "  egress: [{to: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.1.11/32]}}]}]"))
    assert Reachability(True).expect("x/a", "y/b", False).mismatches(view) == []
    a = next(p for p in view.pods if p.key == "x/a")
    assert not allowed(view, a, ipaddress.IPv4Address("172.20.0.11"), 80)


def test_ip_block_ingress_from_outside():
    view = model_view(policy("from-node-net", "x", "  podSelector: {}\n"
                             "  ingress: [{from: [{ipBlock: {cidr: 172.20.0.0/24}}]}]"))
    a = next(p for p in view.pods if p.key == "x/a")
    assert allowed(view, ipaddress.IPv4Address("172.20.0.12"), a, 80)
    assert not allowed(view, ipaddress.IPv4Address("192.168.1.1"), a, 80)
    assert Reachability(True).all_ingress("x/a", False).all_ingress("x/b", False).all_ingress(
        "x/c", False).mismatches(view) == []


def test_egress_to_a_namespace_and_ingress_both_needed():
    egress = policy("egress-to-y", "x", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n"
                    "  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]")
    deny_y = policy("deny", "y", "  podSelector: {matchLabels: {pod: c}}")
    reach = Reachability(True).all_egress("x/a", False)
    for pod in ("y/a", "y/b"):
        reach.expect("x/a", pod, True)
    reach.all_ingress("y/c", False)
    assert reach.mismatches(model_view(egress, deny_y)) == []


def test_policy_deleted_restores_traffic_and_label_change_is_followed():
    view = model_view(DENY_INGRESS_X)
    assert truth_table(view, 80)[("y/a", "x/a")] is False
    assert truth_table(dataclasses.replace(view, policies=()), 80)[("y/a", "x/a")] is True
    allow_frontend = policy("allow-frontend", "x", "  podSelector: {}\n"
                            "  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: fe}}}]}]")
    view = model_view(DENY_INGRESS_X, allow_frontend)
    assert truth_table(view, 80)[("y/a", "x/a")] is False
    relabelled = tuple(dataclasses.replace(p, labels=(("pod", "a"), ("role", "fe"))) if p.key == "y/a" else p
                       for p in view.pods)
    assert truth_table(dataclasses.replace(view, pods=relabelled), 80)[("y/a", "x/a")] is True


def test_namespace_label_change_is_followed():
    text = policy("allow-team", "x", "  podSelector: {}\n"
                  "  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]")
    assert truth_table(model_view(text), 80)[("y/a", "x/a")] is False
    assert truth_table(model_view(text, namespaces={"y": {"team": "blue"}}), 80)[("y/a", "x/a")] is True


def test_loopback_is_always_allowed_and_isolating_lists_policies():
    view = model_view(DENY_INGRESS_X)
    a = next(p for p in view.pods if p.key == "x/a")
    assert allowed(view, a, a, 80)
    assert [p.name for p in isolating(view, a, "Ingress")] == ["deny-ingress"]
    assert isolating(view, a, "Egress") == []


@pytest.mark.parametrize("operator,values,expected", [
    ("In", ["a", "b"], {"x/a", "x/b"}), ("NotIn", ["a"], {"x/b", "x/c"}),
    ("Exists", None, {"x/a", "x/b", "x/c"}), ("DoesNotExist", None, set()),
])
def test_selector_operators(operator, values, expected):
    values_text = f", values: {values}" if values else ""
    view = model_view(policy("p", "x", f"  podSelector: {{matchExpressions: [{{key: pod, operator: {operator}"
                             f"{values_text}}}]}}"))
    assert {p.key for p in view.pods if isolating(view, p, "Ingress")} == expected
