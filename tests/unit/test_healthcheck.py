"""kube-proxy's service health check answer (``agent.healthcheck``) and which checks a node
serves (``node.proxier.health_checks``), against the upstream handler's output."""

from __future__ import annotations

import pytest

from overlaynet.agent import healthcheck
from overlaynet.agent.testserver import render_response
from overlaynet.api.services import EndpointConditions, EndpointSlice, Service, ServicePort, SliceEndpoint
from overlaynet.errors import AgentError
from overlaynet.node.proxier import health_checks


def test_the_answer_is_byte_for_byte_kube_proxys():
    # kube-proxy's body for this service is 127 bytes (as scanners record it from real nodes)
    answer = healthcheck.response(healthcheck.HealthCheck(30686, "default", "wp-nginx-service", 1))
    assert answer.status == 200 and len(answer.body) == 127
    assert answer.body.decode() == ('{\n\t"service": {\n\t\t"namespace": "default",\n\t\t"name": "wp-nginx-service"\n\t},'
                                    '\n\t"localEndpoints": 1,\n\t"serviceProxyHealthy": true\n}')
    wire = render_response(answer).decode()
    assert wire.startswith("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    assert "X-Content-Type-Options: nosniff\r\n" in wire and "X-Load-Balancing-Endpoint-Weight: 1\r\n" in wire


def test_no_local_endpoint_or_an_unhealthy_proxy_is_503():
    assert healthcheck.response(healthcheck.HealthCheck(1, "a", "b", 0)).status == 503
    assert healthcheck.response(healthcheck.HealthCheck(1, "a", "b", 2), proxy_healthy=False).status == 503


@pytest.mark.parametrize("checks, field", [
    ("x", "must be a list"),
    ([{"port": 0, "namespace": "a", "name": "b", "localEndpoints": 0}], "port 0"),
    ([{"port": 30000, "namespace": "a", "name": "b", "localEndpoints": -1}], "localEndpoints -1"),
    ([{"port": 30000, "namespace": "", "name": "b", "localEndpoints": 0}], "must name the Service"),
    ([{"port": 30000, "namespace": "a", "name": "b", "localEndpoints": 0}] * 2, "already the check"),
])
def test_bad_checks_are_refused_by_field(checks, field):
    with pytest.raises(AgentError, match=field):
        healthcheck.parse_checks("node/node-1", checks)


def endpoint(ip: str, node: str, ready: bool | None = None) -> SliceEndpoint:
    return SliceEndpoint((ip,), EndpointConditions(ready=ready), node)


def test_a_node_counts_the_distinct_ready_addresses_of_each_service_with_a_health_check_port():
    local = Service("default", "web", ports=(ServicePort("http", 80, 8080),), type="LoadBalancer",
                    external_traffic_policy="Local", health_check_node_port=31000)
    cluster = Service("default", "other", ports=(ServicePort("http", 80, 8080),), type="LoadBalancer")
    slices = [
        EndpointSlice("default", "web-1", "web", (), (endpoint("10.244.0.2", "node-1"), endpoint("10.244.0.3", "node-1"),
                                                     endpoint("10.244.0.4", "node-1", ready=False),
                                                     endpoint("10.244.1.2", "node-2"))),
        EndpointSlice("default", "web-2", "web", (), (endpoint("10.244.0.2", "node-1"),)),  # the same address again
        EndpointSlice("default", "other-1", "other", (), (endpoint("10.244.0.9", "node-1"),)),
    ]
    assert health_checks("node-1", [local, cluster], slices) == [
        {"port": 31000, "namespace": "default", "name": "web", "localEndpoints": 2}]
    assert health_checks("node-3", [local, cluster], slices)[0]["localEndpoints"] == 0
