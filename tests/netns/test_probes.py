"""Readiness and liveness probes run by the kubelet side (the agent): a pod whose server stops
answering leaves its Services' endpoints and comes back when it answers again; the agent's log
says why a probe failed."""

from __future__ import annotations

import shutil
import time

import pytest

from tests.netns.clusters import Cli, agent_log, agent_story, in_netns, short_state_dir, write_manifest

CLUSTER = "prb"


def deployment(name: str, probe_kind: str, probe: dict) -> dict:
    container = {"name": name, "image": "agnhost", "ports": [{"containerPort": 8080, "name": "http"}],
                 f"{probe_kind}Probe": {**probe, "periodSeconds": 1, "failureThreshold": 1}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}}}


@pytest.fixture(scope="module")
def cluster():
    state = short_state_dir()
    cli = Cli(state)
    try:
        cli.run("up", "--name", CLUSTER, "--nodes", "2")
        manifest = write_manifest(state, "app.yaml", [
            deployment("api", "readiness", {"httpGet": {"path": "/healthz", "port": "http"}}),
            deployment("worker", "liveness", {"tcpSocket": {"port": 8080}}),
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api"},
             "spec": {"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": "http"}]}},
        ])
        cli.run("apply", "-f", manifest, "--name", CLUSTER)
        yield cli
    finally:
        cli.down_quietly(CLUSTER)
        shutil.rmtree(state, ignore_errors=True)


def endpoints(cli, service: str) -> set[str]:
    slices = cli.json("get", "endpointslices", "--name", CLUSTER)["items"]
    return {address for s in slices if s["metadata"]["labels"]["kubernetes.io/service-name"] == service
            for e in s["endpoints"] if e["conditions"].get("ready", True) for address in e["addresses"]}


def failure_logged(cli, kind: str, pod: str) -> str:
    """The reason the agent logged for ``pod``'s ``kind`` probe failing, or ""."""
    prefix = f"{kind} probe of pod/default/{pod}: failure ("
    return next((line.split(prefix, 1)[1].rstrip(")") for line in agent_log(cli.state_dir, CLUSTER).splitlines()
                 if prefix in line), "")


def story(cli, expected: set[str]) -> str:
    """Why the endpoints are not what was expected: them, and the agent's log of probes."""
    return f"endpoints {sorted(endpoints(cli, 'api'))}, expected {sorted(expected)}\n{agent_story(cli.state_dir, CLUSTER)}"


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return predicate()


def test_readiness_moves_a_pod_out_of_the_endpoints_and_back(cluster):
    pods = {n: p for n, p in cluster.pods(CLUSTER).items() if n.startswith("api-")}
    all_ips = {p["status"]["podIP"] for p in pods.values()}
    assert wait_for(lambda: endpoints(cluster, "api") == all_ips), story(cluster, all_ips)
    victim, record = sorted(pods.items())[0]
    out = cluster.run("exec", victim, "--name", CLUSTER, "--", "python3", "-m", "overlaynet", "testserver", "stop")
    assert "test server stopped" in out.stdout
    assert wait_for(lambda: endpoints(cluster, "api") == all_ips - {record["status"]["podIP"]}), \
        story(cluster, all_ips - {record["status"]["podIP"]})
    assert cluster.pods(CLUSTER)[victim]["status"]["containerStatuses"][0]["ready"] is False
    assert failure_logged(cluster, "readiness", victim) == \
        f"GET http://{record['status']['podIP']}:8080/healthz: connection refused"
    ip = cluster.json("get", "svc", "api", "--name", CLUSTER)["spec"]["clusterIP"]
    client = next(n for n in pods if n != victim)
    hits = {in_netns(f"{CLUSTER}.pod.default.{client}", "curl", "-s", "-m", "2", f"http://{ip}/hostname").stdout
            for _ in range(30)}
    assert victim not in hits and len(hits) == 2
    cluster.run("testserver", "start", victim, "--name", CLUSTER)
    assert wait_for(lambda: endpoints(cluster, "api") == all_ips), story(cluster, all_ips)
    assert cluster.json("get", "deployments", "api", "--name", CLUSTER)["status"]["readyReplicas"] == 3


def test_liveness_failure_restarts_the_server(cluster):
    victim = sorted(n for n in cluster.pods(CLUSTER) if n.startswith("worker-"))[0]
    cluster.run("testserver", "stop", victim, "--name", CLUSTER)

    def restarted():
        status = cluster.pods(CLUSTER)[victim]["status"]["containerStatuses"][0]
        return status["restartCount"] >= 1

    assert wait_for(restarted)
    ip = cluster.pods(CLUSTER)[victim]["status"]["podIP"]
    assert failure_logged(cluster, "liveness", victim) == f"connect to {ip}:8080: connection refused"
    status = lambda: cluster.run("testserver", "status", victim, "--name", CLUSTER).stdout  # noqa: E731
    assert "test server serving" in wait_for(lambda: "serving" in status() and status())
    row = next(line for line in cluster.run("get", "pods", "--name", CLUSTER).stdout.splitlines()
               if line.startswith(victim))
    assert row.split()[3] != "0"  # RESTARTS
