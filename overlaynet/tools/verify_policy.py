"""``verify`` with NetworkPolicies: what each probe should do, and its judgement (pure).

Without policies every probe must connect. With them, ``policy.semantics`` says which of
verify's probes (port 8080 over TCP and UDP, and ICMP echo) the policies deny:

- a denied probe that did not connect is the expected-deny state (``denied``: ``x`` in the
  matrix), not a failure;
- a denied probe that connected is a failure ("connected, but NetworkPolicy ... denies it");
- an allowed probe that failed stays a failure, as without policies.

The node reaching its own pods is always allowed (OUTPUT is not policed); another node's
probe comes from an address of that node (the one its socket used) and is judged as such an
address. Service probes reach endpoints chosen by kube-proxy at random: where a policy
isolates the client for egress or an endpoint for ingress they are not judged (``policy``)
and say so; the pod probes above judge the same paths pair by pair.
"""

from __future__ import annotations

import ipaddress

from overlaynet.api.manifests import DEFAULT_TEST_PORT
from overlaynet.api.netpol import EGRESS, INGRESS
from overlaynet.policy.semantics import PodEndpoint, PolicyView, allowed, isolating
from overlaynet.tools.verify import DENIED, FAIL, POLICY, Check, Report


def expected_allowed(view: PolicyView, pods: dict[str, PodEndpoint], check: Check) -> bool | None:
    """Whether policies allow ``check``'s probe; None when they do not judge it."""
    protocol = check.protocol.upper()
    source, target = check.source, check.target
    if source is None:
        return None
    if check.rule == "pod-pod":
        return allowed(view, pods[source.name], pods[target.name], DEFAULT_TEST_PORT, protocol)
    if check.rule == "node-pod":
        if source.name == target.node:
            return True
        address = check.expected if check.expected and check.expected != "any" else source.ip
        return allowed(view, ipaddress.IPv4Address(address), pods[target.name], DEFAULT_TEST_PORT, protocol)
    if check.rule == "pod-node":
        return allowed(view, pods[source.name], ipaddress.IPv4Address(target.ip), DEFAULT_TEST_PORT, protocol)
    return None


def judge_policies(report: Report, view: PolicyView, service_endpoints: dict[str, set[str]]) -> None:
    """Rewrite ``report``'s statuses for the policies in ``view``. ``service_endpoints`` maps a
    Service target's name (as in its checks) to its endpoint pods' keys."""
    pods = {p.key: p for p in view.pods}
    ingress_isolated = {p.key for p in view.pods if isolating(view, p, INGRESS)}
    egress_isolated = {p.key for p in view.pods if isolating(view, p, EGRESS)}
    for check in report.checks:
        if check.rule.startswith("svc-"):
            client = check.source.name if check.source and check.source.kind == "pod" else None
            endpoints = service_endpoints.get(check.target.name, set())
            if (client in egress_isolated or endpoints & ingress_isolated) and check.status == FAIL:
                check.status = POLICY
                check.error = "not judged: NetworkPolicy isolates the client or an endpoint (see the pod matrix)"
            continue
        expected = expected_allowed(view, pods, check)
        if expected is None or expected:
            continue
        if check.status == FAIL:
            check.status = DENIED
            check.error = None
        else:
            check.status = FAIL
            check.error = "connected, but NetworkPolicy denies it"
