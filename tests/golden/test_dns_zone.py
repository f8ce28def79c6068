"""A golden zone dump: every record the cluster DNS serves for a small cluster, as zone-file lines.

The cluster: a ClusterIP Service with named TCP and UDP ports, a NodePort Service with
an unnamed port (no SRV), a headless Service with two ready endpoints (one of them a pod with ``hostname`` and
``subdomain``) and one that is not ready, a headless Service that publishes not-ready
addresses, the kube-dns Service, and pods in two namespaces. A change to what the records
module computes shows as a diff; regenerate after an intended change with
``OVERLAYNET_UPDATE_GOLDEN=1 pytest tests/golden``.
"""

from __future__ import annotations

import difflib
import os
import pathlib

import pytest

from overlaynet.api.model import build_spec
from overlaynet.api.services import parse_service_document
from overlaynet.control.dns import addon_documents
from overlaynet.control.dns_records import plan_records, zone_text
from overlaynet.control.endpoints import build_endpoint_slices

HERE = pathlib.Path(__file__).parent
GOLDEN = "dns-zone.txt"


def pod(name, ip, labels, namespace="default", ready=True, **spec):
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}],
                **spec},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def service(name, namespace="default", **spec):
    return parse_service_document({"kind": "Service", "metadata": {"name": name, "namespace": namespace},
                                   "spec": spec}, "golden")


PODS = [
    pod("web-1", "10.244.1.2", {"app": "web"}),
    pod("web-2", "10.244.2.2", {"app": "web"}),
    pod("db-0", "10.244.1.3", {"app": "db"}, hostname="db-0", subdomain="db"),
    pod("db-1", "10.244.2.3", {"app": "db"}),
    pod("db-2", "10.244.2.4", {"app": "db"}, ready=False),
    pod("peer-1", "10.244.1.4", {"app": "peer"}, ready=False),
    pod("coredns-1", "10.244.0.2", {"k8s-app": "kube-dns"}, namespace="kube-system"),
]
SERVICES = [
    service("web", clusterIP="10.96.0.20", selector={"app": "web"},
            ports=[{"name": "http", "port": 80, "targetPort": "http"},
                   {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"}]),
    service("web-nodeport", type="NodePort", clusterIP="10.96.0.21", selector={"app": "web"},
            ports=[{"port": 80, "targetPort": 8080, "nodePort": 30080}]),
    service("db", clusterIP="None", selector={"app": "db"}, ports=[{"name": "http", "port": 80, "targetPort": "http"}]),
    service("peer", clusterIP="None", selector={"app": "peer"}, publishNotReadyAddresses=True,
            ports=[{"name": "http", "port": 80, "targetPort": "http"}]),
    parse_service_document(addon_documents(build_spec())[1], "golden"),
]


def records():
    slices = [s for svc in SERVICES for s in build_endpoint_slices(svc, PODS).slices]
    return plan_records("cluster.local", "10.96.0.10", SERVICES, slices, PODS)


def test_the_zone_of_a_small_cluster():
    actual = zone_text(records())
    path = HERE / GOLDEN
    if os.environ.get("OVERLAYNET_UPDATE_GOLDEN"):
        path.write_text(actual)
    expected = path.read_text() if path.exists() else ""
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            f"{GOLDEN} (golden)", f"{GOLDEN} (computed)"))
        pytest.fail(f"the zone differs from {GOLDEN}:\n{diff}")
