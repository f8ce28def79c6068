"""The cluster DNS in a real cluster: CoreDNS pods behind the kube-dns Service, queried with
dig and getent from pods on both nodes, through kube-proxy's rules, over UDP and TCP; each
pod's resolv.conf where ``ip netns exec`` mounts it from; records following the pods."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from tests.netns.clusters import Cli, in_netns, pod, short_state_dir, write_manifest

CLUSTER = "dnst"
ROUTED = "dnsr"


def service(name: str, selector: dict, ports: list[dict], **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": selector, "ports": ports, **spec}}


def labelled(name: str, labels: dict, **spec) -> dict:
    document = pod(name, **spec)
    document["metadata"]["labels"] = labels
    document["spec"]["containers"][0]["ports"] = [{"containerPort": 8080, "name": "http"}]
    return document


@pytest.fixture(scope="module")
def cluster():
    state = short_state_dir()
    cli = Cli(state)
    try:
        cli.run("up", "--name", CLUSTER, "--nodes", "2")
        manifest = write_manifest(state, "app.yaml", [
            labelled("web-1", {"app": "web"}, nodeName="node-1"),
            labelled("db-0", {"app": "db"}, nodeName="node-1", hostname="db-0", subdomain="db"),
            labelled("db-1", {"app": "db"}, nodeName="node-2"),
            pod("client-1", nodeName="node-1"),
            pod("client-2", nodeName="node-2"),
            pod("plain", nodeName="node-1", dnsPolicy="Default"),
            pod("custom", nodeName="node-2", dnsPolicy="None", dnsConfig={
                "nameservers": ["10.96.0.10"], "searches": ["kube-system.svc.cluster.local"],
                "options": [{"name": "ndots", "value": "1"}]}),
            service("web", {"app": "web"}, [{"name": "http", "port": 80, "targetPort": "http"}]),
            service("db", {"app": "db"}, [{"name": "http", "port": 80, "targetPort": "http"}], clusterIP="None"),
        ])
        cli.run("apply", "-f", manifest, "--name", CLUSTER)
        yield cli
    finally:
        cli.down_quietly(CLUSTER)
        shutil.rmtree(state, ignore_errors=True)


def netns_of(name: str, namespace: str = "default", cluster: str = CLUSTER) -> str:
    return f"{cluster}.pod.{namespace}.{name}"


def dig(client: str, *args: str, cluster: str = CLUSTER) -> subprocess.CompletedProcess:
    return in_netns(netns_of(client, cluster=cluster), "dig", "+time=2", "+tries=1", *args)


def short(client: str, *args: str) -> list[str]:
    return sorted(dig(client, "+short", *args).stdout.split())


def cluster_ip(cli: Cli, name: str, namespace: str = "default") -> str:
    return cli.json("get", "svc", name, "-n", namespace, "--name", CLUSTER)["spec"]["clusterIP"]


def test_coredns_runs_on_both_nodes_behind_kube_dns_at_the_tenth_address(cluster):
    coredns = [p for p in cluster.json("get", "pods", "-n", "kube-system", "--name", CLUSTER)["items"]]
    assert len(coredns) == 2 and {p["spec"]["nodeName"] for p in coredns} == {"node-1", "node-2"}
    assert all(p["status"]["phase"] == "Running" for p in coredns)
    kube_dns = cluster.json("get", "svc", "kube-dns", "-n", "kube-system", "--name", CLUSTER)
    assert kube_dns["spec"]["clusterIP"] == "10.96.0.10"
    assert kube_dns["metadata"]["labels"] == {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
    table = cluster.run("get", "svc", "-A", "--name", CLUSTER).stdout
    assert "kube-dns" in table and "53/UDP,53/TCP" in table


def test_every_pod_gets_the_kubelets_resolv_conf_where_ip_netns_exec_reads_it(cluster):
    expected = "search default.svc.cluster.local svc.cluster.local cluster.local"
    with open(f"/etc/netns/{netns_of('client-1')}/resolv.conf") as handle:
        written = handle.read()
    assert written.startswith(expected) and "nameserver 10.96.0.10\n" in written and "options ndots:5\n" in written
    seen = cluster.run("exec", "client-2", "--name", CLUSTER, "--", "cat", "/etc/resolv.conf").stdout
    assert seen.startswith(expected) and "nameserver 10.96.0.10" in seen
    custom = in_netns(netns_of("custom"), "cat", "/etc/resolv.conf").stdout
    assert custom == "search kube-system.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:1\n"
    # dnsPolicy Default: the node's file, which is the host's; no file of its own.
    assert not os.path.exists(f"/etc/netns/{netns_of('plain')}")
    with open("/etc/resolv.conf") as handle:
        assert in_netns(netns_of("plain"), "cat", "/etc/resolv.conf").stdout == handle.read()


@pytest.mark.parametrize("client", ["client-1", "client-2"])
def test_a_service_name_resolves_to_its_cluster_ip_from_pods_on_both_nodes(cluster, client):
    web = cluster_ip(cluster, "web")
    hosts = cluster.run("exec", client, "--name", CLUSTER, "--", "getent", "hosts", "web").stdout.split()
    assert hosts == [web, "web.default.svc.cluster.local"]
    assert short(client, "web.default.svc.cluster.local") == [web]
    assert short(client, "+tcp", "kube-dns.kube-system.svc.cluster.local") == ["10.96.0.10"]
    answer = dig(client, "web.default.svc.cluster.local").stdout
    assert "status: NOERROR" in answer and "flags: qr aa rd" in answer and "SERVER: 10.96.0.10#53" in answer
    assert re.search(r"^web\.default\.svc\.cluster\.local\.\s+5\s+IN\s+A\s+" + re.escape(web) + "$", answer, re.MULTILINE)


def test_a_name_that_does_not_exist_is_nxdomain(cluster):
    answer = dig("client-1", "nothere.default.svc.cluster.local").stdout
    assert "status: NXDOMAIN" in answer
    assert re.search(r"^cluster\.local\.\s+5\s+IN\s+SOA\s+ns\.dns\.cluster\.local\. hostmaster\.cluster\.local\. ",
                     answer, re.MULTILINE)
    assert in_netns(netns_of("client-2"), "getent", "hosts", "nothere").returncode == 2
    assert "status: REFUSED" in dig("client-1", "example.com").stdout  # no upstream


def test_headless_srv_pod_and_ptr_records(cluster):
    pods = cluster.pods(CLUSTER)
    db0, db1, web1 = (pods[n]["status"]["podIP"] for n in ("db-0", "db-1", "web-1"))
    assert short("client-1", "db.default.svc.cluster.local") == sorted([db0, db1])
    assert short("client-2", "db-0.db.default.svc.cluster.local") == [db0]
    assert short("client-1", "SRV", "_http._tcp.web.default.svc.cluster.local") == \
        sorted(["0", "100", "80", "web.default.svc.cluster.local."])
    srv = dig("client-1", "+short", "SRV", "_http._tcp.db.default.svc.cluster.local").stdout.splitlines()
    assert sorted(line.split()[3] for line in srv) == sorted(
        ["db-0.db.default.svc.cluster.local.", f"{db1.replace('.', '-')}.db.default.svc.cluster.local."])
    assert short("client-2", f"{web1.replace('.', '-')}.default.pod.cluster.local") == [web1]
    assert short("client-1", "-x", cluster_ip(cluster, "web")) == ["web.default.svc.cluster.local."]
    custom = in_netns(netns_of("custom"), "getent", "hosts", "kube-dns").stdout.split()
    assert custom == ["10.96.0.10", "kube-dns.kube-system.svc.cluster.local"]  # its own search path


def test_the_queries_go_through_kube_proxys_dnat_to_a_coredns_pod(cluster):
    rules = in_netns(f"{CLUSTER}.node.node-1", "iptables-save", "-t", "nat").stdout
    assert '"kube-system/kube-dns:dns cluster IP"' in rules and "-d 10.96.0.10/32 -p udp" in rules
    coredns = [p["status"]["podIP"] for p in
               cluster.json("get", "pods", "-n", "kube-system", "--name", CLUSTER)["items"]]
    assert all(f"--to-destination {ip}:53" in rules for ip in coredns)


def test_verify_resolves_every_service_from_every_node_and_passes_with_the_coredns_pods(cluster):
    result = cluster.run("verify", "--name", CLUSTER, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(cluster.run("verify", "--name", CLUSTER, "-o", "json").stdout)
    assert report["passed"] and report["dnsSkipped"] is None
    names = {(c["from"], c["to"]) for c in report["checks"] if c["rule"] == "dns-names"}
    clients = {source for source, _ in names}
    assert len(clients) == 2 and not any(c.startswith("kube-system/") for c in clients)  # one pod per node
    assert {target for _, target in names} == {"web.default.svc.cluster.local", "db.default.svc.cluster.local",
                                                 "kube-dns.kube-system.svc.cluster.local"}
    assert sum(c["rule"] == "dns-nxdomain" for c in report["checks"]) == 2
    assert "(e) every Service name resolves, from a pod on every node" in result.stdout
    assert f'{len(report["checks"])} checks over TCP, UDP, ICMP and DNS' in result.stdout.splitlines()[0]


def test_records_follow_a_change_within_a_second(cluster, tmp_path):
    late = write_manifest(str(tmp_path), "late.yaml", [
        service("late", {"app": "web"}, [{"name": "http", "port": 80, "targetPort": "http"}])])
    cluster.run("apply", "-f", late, "--name", CLUSTER)
    applied = time.monotonic()
    ip = cluster_ip(cluster, "late")
    while short("client-2", "late.default.svc.cluster.local") != [ip]:
        assert time.monotonic() - applied < 1.0, "the new Service's name did not resolve within a second"
        time.sleep(0.05)
    pods = cluster.pods(CLUSTER)
    cluster.run("delete", "pod", "db-1", "--name", CLUSTER)
    deleted = time.monotonic()
    while short("client-1", "db.default.svc.cluster.local") != [pods["db-0"]["status"]["podIP"]]:
        assert time.monotonic() - deleted < 1.0, "the deleted endpoint was still answered after a second"
        time.sleep(0.05)
    cluster.run("delete", "svc", "late", "--name", CLUSTER)
    assert "status: NXDOMAIN" in dig("client-2", "late.default.svc.cluster.local").stdout


def test_a_killed_agent_answers_names_again_after_reconcile(cluster):
    from overlaynet.agent.client import find_agent_pids

    pids = find_agent_pids(CLUSTER, os.path.join(cluster.state_dir, f"{CLUSTER}.sock"))
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)
    assert "no servers could be reached" in dig("client-1", "web.default.svc.cluster.local").stdout
    cluster.run("reconcile", "--name", CLUSTER)
    assert short("client-1", "web.default.svc.cluster.local") == [cluster_ip(cluster, "web")]


def test_in_routed_mode_a_name_resolves_and_down_leaves_no_etc_netns_entry():
    state = short_state_dir()
    cli = Cli(state)
    try:
        cli.run("up", "--name", ROUTED, "--nodes", "2", "--cni", "calico")
        cli.run("apply", "-f", write_manifest(state, "c.yaml", [pod("client", nodeName="node-2")]), "--name", ROUTED)
        hosts = in_netns(netns_of("client", cluster=ROUTED), "getent", "hosts", "kube-dns.kube-system").stdout
        assert hosts.split() == ["10.96.0.10", "kube-dns.kube-system.svc.cluster.local"]
        assert os.path.exists(f"/etc/netns/{netns_of('client', cluster=ROUTED)}/resolv.conf")
    finally:
        cli.down_quietly(ROUTED)
        shutil.rmtree(state, ignore_errors=True)
    assert not [n for n in os.listdir("/etc/netns") if n.startswith(f"{ROUTED}.")] if os.path.isdir("/etc/netns") \
        else True
