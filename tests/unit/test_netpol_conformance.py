"""More of the upstream conformance cases (kubernetes test/e2e/network/netpol/network_policy.go),
each as its truth table over the x,y,z × a,b,c model, named after the upstream test."""

from __future__ import annotations

import dataclasses

from overlaynet.policy.semantics import truth_table
from tests.unit.netpol_model import Reachability, model_view, policy


def test_should_deny_egress_from_pods_based_on_pod_selector():
    view = model_view(policy("deny-egress-pod-a", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                             "  policyTypes: [Egress]"))
    assert Reachability(True).all_egress("x/a", False).mismatches(view) == []


def test_should_deny_egress_from_all_pods_in_a_namespace():
    view = model_view(policy("deny-egress-ns-x", "x", "  podSelector: {}\n  policyTypes: [Egress]"))
    assert Reachability(True).peers(False, from_ns="x").mismatches(view) == []


def test_should_work_with_ingress_egress_specified_together():
    view = model_view(policy("allow-client-a-via-pod-selector", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                             "  policyTypes: [Egress, Ingress]\n"
                             "  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n"
                             "  egress: [{ports: [{port: 80}]}]"))
    assert Reachability(True).all_ingress("x/a", False).expect("x/b", "x/a", True).mismatches(view, 80) == []
    port81 = Reachability(True).all_ingress("x/a", False).all_egress("x/a", False).expect("x/b", "x/a", True)
    assert port81.mismatches(view, 81) == []


def test_should_support_denying_of_egress_traffic_on_the_client_side():
    from_xa = "  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}," \
              " podSelector: {matchLabels: {pod: a}}}]}]"
    view = model_view(
        policy("allow-to-ns-y-pod-a", "x", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n"
               "  egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}},"
               " podSelector: {matchLabels: {pod: a}}}]}]"),
        policy("allow-from-xa-on-ya", "y", "  podSelector: {matchLabels: {pod: a}}\n" + from_xa),
        policy("allow-from-xa-on-yb", "y", "  podSelector: {matchLabels: {pod: b}}\n" + from_xa))
    reach = (Reachability(True).peers(False, from_ns="x", from_pod="a").peers(False, to_ns="y", to_pod="a")
             .peers(True, from_ns="x", from_pod="a", to_ns="y", to_pod="a").peers(False, to_ns="y", to_pod="b"))
    assert reach.mismatches(view) == []


def test_should_enforce_ingress_policy_allowing_any_port_traffic_on_a_specific_protocol():
    view = model_view(policy("allow-ingress-by-proto", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                             "  ingress: [{ports: [{protocol: TCP}]}]"))
    assert Reachability(True).mismatches(view, 80, "TCP") == []
    assert Reachability(True).all_ingress("x/a", False).mismatches(view, 80, "UDP") == []


def test_should_enforce_multiple_policies_with_allow_all_taking_precedence():
    only80 = policy("allow-ingress-port-80", "x", "  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]")
    assert Reachability(True).peers(False, to_ns="x").mismatches(model_view(only80), 81) == []
    allow_all = policy("allow-ingress", "x", "  podSelector: {}\n  ingress: [{}]")
    assert Reachability(True).mismatches(model_view(only80, allow_all), 81) == []
    egress80 = policy("allow-egress-port-80", "x", "  podSelector: {}\n  policyTypes: [Egress]\n"
                      "  egress: [{ports: [{port: 80}]}]")
    assert Reachability(True).peers(False, from_ns="x").mismatches(model_view(egress80), 81) == []
    egress_all = policy("allow-egress", "x", "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{}]")
    assert Reachability(True).mismatches(model_view(egress80, egress_all), 81) == []


def test_should_stop_enforcing_policies_after_they_are_deleted():
    deny_all = policy("deny-all", "x", "  podSelector: {}\n  policyTypes: [Ingress, Egress]")
    view = model_view(deny_all)
    assert Reachability(True).peers(False, from_ns="x").peers(False, to_ns="x").mismatches(view) == []
    assert Reachability(True).mismatches(dataclasses.replace(view, policies=())) == []


def test_should_deny_ingress_access_to_updated_pod():
    view = model_view(policy("deny-ingress-via-label-selector", "x",
                             "  podSelector: {matchLabels: {target: isolated}}"))
    assert Reachability(True).mismatches(view) == []
    pods = tuple(dataclasses.replace(p, labels=(*p.labels, ("target", "isolated"))) if p.key == "x/a" else p
                 for p in view.pods)
    assert Reachability(True).all_ingress("x/a", False).mismatches(dataclasses.replace(view, pods=pods)) == []


def test_should_allow_ingress_access_from_updated_namespace():
    text = policy("allow-client-a-via-ns-selector", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                  "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns2: updated}}}]}]")
    assert Reachability(True).all_ingress("x/a", False).mismatches(model_view(text)) == []
    updated = model_view(text, namespaces={"y": {"ns": "y", "ns2": "updated"}})
    assert Reachability(True).all_ingress("x/a", False).peers(True, from_ns="y", to_ns="x", to_pod="a") \
        .mismatches(updated) == []


def test_should_not_allow_access_by_tcp_when_a_policy_specifies_only_udp():
    view = model_view(policy("allow-only-udp", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                             "  ingress: [{ports: [{port: 81, protocol: UDP}]}]"))
    assert Reachability(True).all_ingress("x/a", False).mismatches(view, 81, "TCP") == []
    assert truth_table(view, 81, "UDP")[("y/b", "x/a")] is True
