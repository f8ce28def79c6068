"""A real three-node Flannel-like cluster, driven through the CLI, checked with real packets
and against the kernel state real Flannel would produce."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.netns.clusters import Cli, deployment, in_netns, namespaces_of, pod, short_state_dir, write_manifest

CLUSTER = "it"


@pytest.fixture(scope="module")
def cluster():
    state = short_state_dir()
    cli = Cli(state)
    try:
        cli.run("up", "--name", CLUSTER, "--no-dns")  # the pod counts below are the manifest's
        manifest = write_manifest(state, "app.yaml", [
            deployment("web", 6, ),
            pod("client-a", nodeName="node-1"),
            pod("client-b", nodeSelector={"kubernetes.io/hostname": "node-3"}),
        ])
        applied = cli.run("apply", "-f", manifest, "--name", CLUSTER).stdout
        assert "deployment.apps/web created" in applied and "pod/client-a created" in applied
        yield cli
    finally:
        cli.down_quietly(CLUSTER)
        shutil.rmtree(state, ignore_errors=True)


def node_ns(node: str) -> str:
    return f"{CLUSTER}.node.{node}"


def test_nodes_get_pod_cidrs_like_the_controller_manager(cluster):
    nodes = cluster.json("get", "nodes", "--name", CLUSTER)
    assert nodes["kind"] == "List"
    by_name = {n["metadata"]["name"]: n for n in nodes["items"]}
    assert [by_name[f"node-{i}"]["spec"]["podCIDR"] for i in (1, 2, 3)] == \
        ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]
    assert by_name["node-1"]["status"]["addresses"][0] == {"type": "InternalIP", "address": "172.20.0.11"}
    wide = cluster.run("get", "nodes", "-o", "wide", "--name", CLUSTER).stdout
    assert wide.split("\n")[0].split()[:8] == ["NAME", "STATUS", "ROLES", "AGE", "INTERNAL-IP", "POD-CIDR", "CNI", "NETNS"]
    assert "node-2   Ready" in wide.replace("  ", " ").replace("  ", " ") or "Ready" in wide


def test_get_selects_by_label_and_shows_labels_as_kubectl(cluster):
    web = cluster.run("get", "pods", "-l", "app=web", "--show-labels", "--name", CLUSTER).stdout.splitlines()
    assert web[0].split()[-1] == "LABELS" and len(web) == 7
    assert all(line.split()[0].startswith("web-") and line.split()[-1].startswith("app=web,pod-template-hash=")
               for line in web[1:])
    others = cluster.json("get", "pods", "-l", "app notin (web)", "--name", CLUSTER)["items"]
    assert sorted(p["metadata"]["name"] for p in others) == ["client-a", "client-b"]
    node = cluster.run("get", "nodes", "-l", "kubernetes.io/hostname=node-2", "-o", "name", "--name", CLUSTER)
    assert node.stdout.split() == ["node/node-2"]
    none = cluster.run("get", "pods", "-l", "app=nothing", "--name", CLUSTER)
    assert none.stdout == "" and "No resources found in default namespace." in none.stderr
    bad = cluster.run("get", "pods", "-l", "=web", "--name", CLUSTER, check=False)
    assert bad.returncode != 0 and bad.stderr.startswith('error: selector "=web"') and "Traceback" not in bad.stderr


def test_pods_are_placed_and_addressed(cluster):
    pods = cluster.pods(CLUSTER)
    assert len(pods) == 8 and all(p["status"]["phase"] == "Running" for p in pods.values())
    assert pods["client-a"]["spec"]["nodeName"] == "node-1"
    assert pods["client-b"]["spec"]["nodeName"] == "node-3"
    per_node = {}
    for p in pods.values():
        per_node.setdefault(p["spec"]["nodeName"], []).append(p)
    assert sorted(len(v) for v in per_node.values()) == [2, 3, 3]  # fewest-pods scoring
    cidrs = {"node-1": "10.244.0.", "node-2": "10.244.1.", "node-3": "10.244.2."}
    for p in pods.values():
        assert p["status"]["podIP"].startswith(cidrs[p["spec"]["nodeName"]])
    assert len({p["status"]["podIP"] for p in pods.values()}) == 8


def test_flannel_device_matches_real_flannel(cluster):
    link = in_netns(node_ns("node-1"), "ip", "-d", "link", "show", "flannel.1").stdout
    assert "mtu 1450" in link
    assert "vxlan id 1 local 172.20.0.11 dev eth0" in link
    assert "dstport 8472" in link and "nolearning" in link
    addresses = in_netns(node_ns("node-1"), "ip", "-4", "-o", "addr", "show", "dev", "flannel.1").stdout
    assert "10.244.0.0/32" in addresses and addresses.count("inet ") == 1
    bridge = in_netns(node_ns("node-1"), "ip", "-4", "-o", "addr", "show", "dev", "cni0").stdout
    assert "10.244.0.1/24" in bridge


def test_one_route_neigh_and_fdb_entry_per_peer(cluster):
    routes = in_netns(node_ns("node-1"), "ip", "route").stdout
    assert "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink" in routes
    assert "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink" in routes
    assert "10.244.0.0/24 dev cni0 proto kernel scope link src 10.244.0.1" in routes
    assert "10.244.0.0/16" not in routes  # no cluster-wide route via flannel.1
    neigh = in_netns(node_ns("node-1"), "ip", "neigh", "show", "dev", "flannel.1").stdout
    nodes = {n["metadata"]["name"]: n for n in cluster.json("get", "nodes", "--name", CLUSTER)["items"]}
    for peer, subnet_zero, peer_ip in (("node-2", "10.244.1.0", "172.20.0.12"), ("node-3", "10.244.2.0", "172.20.0.13")):
        mac = json.loads(nodes[peer]["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-data"])["VtepMAC"]
        assert f"{subnet_zero} lladdr {mac} PERMANENT" in neigh
        fdb = in_netns(node_ns("node-1"), "bridge", "fdb", "show", "dev", "flannel.1").stdout
        assert f"{mac} dst {peer_ip} self permanent" in fdb


def test_pod_interface_routes_and_mtu(cluster):
    pods = cluster.pods(CLUSTER)
    ns = f"{CLUSTER}.pod.default.client-a"
    routes = in_netns(ns, "ip", "route").stdout
    assert "default via 10.244.0.1 dev eth0" in routes
    assert "10.244.0.0/16 via 10.244.0.1 dev eth0" in routes
    link = in_netns(ns, "ip", "link", "show", "eth0").stdout
    assert "mtu 1450" in link
    assert pods["client-a"]["status"]["podIP"] in in_netns(ns, "ip", "-4", "addr", "show", "eth0").stdout


def test_exec_ping_across_nodes_and_node_commands(cluster):
    pods = cluster.pods(CLUSTER)
    target = pods["client-b"]["status"]["podIP"]
    result = cluster.run("exec", "client-a", "--name", CLUSTER, "--", "ping", "-c1", "-W2", target)
    assert "1 received" in result.stdout
    routes = cluster.run("exec", "node/node-2", "--name", CLUSTER, "--", "ip", "route").stdout
    assert "10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink" in routes


def test_mtu_1450_holds_and_1451_does_not(cluster):
    target = cluster.pods(CLUSTER)["client-b"]["status"]["podIP"]
    ns = f"{CLUSTER}.pod.default.client-a"
    assert in_netns(ns, "ping", "-c1", "-W2", "-M", "do", "-s", "1422", target).returncode == 0
    assert in_netns(ns, "ping", "-c1", "-W1", "-M", "do", "-s", "1423", target).returncode != 0


def test_test_server_answers_curl_with_the_real_client_ip(cluster):
    pods = cluster.pods(CLUSTER)
    web = next(p for name, p in pods.items() if name.startswith("web-") and p["spec"]["nodeName"] != "node-1")
    url = f"http://{web['status']['podIP']}:8080"
    ns = f"{CLUSTER}.pod.default.client-a"
    assert in_netns(ns, "curl", "-s", f"{url}/hostname").stdout == web["metadata"]["name"]
    seen = in_netns(ns, "curl", "-s", f"{url}/clientip").stdout
    assert seen.rsplit(":", 1)[0] == pods["client-a"]["status"]["podIP"]


def test_verify_proves_the_network_model(cluster):
    result = cluster.run("verify", "--name", CLUSTER, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Kubernetes network model: PASSED" in result.stdout
    assert "(e) cluster DNS: skipped, the Cluster document says dns: false" in result.stdout
    report = json.loads(cluster.run("verify", "--name", CLUSTER, "-o", "json").stdout)
    assert report["passed"] is True and report["dnsSkipped"]
    assert result.stdout.splitlines()[0].endswith(f'{len(report["checks"])} checks over TCP, UDP and ICMP')
    pairs = [c for c in report["checks"] if c["rule"] == "pod-pod"]
    assert len(pairs) == 8 * 7 * 3
    assert {c["protocol"] for c in pairs} == {"tcp", "udp", "icmp"}
    tcp = next(c for c in pairs if c["protocol"] == "tcp")
    assert tcp["observedSource"] == tcp["expectedSource"]
    assert {c["rule"] for c in report["checks"]} == {"pod-pod", "node-pod", "pod-node", "self"}


def test_verify_catches_nat(cluster):
    """A masquerade rule on a node must turn verify red and name the pair and both addresses."""
    ns = node_ns("node-1")
    rule = ["-t", "nat", "-A", "POSTROUTING", "-s", "10.244.0.0/24", "-o", "flannel.1", "-j", "MASQUERADE"]
    subprocess.run(["ip", "netns", "exec", ns, "iptables", *rule], check=True)
    try:
        result = cluster.run("verify", "--name", CLUSTER, check=False)
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "iptables", "-t", "nat", "-D", *rule[3:]], check=True)
    assert result.returncode == 1
    assert "(NAT)" in result.stdout and "expected 10.244.0." in result.stdout and "receiver saw 10.244.0.0" in result.stdout


def test_describe_node_shows_vxlan_state(cluster):
    text = cluster.run("describe", "node", "node-1", "--name", CLUSTER).stdout
    assert "PodCIDR:            10.244.0.0/24" in text
    assert "flannel.1" in text and "id 1 local 172.20.0.11 dev eth0 dstport 8472 nolearning" in text
    assert "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink" in text
    assert "PERMANENT" in text and "dst 172.20.0.12" in text
    pod_text = cluster.run("describe", "pod", "client-a", "--name", CLUSTER).stdout
    assert "Node:               node-1/172.20.0.11" in pod_text and "default via 10.244.0.1 dev eth0" in pod_text


def test_delete_pod_releases_it_and_the_deployment_replaces_it(cluster):
    pods = cluster.pods(CLUSTER)
    victim = next(name for name in pods if name.startswith("web-"))
    cluster.run("delete", "pod", victim, "--name", CLUSTER)
    assert not os.path.exists(f"/run/netns/{CLUSTER}.pod.default.{victim}")
    after = cluster.pods(CLUSTER)
    assert victim not in after
    assert sum(1 for n in after if n.startswith("web-")) == 6
    deploy = cluster.json("get", "deployments", "web", "--name", CLUSTER)
    assert deploy["status"]["readyReplicas"] == 6


def test_scale_down_and_up(cluster, tmp_path):
    manifest = write_manifest(str(tmp_path), "web.yaml", [deployment("web", 2)])
    assert "configured" in cluster.run("apply", "-f", manifest, "--name", CLUSTER).stdout
    names = [n for n in cluster.pods(CLUSTER) if n.startswith("web-")]
    assert len(names) == 2
    assert len([n for n in namespaces_of(CLUSTER) if ".pod.default.web-" in n]) == 2
    manifest = write_manifest(str(tmp_path), "web.yaml", [deployment("web", 6)])
    cluster.run("apply", "-f", manifest, "--name", CLUSTER)
    assert sum(1 for n in cluster.pods(CLUSTER) if n.startswith("web-")) == 6
    assert "unchanged" in cluster.run("apply", "-f", manifest, "--name", CLUSTER).stdout
