"""Services in a real cluster: ClusterIP and NodePort through kube-proxy's iptables rules in
every node, endpoints following the pods, checked with real connections."""

from __future__ import annotations

import shutil
import sys
import time

import pytest

from tests.netns.clusters import Cli, in_netns, pod, short_state_dir, write_manifest

CLUSTER = "svc"


def service(name: str, selector: dict, ports: list[dict], **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": selector, "ports": ports, **spec}}


@pytest.fixture(scope="module")
def cluster():
    state = short_state_dir()
    cli = Cli(state)
    try:
        cli.run("up", "--name", CLUSTER, "--nodes", "2")
        web = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
               "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "web", "image": "agnhost", "ports": [
                                         {"containerPort": 8080, "name": "http"},
                                         {"containerPort": 9090, "protocol": "UDP", "name": "dns"}]}]}}}}
        manifest = write_manifest(state, "app.yaml", [
            web, pod("client", nodeName="node-1"),
            service("web", {"app": "web"}, [{"name": "http", "port": 80, "targetPort": "http"},
                                            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 9090}]),
            service("web-np", {"app": "web"}, [{"port": 80, "targetPort": 8080}], type="NodePort"),
            service("nobody", {"app": "nobody"}, [{"port": 80, "targetPort": 8080}]),
            service("misnamed", {"app": "web"}, [{"port": 80, "targetPort": "metrics"}]),
            service("sticky", {"app": "web"}, [{"port": 80, "targetPort": 8080}], sessionAffinity="ClientIP"),
            {**web, "metadata": {"name": "solo"}, "spec": {**web["spec"], "replicas": 1,
                                                          "selector": {"matchLabels": {"app": "solo"}},
                                                          "template": {"metadata": {"labels": {"app": "solo"}},
                                                                       "spec": {**web["spec"]["template"]["spec"],
                                                                                "nodeName": "node-1"}}}},
            service("solo-local", {"app": "solo"}, [{"port": 80, "targetPort": 8080}], type="NodePort",
                    externalTrafficPolicy="Local"),
        ])
        out = cli.run("apply", "-f", manifest, "--name", CLUSTER).stdout
        assert "service/web created" in out and "service/web-np created" in out
        yield cli
    finally:
        cli.down_quietly(CLUSTER)
        shutil.rmtree(state, ignore_errors=True)


def services(cli) -> dict[str, dict]:
    return {s["metadata"]["name"]: s for s in cli.json("get", "svc", "--name", CLUSTER)["items"]}


def curl(netns: str, url: str) -> str:
    return in_netns(netns, "curl", "-s", "-m", "3", url).stdout


def test_cluster_ips_and_node_ports_are_allocated(cluster):
    svcs = services(cluster)
    assert svcs["web"]["spec"]["clusterIP"].startswith("10.96.0.")
    assert svcs["web"]["spec"]["clusterIP"] != "10.96.0.1"  # kubernetes.default's
    assert 30000 <= svcs["web-np"]["spec"]["ports"][0]["nodePort"] <= 32767
    table = cluster.run("get", "svc", "--name", CLUSTER).stdout
    assert "NodePort" in table and "80:" in table


def test_cluster_ip_reaches_every_endpoint_without_snat(cluster):
    pods = cluster.pods(CLUSTER)
    web_names = {n for n in pods if n.startswith("web-")}
    ip = services(cluster)["web"]["spec"]["clusterIP"]
    seen = {curl("svc.pod.default.client", f"http://{ip}/hostname") for _ in range(40)}
    assert seen == web_names
    client_ip = curl("svc.pod.default.client", f"http://{ip}/clientip").rsplit(":", 1)[0]
    assert client_ip == pods["client"]["status"]["podIP"]


def test_udp_service(cluster):
    ip = services(cluster)["web"]["spec"]["clusterIP"]
    reply = in_netns("svc.pod.default.client", sys.executable, "-c",
                     "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3);"
                     f"s.sendto(b'hostname', ('{ip}', 53)); print(s.recv(100).decode())").stdout.strip()
    assert reply.startswith("web-")


def test_node_port_on_every_node(cluster):
    node_port = services(cluster)["web-np"]["spec"]["ports"][0]["nodePort"]
    for node_ip in ("172.20.0.11", "172.20.0.12"):
        assert curl("svc.node.node-1", f"http://{node_ip}:{node_port}/hostname").startswith("web-")


def test_service_without_endpoints_refuses_at_once(cluster):
    ip = services(cluster)["nobody"]["spec"]["clusterIP"]
    started = time.monotonic()
    result = in_netns("svc.pod.default.client", "curl", "-s", "-m", "5", f"http://{ip}/")
    assert result.returncode == 7  # curl: failed to connect (refused), not 28 (timeout)
    assert time.monotonic() - started < 2


