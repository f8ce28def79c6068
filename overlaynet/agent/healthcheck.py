"""kube-proxy's service health checks: what a node answers on a ``healthCheckNodePort``.

For a ``LoadBalancer`` Service with ``externalTrafficPolicy: Local`` kube-proxy listens on the
Service's ``healthCheckNodePort`` on every node and answers any HTTP request with how many
ready endpoints of the Service run on that node: ``200`` when there is one or more, else
``503``, so that an external load balancer sends only to nodes that keep the client's address
and have a backend (pkg/proxy/healthcheck, ``hcHandler.ServeHTTP``; the count is of distinct
endpoint addresses, ``EndpointsMap.LocalReadyEndpoints``).

This module owns the pure part: the ``HealthCheck`` a node serves, parsed from the agent's
``health_checks`` request, and the answer, byte for byte as kube-proxy writes it (headers and
the tab-indented JSON body). The sockets are the node's ``testserver.ServedKey``'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from overlaynet.agent.testserver import Response
from overlaynet.errors import AgentError

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One Service's health check on one node."""

    port: int
    namespace: str
    name: str
    local_endpoints: int  # ready endpoints of the Service on this node (distinct addresses)


def parse_checks(key: str, raw: object) -> dict[int, HealthCheck]:
    """A ``health_checks`` request's ``checks``: ``[{"port", "namespace", "name", "localEndpoints"}]``."""
    if not isinstance(raw, list):
        raise AgentError(f'key "{key}": checks must be a list')
    checks: dict[int, HealthCheck] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise AgentError(f'key "{key}": checks[{i}] must be an object')
        port, count = item.get("port"), item.get("localEndpoints")
        namespace, name = item.get("namespace"), item.get("name")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise AgentError(f'key "{key}": checks[{i}].port {port!r} must be a port number 1-65535')
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise AgentError(f'key "{key}": checks[{i}].localEndpoints {count!r} must be a count')
        if not (isinstance(namespace, str) and namespace and isinstance(name, str) and name):
            raise AgentError(f'key "{key}": checks[{i}] must name the Service (namespace and name)')
        if port in checks:
            raise AgentError(f'key "{key}": checks[{i}].port {port} is already the check of another Service')
        checks[port] = HealthCheck(port, namespace, name, count)
    return checks


def response(check: HealthCheck, proxy_healthy: bool = True) -> Response:
    """kube-proxy's answer to any request on the check's port."""
    body = json.dumps({"service": {"namespace": check.namespace, "name": check.name},
                       "localEndpoints": check.local_endpoints, "serviceProxyHealthy": proxy_healthy}, indent="\t")
    status = 200 if check.local_endpoints and proxy_healthy else 503
    return Response(status, body.encode(), JSON, (("X-Content-Type-Options", "nosniff"),
                                                  ("X-Load-Balancing-Endpoint-Weight", str(check.local_endpoints))))
