"""Golden files for kube-proxy's rules for LoadBalancer Services and externalIPs, plus traces
through them (KUBE-EXT, KUBE-FW, KUBE-PROXY-FIREWALL, KUBE-EXTERNAL-SERVICES).

Same lab as test_kube_proxy.py (three nodes, its pods); regenerate after an intended change
with ``OVERLAYNET_UPDATE_GOLDEN=1 pytest tests/golden``.
"""

from __future__ import annotations

import pytest
import yaml

from overlaynet.api.services import parse_service_document
from overlaynet.proxy.render import Ruleset, ext_chain, fw_chain, render
from overlaynet.proxy.rules import parse_tables
from overlaynet.proxy.trace import Packet, missing_targets
from tests.golden.test_kube_proxy import OUTSIDE, approx, compare, node_config, slices_for, tracer

SERVICES = {
    "lb-cluster": """
kind: Service
metadata: {name: web-lb}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.20
  selector: {app: np}
  ports: [{port: 80, targetPort: 8080, nodePort: 30090}]
status: {loadBalancer: {ingress: [{ip: 172.20.0.200}]}}
""",
    "lb-local": """
kind: Service
metadata: {name: web-lb-local}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 30093
  clusterIP: 10.96.0.21
  selector: {app: local}
  ports: [{port: 80, targetPort: 8080, nodePort: 30091}]
status: {loadBalancer: {ingress: [{ip: 172.20.0.201}]}}
""",
    "lb-source-ranges": """
kind: Service
metadata: {name: web-lb-fw}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.22
  selector: {app: np}
  loadBalancerSourceRanges: [172.20.0.0/28, 192.0.2.0/24]
  ports: [{port: 80, targetPort: 8080, nodePort: 30094}]
status: {loadBalancer: {ingress: [{ip: 172.20.0.202}]}}
""",
    "external-ips": """
kind: Service
metadata: {name: web-ext}
spec:
  clusterIP: 10.96.0.23
  selector: {app: web}
  externalIPs: [203.0.113.10]
  ports: [{name: http, port: 80, targetPort: http}]
""",
    "lb-no-endpoints": """
kind: Service
metadata: {name: empty-lb}
spec:
  type: LoadBalancer
  allocateLoadBalancerNodePorts: false
  clusterIP: 10.96.0.24
  selector: {app: nothing}
  externalIPs: [203.0.113.11]
  ports: [{port: 80, targetPort: 8080}]
status: {loadBalancer: {ingress: [{ip: 172.20.0.203}]}}
""",
}

# scenario -> (service, node it is rendered for)
SCENARIOS = {
    "lb-cluster": ("lb-cluster", "node-1"),
    "lb-local": ("lb-local", "node-1"),
    "lb-local-remote": ("lb-local", "node-3"),
    "lb-source-ranges": ("lb-source-ranges", "node-1"),
    "external-ips": ("external-ips", "node-1"),
    "lb-no-endpoints": ("lb-no-endpoints", "node-1"),
}


def render_scenario(name: str) -> Ruleset:
    service_name, node = SCENARIOS[name]
    service = parse_service_document(yaml.safe_load(SERVICES[service_name]), f"{service_name}.yaml")
    return render(node_config(node), [service], slices_for([service]))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_golden(scenario):
    ruleset = render_scenario(scenario)
    compare(f"kube-proxy-{scenario}.txt", ruleset.payload)
    assert missing_targets(ruleset.payload, ruleset.jumps) == []
    parse_tables(ruleset.payload)


def test_lb_ip_with_cluster_policy_reaches_every_endpoint_masqueraded():
    result = tracer(render_scenario("lb-cluster")).trace(Packet(OUTSIDE, "172.20.0.200", 80, origin="external"))
    assert result.destinations == approx({"10.244.0.6:8080": 0.5, "10.244.1.8:8080": 0.5})
    assert result.masqueraded is True
    ext = ext_chain("default/web-lb", "tcp")
    assert {o.service_chains[:2] for o in result.outcomes} == {("KUBE-SERVICES", ext)}
    # the LB address answers only on the service port; the node port still works
    t = tracer(render_scenario("lb-cluster"))
    assert t.trace(Packet(OUTSIDE, "172.20.0.200", 81, origin="external")).only().destination is None
    assert len(t.trace(Packet(OUTSIDE, "172.20.0.11", 30090, origin="external")).destinations) == 2


def test_lb_ip_with_local_policy_keeps_the_client_and_uses_the_local_endpoint():
    t = tracer(render_scenario("lb-local"))
    external = t.trace(Packet(OUTSIDE, "172.20.0.201", 80, origin="external"))
    assert external.destinations == approx({"10.244.0.7:8080": 1.0}) and external.masqueraded is False
    assert '"default/web-lb-local health check node port" -m tcp -p tcp --dport 30093 -j ACCEPT' in \
        render_scenario("lb-local").payload


def test_lb_ip_with_local_policy_on_a_node_without_local_endpoints_drops():
    t = tracer(render_scenario("lb-local-remote"))
    assert t.trace(Packet(OUTSIDE, "172.20.0.201", 80, origin="external")).only().verdict == "DROP"
    from_pod = t.trace(Packet("10.244.2.30", "172.20.0.201", 80))  # pods are short-circuited to all endpoints
    assert set(from_pod.destinations) == {"10.244.0.7:8080", "10.244.1.9:8080"}


def test_source_ranges_allow_inside_and_drop_outside():
    t = tracer(render_scenario("lb-source-ranges"))
    inside = t.trace(Packet("172.20.0.3", "172.20.0.202", 80, origin="external"))
    assert len(inside.destinations) == 2 and inside.masqueraded is True
    assert {o.service_chains[1] for o in inside.outcomes} == {fw_chain("default/web-lb-fw", "tcp")}
    assert t.trace(Packet("192.0.2.7", "172.20.0.202", 80, origin="external")).verdicts == approx({"DNAT": 1.0})
    outside = t.trace(Packet("198.51.100.9", "172.20.0.202", 80, origin="external")).only()
    assert outside.verdict == "DROP" and outside.destination is None
    # NodePorts ignore loadBalancerSourceRanges, as upstream's do
    assert len(t.trace(Packet("198.51.100.9", "172.20.0.11", 30094, origin="external")).destinations) == 2


def test_source_ranges_holding_the_node_let_the_node_reach_its_own_vip():
    payload = render_scenario("lb-source-ranges").payload
    assert f"-A {fw_chain('default/web-lb-fw', 'tcp')} -m comment --comment \"default/web-lb-fw loadbalancer IP\" " \
           f"-s 172.20.0.202 -j {ext_chain('default/web-lb-fw', 'tcp')}" in payload


def test_external_ip_is_captured_and_masqueraded():
    t = tracer(render_scenario("external-ips"))
    result = t.trace(Packet(OUTSIDE, "203.0.113.10", 80, origin="external"))
    assert len(result.destinations) == 3 and result.masqueraded is True


def test_no_endpoints_rejects_lb_ip_and_external_ip():
    ruleset = render_scenario("lb-no-endpoints")
    t = tracer(ruleset)
    assert t.trace(Packet(OUTSIDE, "172.20.0.203", 80, origin="external")).only().verdict == "REJECT"
    assert t.trace(Packet(OUTSIDE, "203.0.113.11", 80, origin="external")).only().verdict == "REJECT"
    assert "KUBE-NODEPORTS -m comment" not in ruleset.payload  # allocateLoadBalancerNodePorts: false