def test_rules_show_kube_proxys_chains_with_their_service(cluster):
    text = cluster.run("rules", "node-2", "--name", CLUSTER).stdout
    assert "iptables backend:" in text
    assert "-A KUBE-SERVICES" in text and "KUBE-MARK-MASQ" in text and "KUBE-NODEPORTS" in text
    assert "# service default/web:http" in text
    assert "-j REJECT" in text  # the service without endpoints, in the filter table


def test_endpoints_follow_the_pods(cluster):
    slices = cluster.json("get", "endpointslices", "--name", CLUSTER)["items"]
    web = [s for s in slices if s["metadata"]["labels"]["kubernetes.io/service-name"] == "web"]
    assert sum(len(s["endpoints"]) for s in web) == 3
    victim = next(n for n in cluster.pods(CLUSTER) if n.startswith("web-"))
    cluster.run("delete", "pod", victim, "--name", CLUSTER)
    ip = services(cluster)["web"]["spec"]["clusterIP"]
    seen = {curl("svc.pod.default.client", f"http://{ip}/hostname") for _ in range(40)}
    assert victim not in seen and len(seen) == 3


def test_live_rules_match_what_render_computes(cluster):
    assert "# live rules match the rendered ones" in cluster.run("rules", "node-1", "--diff", "--name", CLUSTER).stdout


def test_describe_service_says_why_endpoints_are_missing(cluster):
    web = cluster.run("describe", "svc", "web", "--name", CLUSTER).stdout
    assert "Type:               ClusterIP" in web and "http 80/TCP -> targetPort http" in web
    assert web.count("10.244.") >= 3
    nobody = cluster.run("describe", "svc", "nobody", "--name", CLUSTER).stdout
    assert "no ready endpoints" in nobody and "REJECT" in nobody
    misnamed = cluster.run("describe", "svc", "misnamed", "--name", CLUSTER).stdout
    assert "metrics" in misnamed and "Why endpoints are missing" in misnamed


def test_verify_covers_services(cluster):
    import json

    result = cluster.run("verify", "--name", CLUSTER, "-o", "json", check=False)
    report = json.loads(result.stdout)
    failures = [c for c in report["checks"] if c["status"] != "ok"]
    assert result.returncode == 0 and report["passed"], json.dumps(failures)
    rules = {c["rule"] for c in report["checks"]}
    assert {"svc-endpoints", "svc-no-snat", "svc-hairpin", "svc-nodeport", "svc-refused"} <= rules
    local = [c for c in report["checks"] if c["rule"] == "svc-nodeport" and c["to"].startswith(("node-1", "node-2"))
             and "solo" not in c["to"]]
    assert local  # the NodePort checks name the node they tried
    solo = {c["toKind"] + " " + c["to"]: c for c in report["checks"] if c["rule"] == "svc-nodeport"
            and c["observedSource"] in ("172.20.0.2", None)}
    assert any(c["observedSource"] == "172.20.0.2" for c in solo.values())  # Local policy keeps the client IP
    assert any(c["observedSource"] is None for c in solo.values())  # and a node without an endpoint drops it
    sticky = [c for c in report["checks"] if c["rule"] == "svc-endpoints" and c["to"].startswith("default/sticky")]
    assert sticky and all(len(c["observedSource"].split(",")) == 1 for c in sticky)


def test_exec_in_the_external_client(cluster):
    node_port = services(cluster)["web-np"]["spec"]["ports"][0]["nodePort"]
    out = cluster.run("exec", "external", "--name", CLUSTER, "--", "curl", "-s", "-m", "3",
                      f"http://172.20.0.12:{node_port}/clientip").stdout
    assert out and not out.startswith("172.20.0.2:")  # masqueraded to a node address


def test_an_endpoint_change_rewrites_only_that_services_chains(cluster):
    """A partial sync (KEP-3453): chains of services that did not change keep their packet
    counters, because iptables-restore --noflush leaves undeclared chains alone."""
    import re
    import subprocess

    from overlaynet.proxy.render import svc_chain

    ip = services(cluster)["web"]["spec"]["clusterIP"]
    for _ in range(5):
        curl("svc.pod.default.client", f"http://{ip}/hostname")
    chain = svc_chain("default/web:http", "tcp")

    def counters() -> int:
        saved = subprocess.run(["ip", "netns", "exec", "svc.node.node-1", "iptables-save", "-c", "-t", "nat"],
                               capture_output=True, text=True, check=True).stdout
        return sum(int(m.group(1)) for m in re.finditer(rf"^\[(\d+):\d+\] -A {chain} ", saved, re.M))

    before = counters()
    assert before >= 5
    solo = next(n for n in cluster.pods(CLUSTER) if n.startswith("solo-"))
    cluster.run("delete", "pod", solo, "--name", CLUSTER)  # solo-local's endpoints change, web's do not
    assert counters() == before
