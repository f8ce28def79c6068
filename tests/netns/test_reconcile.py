"""overlaynet reconcile on real clusters: what is deleted or changed behind overlaynet's back —
a peer route, a neighbour, an FDB entry, cni0's address, a pod's default route, kube-proxy's
rules, the agent itself, a Calico block route or proxy ARP — is found, put back and named,
real traffic flows again, and a second pass finds nothing; a deleted pod namespace is reported,
not papered over."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.netns.clusters import Cli, delete_vxlan_entries, in_netns, short_state_dir
from tests.netns.test_trace_fault import bring_up, pings, take_down

FLANNEL = "recfl"
CALICO = "recca"


@pytest.fixture(scope="module")
def flannel():
    cli = Cli(short_state_dir())
    try:
        yield cli, bring_up(cli, FLANNEL)
    finally:
        take_down(cli, FLANNEL)


@pytest.fixture(scope="module")
def calico():
    cli = Cli(short_state_dir())
    try:
        yield cli, bring_up(cli, CALICO, "--cni", "calico")
    finally:
        take_down(cli, CALICO)


def reconcile(cli: Cli, cluster: str, check: bool = True) -> tuple[int, list[dict]]:
    result = cli.run("reconcile", "--name", cluster, "-o", "json", check=check)
    return result.returncode, json.loads(result.stdout)["repairs"]


def ip(netns: str, *argv: str) -> None:
    subprocess.run(["ip", "-n", netns, *argv], check=True, capture_output=True)


def curl_service(cluster: str, source: str, address: str) -> bool:
    result = in_netns(f"{cluster}.pod.default.{source}", "curl", "-s", "-m", "2", f"http://{address}/hostname")
    return result.returncode == 0 and result.stdout.strip() in ("a", "b")


def test_a_healthy_cluster_has_nothing_to_repair(flannel):
    cli, _ = flannel
    assert reconcile(cli, FLANNEL) == (0, [])
    assert "nothing to repair" in cli.run("reconcile", "--name", FLANNEL).stdout


def test_vxlan_drift_is_put_back_and_named(flannel):
    cli, ips = flannel
    node2 = f"{FLANNEL}.node.node-2"
    _, peer_cidr, vtep, fdb = delete_vxlan_entries(cli, FLANNEL)
    ip(node2, "addr", "flush", "dev", "cni0")
    ip(f"{FLANNEL}.pod.default.b", "route", "del", "default")
    assert not pings(FLANNEL, "a", ips["b"])

    code, repairs = reconcile(cli, FLANNEL)
    assert code == 0 and all(r["repaired"] for r in repairs)
    said = {(r["where"], r["what"]) for r in repairs}
    assert said == {
        ("node/node-1", f"route {peer_cidr} via {vtep} dev flannel.1 onlink: put back"),
        ("node/node-1", f"neighbour {vtep} lladdr {fdb[0]} dev flannel.1: put back"),
        ("node/node-1", f"fdb {fdb[0]} dev flannel.1 dst {fdb[fdb.index('dst') + 1]}: put back"),
        ("node/node-2", f"address {peer_cidr.rsplit('.', 1)[0]}.1/24 dev cni0: put back"),
        ("pod/default/b", f"route 0.0.0.0/0 via {peer_cidr.rsplit('.', 1)[0]}.1 dev eth0: put back"),
    }, said
    assert pings(FLANNEL, "a", ips["b"]) and pings(FLANNEL, "b", ips["a"])
    assert reconcile(cli, FLANNEL) == (0, [])


def test_kube_proxy_rules_and_a_killed_agent_come_back(flannel):
    cli, _ = flannel
    node1 = f"{FLANNEL}.node.node-1"
    cluster_ip = cli.json("get", "svc", "--name", FLANNEL)["items"]
    web = next(s for s in cluster_ip if s["metadata"]["name"] == "web")["spec"]["clusterIP"]
    subprocess.run(["ip", "netns", "exec", node1, "iptables", "-t", "nat", "-F", "KUBE-SERVICES"], check=True)
    assert not curl_service(FLANNEL, "a", web)
    agent = subprocess.run(["pgrep", "-f", f"overlaynet.agent --cluster {FLANNEL} "], check=True, capture_output=True,
                           text=True)
    for pid in agent.stdout.split():
        os.kill(int(pid), signal.SIGKILL)

    code, repairs = reconcile(cli, FLANNEL)
    assert code == 0
    where = [r["where"] for r in repairs]
    assert where[0] == "agent" and "started again" in repairs[0]["what"]
    assert {"pod/default/a", "pod/default/b", "node/node-1", "node/node-2"} <= set(where)
    proxy = [r for r in repairs if "kube-proxy wrote back" in r["what"]]
    assert [r["where"] for r in proxy] == ["node/node-1"] and f"-d {web}/32" in proxy[0]["what"]
    assert curl_service(FLANNEL, "a", web)
    assert reconcile(cli, FLANNEL) == (0, [])


def test_a_deleted_pod_namespace_is_reported_not_repaired(flannel):
    cli, _ = flannel
    subprocess.run(["ip", "netns", "del", f"{FLANNEL}.pod.default.a"], check=True)
    code, repairs = reconcile(cli, FLANNEL, check=False)
    assert code == 1
    assert [(r["where"], r["repaired"]) for r in repairs] == [("pod/default/a", False)]
    assert "`overlaynet delete pod a`" in repairs[0]["what"]
    human = cli.run("reconcile", "--name", FLANNEL, check=False)
    assert human.returncode == 1 and "NOT FIXED  pod/default/a" in human.stdout


def test_calico_routes_and_proxy_arp_are_put_back(calico):
    cli, ips = calico
    node1 = f"{CALICO}.node.node-1"
    routes = subprocess.run(["ip", "-n", node1, "route"], capture_output=True, text=True, check=True).stdout
    blackhole = next(line.split()[1] for line in routes.splitlines() if line.startswith("blackhole"))
    peer = next(line.split()[0] for line in routes.splitlines() if "proto 80" in line and " via " in line)
    pod_route = next(line.split() for line in routes.splitlines() if line.startswith(ips["a"] + " "))
    veth = pod_route[pod_route.index("dev") + 1]
    ip(node1, "route", "del", "blackhole", blackhole)
    ip(node1, "route", "del", peer)
    ip(node1, "route", "del", ips["a"])
    subprocess.run(["ip", "netns", "exec", node1, "sysctl", "-qw", f"net.ipv4.conf.{veth}.proxy_arp=0"], check=True)
    assert not pings(CALICO, "b", ips["a"])

    code, repairs = reconcile(cli, CALICO)
    assert code == 0
    said = sorted((r["where"], r["what"].split(" ")[0], r["what"].split(" ")[1]) for r in repairs)
    assert said == sorted([("node/node-1", "route", "blackhole"), ("node/node-1", "route", peer),
                           ("pod/default/a", "route", f"{ips['a']}/32"), ("pod/default/a", "sysctl",
                                                                       f"net.ipv4.conf.{veth}.proxy_arp=1:")]), said
    assert pings(CALICO, "b", ips["a"]) and pings(CALICO, "a", ips["b"])
    assert reconcile(cli, CALICO) == (0, [])
