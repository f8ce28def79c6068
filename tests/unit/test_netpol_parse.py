"""NetworkPolicy and Namespace documents: what is accepted, and one clear error for each mistake."""

from __future__ import annotations

import re

import pytest
import yaml

from overlaynet.api.netpol import (
    parse_label_changes,
    parse_namespace_document,
    parse_networkpolicy_document,
    parse_selector_string,
)
from overlaynet.errors import InvalidInput

FULL = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {role: fe}}
      namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [a, b]}]}
    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}
    ports: [{port: 80}, {port: http, protocol: TCP}, {port: 8000, endPort: 8100, protocol: UDP}]
  egress:
  - {}
"""


def parse(text: str, namespace=None):
    return parse_networkpolicy_document(yaml.safe_load(text), "np.yaml", namespace)


def test_full_policy_round_trips_through_its_document():
    policy = parse(FULL)
    assert policy.key == "shop/web"
    assert policy.policy_types == ("Ingress", "Egress")
    assert [p.describe() for p in policy.ingress[0].ports] == ["80/TCP", "http/TCP", "8000-8100/UDP"]
    assert policy.egress[0].peers == () and policy.egress[0].ports == ()
    assert parse_networkpolicy_document(policy.to_document(), "store") == policy


@pytest.mark.parametrize("patch,message", [
    ("spec: {}", 'np.yaml: NetworkPolicy "p": spec.podSelector is required'),
    ("spec: {podSelector: {}, policyTypes: [Inbound]}", 'spec.policyTypes[0] "Inbound" is not valid'),
    ("spec: {podSelector: {matchExpressions: [{key: a, operator: Has}]}}",
     'spec.podSelector.matchExpressions[0].operator "Has" is not valid'),
    ("spec: {podSelector: {matchExpressions: [{key: a, operator: In}]}}",
     "spec.podSelector.matchExpressions[0].values must be non-empty when operator is In"),
    ("spec: {podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}}",
     "values must be empty when operator is Exists"),
    ("spec: {podSelector: {matchLabels: {'bad key!': x}}}", 'spec.podSelector.matchLabels key "bad key!"'),
    ("spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]}",
     'spec.ingress[0].from[0].ipBlock.except[0] "10.1.0.0/24" must be strictly inside cidr "10.0.0.0/16"'),
    ("spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.1/16}}]}]}",
     'spec.ingress[0].from[0].ipBlock.cidr "10.0.0.1/16" is not a valid CIDR'),
    ("spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
     "spec.ingress[0].from[0]: ipBlock cannot be combined with podSelector or namespaceSelector"),
    ("spec: {podSelector: {}, egress: [{to: [{}]}]}", "spec.egress[0].to[0] must set podSelector"),
    ("spec: {podSelector: {}, ingress: [{ports: [{port: 80, endPort: 79}]}]}",
     "spec.ingress[0].ports[0].endPort 79 must be between port 80 and 65535"),
    ("spec: {podSelector: {}, ingress: [{ports: [{port: http, endPort: 90}]}]}",
     "spec.ingress[0].ports[0].endPort may only be set with a numeric port"),
    ("spec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}",
     "spec.ingress[0].ports[0].port 70000 is out of range 1-65535"),
    ("spec: {podSelector: {}, ingress: [{ports: [{port: 80, protocol: SCTP}]}]}",
     'spec.ingress[0].ports[0].protocol "SCTP" is not supported'),
    ("spec: {podSelector: {}, ingress: [{ports: [{port: 80, protocol: ICMP}]}]}",
     'spec.ingress[0].ports[0].protocol "ICMP" is not valid'),
    ("spec: {podSelector: {}, ingress: [{ports: [{port: Web_Port}]}]}",
     'spec.ingress[0].ports[0].port "Web_Port" must be a number or an IANA service name'),
    ("spec: {podSelector: {}, ingres: []}", "spec.ingres is not a field of a NetworkPolicy"),
    ("spec: {podSelector: {}, ingress: [{form: []}]}", "spec.ingress[0].form is not a field of this rule"),
])
def test_bad_policies_get_one_error_naming_the_field(patch, message):
    text = "kind: NetworkPolicy\nmetadata: {name: p}\n" + patch
    with pytest.raises(InvalidInput) as caught:
        parse(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_policy_namespace_from_flag_and_bad_name():
    assert parse("kind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}}", "team").namespace == "team"
    with pytest.raises(InvalidInput, match='NetworkPolicy "Bad_Name": metadata.name'):
        parse("kind: NetworkPolicy\nmetadata: {name: Bad_Name}\nspec: {podSelector: {}}")


def test_namespace_documents_carry_the_automatic_label():
    namespace = parse_namespace_document({"kind": "Namespace", "metadata": {"name": "team", "labels": {"a": "b"}}},
                                         "ns.yaml")
    assert namespace.to_document()["metadata"]["labels"] == {"a": "b", "kubernetes.io/metadata.name": "team"}
    with pytest.raises(InvalidInput, match='Namespace "team": metadata.labels.kubernetes.io/metadata.name'):
        parse_namespace_document({"metadata": {"name": "team", "labels": {"kubernetes.io/metadata.name": "x"}}}, "f")
    with pytest.raises(InvalidInput, match='Namespace "Team"'):
        parse_namespace_document({"metadata": {"name": "Team"}}, "f")


def test_label_changes_like_kubectl_label():
    assert parse_label_changes(["app=web", "tier-"], "pod", "p") == ({"app": "web"}, ["tier"])
    with pytest.raises(InvalidInput, match='pod "p": "app" is neither KEY=VALUE nor KEY-'):
        parse_label_changes(["app"], "pod", "p")
    with pytest.raises(InvalidInput, match='pod "p": label app "bad value!"'):
        parse_label_changes(["app=bad value!"], "pod", "p")
    with pytest.raises(InvalidInput, match="is set by the API server"):
        parse_label_changes(["kubernetes.io/metadata.name=x"], "namespace", "n")


@pytest.mark.parametrize(("text", "matching", "not_matching"), [
    ("app=web", {"app": "web"}, {"app": "db"}),
    ("app==web,tier!=db", {"app": "web"}, {"app": "web", "tier": "db"}),
    ("env in (a, b),!gone", {"env": "b"}, {"env": "b", "gone": ""}),
    ("env notin (a)", {}, {"env": "a"}),
    ("app", {"app": ""}, {}),
])
def test_a_selector_string_selects_as_kubectl_get_l(text, matching, not_matching):
    chosen = parse_selector_string(text)
    assert chosen.matches(matching) and not chosen.matches(not_matching)


@pytest.mark.parametrize(("text", "why"), [
    ("a=b=c", 'cannot read it from "a=b=c"'),
    ("app=web,,", 'cannot read it from ","'),
    ("tier in (a", "cannot read it"),
    ("-bad=x", "the name must be 63 characters or less"),
    ("app=" + "x" * 64, "must be 63 characters or less"),
])
def test_a_bad_selector_string_is_named(text, why):
    with pytest.raises(InvalidInput, match=f'^selector "{re.escape(text[:10])}') as caught:
        parse_selector_string(text)
    assert why in str(caught.value)
