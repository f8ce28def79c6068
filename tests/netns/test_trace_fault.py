"""overlaynet trace and overlaynet fault on real clusters: a trace names the DNAT choices and
the route the kernel takes; each fault breaks real traffic, `fault clear` repairs it, and
`down` after faults leaves nothing."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.netns.clusters import Cli, in_netns, namespaces_of, pod, short_state_dir, write_manifest

FLANNEL = "trflt"
CALICO = "trfbgp"


def service(name: str, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}], **spec}}


def web_pod(name: str, node: str) -> dict:
    document = pod(name, nodeName=node)
    document["metadata"]["labels"] = {"app": "web"}
    document["spec"]["containers"][0]["ports"] = [{"containerPort": 8080}]
    return document


def take_down(cli: Cli, cluster: str) -> None:
    """``down``, and the state directory removed only once the cluster is gone (a failed
    ``down`` leaves the records a later ``down`` needs)."""
    result = cli.run("down", "--name", cluster, check=False)
    if result.returncode == 0 or "does not exist" in result.stderr:
        shutil.rmtree(cli.state_dir, ignore_errors=True)


def bring_up(cli: Cli, cluster: str, *flags: str) -> dict[str, str]:
    cli.run("up", "--name", cluster, "--nodes", "2", *flags)
    manifest = write_manifest(cli.state_dir, f"{cluster}.yaml", [
        web_pod("a", "node-1"), web_pod("b", "node-2"), service("web"),
        service("web-np", type="NodePort")])
    cli.run("apply", "-f", manifest, "--name", cluster)
    return {name: record["status"]["podIP"] for name, record in cli.pods(cluster).items()}


@pytest.fixture(scope="module")
def flannel():
    cli = Cli(short_state_dir())
    try:
        ips = bring_up(cli, FLANNEL)
        yield cli, ips
    finally:
        take_down(cli, FLANNEL)


def pings(cluster: str, source: str, ip: str, *flags: str) -> bool:
    return in_netns(source if ".node." in source else f"{cluster}.pod.default.{source}",
                    "ping", "-c1", "-W1", *flags, ip).returncode == 0


def trace(cli: Cli, cluster: str, *args: str) -> dict:
    return cli.json("trace", *args, "--name", cluster)


def test_a_cluster_ip_traced_from_a_pod_names_each_dnat_choice_and_its_route(flannel):
    cli, ips = flannel
    cluster_ip = cli.json("get", "svc", "web", "--name", FLANNEL)["spec"]["clusterIP"]
    result = trace(cli, FLANNEL, "a", f"{cluster_ip}:80")
    outcomes = {o["destination"]: o for o in result["outcomes"]}
    assert set(outcomes) == {f"{ips['a']}:8080", f"{ips['b']}:8080"}
    assert all(o["probability"] == pytest.approx(0.5) for o in outcomes.values())
    remote = outcomes[f"{ips['b']}:8080"]
    assert [c["chain"] for c in remote["chains"]][:3] == ["PREROUTING", "KUBE-SERVICES", remote["chains"][2]["chain"]]
    assert remote["chains"][2]["chain"].startswith("KUBE-SVC-") and remote["chains"][3]["chain"].startswith("KUBE-SEP-")
    assert not remote["masquerade"]
    assert (remote["route"]["kind"], remote["route"]["nextNode"]) == ("vxlan", "node-2")
    assert "dev flannel.1 onlink" in remote["route"]["route"]
    local = outcomes[f"{ips['a']}:8080"]
    assert local["route"]["kind"] == "bridge" and local["masquerade"]  # a pod reaching itself: hairpin SNAT
    text = cli.run("trace", "a", f"{cluster_ip}:80", "--name", FLANNEL).stdout
    assert "50.0%" in text and "KUBE-SVC-" in text and "flannel.1 -> node-2" in text


def test_a_nodeport_from_the_external_client_is_masqueraded(flannel):
    cli, _ = flannel
    port = cli.json("get", "svc", "web-np", "--name", FLANNEL)["spec"]["ports"][0]["nodePort"]
    result = trace(cli, FLANNEL, "external", f"172.20.0.11:{port}")
    assert result["node"] == "node-1"
    assert all(o["masquerade"] and o["verdict"] == "DNAT" for o in result["outcomes"])
    assert "KUBE-NODEPORTS" in [c["chain"] for c in result["outcomes"][0]["chains"]]


def fault(cli: Cli, cluster: str, *args: str) -> str:
    out = cli.run("fault", *args, "--name", cluster).stdout
    return out.split(":", 1)[0]


def test_route_fdb_and_neigh_faults_break_pod_traffic_and_clear_repairs_it(flannel):
    cli, ips = flannel
    assert pings(FLANNEL, "a", ips["b"])
    peer_cidr = cli.json("get", "node", "node-2", "--name", FLANNEL)["spec"]["podCIDR"]
    for args, route_kind in ((("route", "node-1", peer_cidr), "gateway"), (("fdb", "node-1", "node-2"), "dropped"),
                             (("neigh", "node-1", "node-2"), "dropped")):
        fault_id = fault(cli, FLANNEL, *args)
        assert not pings(FLANNEL, "a", ips["b"]), args
        traced = trace(cli, FLANNEL, "a", ips["b"], "--proto", "icmp")
        assert traced["outcomes"][0]["route"]["kind"] == route_kind, (args, traced)
        listed = cli.json("fault", "list", "--name", FLANNEL)
        assert [f["id"] for f in listed] == [fault_id] and listed[0]["phase"] == "Active"
        cli.run("fault", "clear", fault_id, "--name", FLANNEL)
        assert pings(FLANNEL, "a", ips["b"]), args
    assert cli.json("fault", "list", "--name", FLANNEL) == []


def test_an_mtu_fault_drops_large_packets_and_passes_small_ones(flannel):
    cli, ips = flannel
    node = f"{FLANNEL}.node.node-1"
    assert pings(FLANNEL, node, ips["b"], "-M", "do", "-s", "1422")
    fault_id = fault(cli, FLANNEL, "mtu", "node-1", "--mtu", "1400")
    assert "mtu 1400" in in_netns(node, "ip", "link", "show", "flannel.1").stdout
    assert not pings(FLANNEL, "a", ips["b"], "-M", "do", "-s", "1422")
    assert not pings(FLANNEL, node, ips["b"], "-M", "do", "-s", "1422")
    assert pings(FLANNEL, "a", ips["b"], "-s", "56")
    cli.run("fault", "clear", fault_id, "--name", FLANNEL)
    assert "mtu 1450" in in_netns(node, "ip", "link", "show", "flannel.1").stdout
    assert pings(FLANNEL, node, ips["b"], "-M", "do", "-s", "1422")


def test_a_stray_masquerade_fails_verify_until_cleared(flannel):
    cli, _ = flannel
    fault_id = fault(cli, FLANNEL, "masquerade", "node-1")
    saved = in_netns(f"{FLANNEL}.node.node-1", "iptables-save", "-t", "nat").stdout
    assert f"overlaynet fault {fault_id}: stray MASQUERADE" in saved
    failed = cli.run("verify", "--name", FLANNEL, check=False)
    assert failed.returncode == 1 and "NAT" in failed.stdout
    cli.run("fault", "clear", "--all", "--name", FLANNEL)
    assert "stray MASQUERADE" not in in_netns(f"{FLANNEL}.node.node-1", "iptables-save", "-t", "nat").stdout
    cli.run("verify", "--name", FLANNEL)


def test_faults_that_do_not_apply_are_refused_naming_the_object(flannel):
    cli, _ = flannel
    for args, message in ((("route", "node-1", "10.9.0.0/24"), 'node "node-1": fault route: no planned route'),
                          (("bird", "node-1"), f'cluster "{FLANNEL}": fault bird: bgp is off'),
                          (("fdb", "node-1", "node-9"), 'node "node-9" not found'),
                          (("mtu", "node-7", "--mtu", "1400"), 'node "node-7" not found')):
        result = cli.run("fault", *args, "--name", FLANNEL, check=False)
        assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr, result
    assert cli.json("fault", "list", "--name", FLANNEL) == []


def test_down_after_faults_leaves_nothing():
    cli = Cli(short_state_dir())
    cluster = "trfdown"
    try:
        bring_up(cli, cluster)
        fault(cli, cluster, "masquerade", "node-1")
        fault(cli, cluster, "mtu", "node-2", "--mtu", "1300")
        fault(cli, cluster, "fdb", "node-1", "node-2")
        cli.run("down", "--name", cluster)
        assert namespaces_of(cluster) == []
        assert "No clusters found" in cli.run("get", "clusters").stderr
    finally:
        take_down(cli, cluster)


@pytest.mark.skipif(not os.access("/usr/sbin/bird", os.X_OK), reason="BIRD 2 is not installed")
def test_a_stopped_bird_withdraws_the_node_s_routes_until_cleared():
    cli = Cli(short_state_dir())
    try:
        ips = bring_up(cli, CALICO, "--cni", "calico", "--bgp")
        assert pings(CALICO, "a", ips["b"])
        traced = trace(cli, CALICO, "a", ips["b"], "--proto", "icmp")["outcomes"][0]["route"]
        assert (traced["kind"], traced["nextNode"]) == ("via-node", "node-2") and "proto bird" in traced["route"]
        fault_id = fault(cli, CALICO, "bird", "node-2")
        deadline = time.monotonic() + 10
        while pings(CALICO, "a", ips["b"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not pings(CALICO, "a", ips["b"])
        refused = cli.run("fault", "fdb", "node-1", "node-2", "--name", CALICO, check=False)
        assert refused.returncode == 2 and "cni calico plans no VXLAN FDB entry" in refused.stderr
        cli.run("fault", "clear", fault_id, "--name", CALICO)
        assert pings(CALICO, "a", ips["b"])
        cli.run("down", "--name", CALICO)
        assert namespaces_of(CALICO) == []
    finally:
        take_down(cli, CALICO)


def test_a_live_trace_shows_the_rules_the_kernel_matched_and_leaves_no_trace_rule(flannel):
    cli, ips = flannel
    cluster_ip = cli.json("get", "svc", "web", "--name", FLANNEL)["spec"]["clusterIP"]
    result = trace(cli, FLANNEL, "a", f"{cluster_ip}:80", "--live")
    chains = [(s["table"], s["chain"], s["verdict"]) for s in result["live"]]
    assert chains[0] == ("nat", "PREROUTING", "JUMP KUBE-SERVICES"), chains
    sep = next(s for s in result["live"] if s["chain"].startswith("KUBE-SEP-") and s["verdict"] == "ACCEPT")
    dnat = sep["rule"].rsplit(" ", 1)[1]
    assert dnat in (f"{ips['a']}:8080", f"{ips['b']}:8080")
    assert any(s["table"] == "filter" and s["chain"] == "FORWARD" for s in result["live"])
    assert result["route"]["kind"] in ("bridge", "vxlan")
    for node in ("node-1", "node-2"):
        assert "TRACE" not in in_netns(f"{FLANNEL}.node.{node}", "iptables-save", "-t", "raw").stdout


def test_a_fault_recorded_but_never_made_is_cleared_without_error(flannel):
    """What a crash between the record and the kernel change leaves: clear undoes nothing harmful."""
    from overlaynet.control.store import Store
    from overlaynet.tools import faults as planning

    cli, ips = flannel
    netns = f"{FLANNEL}.node.node-2"
    store = Store(cli.state_dir)
    try:
        stray = planning.plan_masquerade("node-2", netns, "10.244.0.0/16", "fault-99")
        store.put(FLANNEL, planning.fault_record("fault-99", stray, "2026-01-01T00:00:00Z"))
    finally:
        store.close()
    listed = cli.json("fault", "list", "--name", FLANNEL)
    assert [(f["id"], f["phase"]) for f in listed] == [("fault-99", "Injecting")]
    cli.run("fault", "clear", "fault-99", "--name", FLANNEL)
    assert cli.json("fault", "list", "--name", FLANNEL) == []
    assert pings(FLANNEL, "a", ips["b"])
