"""LoadBalancer Services and externalIPs in a real cluster: the external client on the node
network reaches the address the service controller gave (the elected node answers its ARP),
through kube-proxy's KUBE-EXT / KUBE-FW rules, with real TCP and UDP packets; and, for the
Local policy, every node answers kube-proxy's health check on the healthCheckNodePort."""

from __future__ import annotations

import json
import shutil
import sys
import time

import pytest

from overlaynet import names
from tests.netns.clusters import Cli, in_netns, namespaces_of, short_state_dir, write_manifest

CLUSTER = "lb-svc"
EXTERNAL = names.external_netns(CLUSTER)
POOL = ["172.20.0.200", "172.20.0.201", "172.20.0.202", "172.20.0.203"]
SECOND_SOURCE = "172.20.0.3"  # a second address of the external client, inside the allowed source range


def deployment(name: str, replicas: int, **pod_spec) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "agnhost", "ports": [
                                      {"containerPort": 8080, "name": "http"},
                                      {"containerPort": 9090, "protocol": "UDP", "name": "dns"}]}], **pod_spec}}}}


def service(name: str, app: str, **spec) -> dict:
    ports = spec.pop("ports", [{"name": "http", "port": 80, "targetPort": "http"}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": "LoadBalancer", "selector": {"app": app}, "ports": ports, **spec}}


@pytest.fixture(scope="module")
def cluster():
    state = short_state_dir()
    cli = Cli(state)
    try:
        cluster_file = write_manifest(state, "cluster.yaml", [{
            "apiVersion": "overlaynet.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": CLUSTER},
            "spec": {"nodes": 3, "loadBalancerPool": f"{POOL[0]}-{POOL[-1]}"}}])
        cli.run("up", "-f", cluster_file)
        manifest = write_manifest(state, "app.yaml", [
            deployment("web", 3), deployment("solo", 1, nodeName="node-2"),
            service("web-lb", "web", ports=[{"name": "http", "port": 80, "targetPort": "http"},
                                            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"}]),
            service("web-fw", "web", loadBalancerSourceRanges=[f"{SECOND_SOURCE}/32"]),
            service("solo-local", "solo", externalTrafficPolicy="Local"),
            service("extra", "web"),
            service("zz-late", "web"),  # addresses go in name order: this one finds the pool empty
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-ext"},
             "spec": {"selector": {"app": "web"}, "externalIPs": ["203.0.113.10"],
                      "ports": [{"port": 80, "targetPort": "http"}]}},
        ])
        cli.run("apply", "-f", manifest, "--name", CLUSTER)
        yield cli
    finally:
        cli.down_quietly(CLUSTER)
        shutil.rmtree(state, ignore_errors=True)


def services(cli) -> dict[str, dict]:
    return {s["metadata"]["name"]: s for s in cli.json("get", "svc", "--name", CLUSTER)["items"]}


def ingress(cli, name: str) -> str | None:
    found = services(cli)[name].get("status", {}).get("loadBalancer", {}).get("ingress", [])
    return found[0]["ip"] if found else None


def curl(url: str, *extra: str) -> str:
    return in_netns(EXTERNAL, "curl", "-s", "-m", "3", *extra, url).stdout


def proxied_addresses(node: str) -> set[str]:
    out = in_netns(names.node_netns(CLUSTER, node), "ip", "neigh", "show", "proxy").stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def announcer(cli, name: str) -> str:
    line = next(l for l in cli.run("describe", "svc", name, "--name", CLUSTER).stdout.splitlines()
                if l.startswith("LoadBalancer Ingress:"))
    return line.split("announced by node ")[1].split(":")[0]


def test_addresses_come_from_the_pool_and_the_fifth_service_is_pending(cluster):
    given = {name: ingress(cluster, name) for name in ("extra", "solo-local", "web-fw", "web-lb", "zz-late")}
    assert given == {"extra": POOL[0], "solo-local": POOL[1], "web-fw": POOL[2], "web-lb": POOL[3], "zz-late": None}
    table = cluster.run("get", "svc", "--name", CLUSTER).stdout
    assert "<pending>" in table and "203.0.113.10" in table and "LoadBalancer" in table
    described = cluster.run("describe", "svc", "zz-late", "--name", CLUSTER).stdout
    assert "AllocationFailed" in described and "no available IPs" in described


def test_offline_render_gives_the_live_addresses(cluster):
    state = cluster.state_dir
    rendered = cluster.run("render", "-f", f"{state}/cluster.yaml", "-f", f"{state}/app.yaml",
                           "--node", "node-1").stdout
    offline = {line.split('"default/')[1].split()[0].split(":")[0]: line.split(" -d ")[1].split()[0]
               for line in rendered.splitlines() if 'loadbalancer IP" -m' in line}
    assert offline == {name: ingress(cluster, name) for name in ("extra", "solo-local", "web-fw", "web-lb")}


def test_external_client_reaches_the_lb_ip_over_tcp_and_udp(cluster):
    ip = ingress(cluster, "web-lb")
    seen = {curl(f"http://{ip}/hostname") for _ in range(10)}
    assert seen and all(name.startswith("web-") for name in seen)
    node = announcer(cluster, "web-lb")
    assert ip in proxied_addresses(node)
    assert all(ip not in proxied_addresses(other) for other in ("node-1", "node-2", "node-3") if other != node)
    reply = in_netns(EXTERNAL, sys.executable, "-c",
                     "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3);"
                     f"s.sendto(b'hostname', ('{ip}', 53)); print(s.recv(100).decode())").stdout.strip()
    assert reply.startswith("web-")


def test_source_ranges_block_outside_and_allow_inside(cluster):
    ip = ingress(cluster, "web-fw")
    assert curl(f"http://{ip}/hostname") == ""  # 172.20.0.2 is outside 172.20.0.3/32: dropped
    in_netns(EXTERNAL, "ip", "addr", "add", f"{SECOND_SOURCE}/24", "dev", names.NODE_UPLINK)
    try:
        assert curl(f"http://{ip}/clientip", "--interface", SECOND_SOURCE) != ""
    finally:
        in_netns(EXTERNAL, "ip", "addr", "del", f"{SECOND_SOURCE}/24", "dev", names.NODE_UPLINK)


def test_local_policy_keeps_the_client_ip_and_is_announced_by_the_endpoints_node(cluster):
    ip = ingress(cluster, "solo-local")
    assert announcer(cluster, "solo-local") == "node-2"  # solo's only pod runs there
    assert curl(f"http://{ip}/clientip").rsplit(":", 1)[0] == "172.20.0.2"


def health_checks(cli, name: str) -> dict[str, tuple[int, dict, str]]:
    """node -> (HTTP status, JSON body, headers) of ``GET /healthz`` on the Service's
    healthCheckNodePort of each node's address, from the external client."""
    port = services(cli)[name]["spec"]["healthCheckNodePort"]
    answers = {}
    for node in cli.json("get", "nodes", "--name", CLUSTER)["items"]:
        address = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
        out = curl(f"http://{address}:{port}/healthz", "-i")
        head, _, body = out.replace("\r\n", "\n").partition("\n\n")
        answers[node["metadata"]["name"]] = (int(head.split()[1]), json.loads(body), head)
    return answers


def test_each_node_answers_the_health_check_with_its_local_endpoints_as_kube_proxy_does(cluster):
    answers = health_checks(cluster, "solo-local")
    assert {node: status for node, (status, _, _) in answers.items()} == {"node-1": 503, "node-2": 200, "node-3": 503}
    _, body, head = answers["node-2"]
    assert body == {"service": {"namespace": "default", "name": "solo-local"}, "localEndpoints": 1,
                    "serviceProxyHealthy": True}
    assert "Content-Type: application/json" in head and "X-Load-Balancing-Endpoint-Weight: 1" in head
    assert answers["node-1"][1]["localEndpoints"] == 0 and "X-Load-Balancing-Endpoint-Weight: 0" in answers["node-1"][2]


def test_external_ip_is_reachable(cluster):
    assert curl("http://203.0.113.10/hostname").startswith("web-")


def test_the_announcement_moves_with_the_local_endpoint(cluster):
    state = cluster.state_dir
    moved = write_manifest(state, "moved.yaml", [deployment("solo", 1, nodeName="node-3")])
    cluster.run("apply", "-f", moved, "--name", CLUSTER)
    ip = ingress(cluster, "solo-local")
    deadline = time.monotonic() + 20
    while announcer(cluster, "solo-local") != "node-3" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert announcer(cluster, "solo-local") == "node-3"
    assert ip in proxied_addresses("node-3") and ip not in proxied_addresses("node-2")
    # the gratuitous ARP moved the external client's neighbour entry at once: no stale MAC
    assert curl(f"http://{ip}/clientip").rsplit(":", 1)[0] == "172.20.0.2"
    # and the health checks follow the endpoint: node-3 answers 200 now, node-2 503
    assert {node: status for node, (status, _, _) in health_checks(cluster, "solo-local").items()} == {
        "node-1": 503, "node-2": 503, "node-3": 200}


def test_delete_releases_the_address_to_the_pending_service(cluster):
    address = ingress(cluster, "extra")
    cluster.run("delete", "svc", "extra", "--name", CLUSTER)
    assert ingress(cluster, "zz-late") == address
    assert curl(f"http://{address}/hostname").startswith("web-")  # now zz-late's
    cluster.run("delete", "svc", "zz-late", "--name", CLUSTER)
    assert all(address not in proxied_addresses(node) for node in ("node-1", "node-2", "node-3"))
    assert curl(f"http://{address}/hostname") == ""


def test_down_leaves_nothing(cluster):
    cluster.run("down", "--name", CLUSTER)
    assert namespaces_of(CLUSTER) == []
