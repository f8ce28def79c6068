"""Cluster lifecycle on real namespaces: nodes joining and leaving, two clusters side by side,
teardown after kill -9, and a VXLAN capture decoded with scapy."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import agent_processes
from tests.netns.clusters import Cli, deployment, in_netns, namespaces_of, pod, short_state_dir, write_manifest


@pytest.fixture
def cli():
    state = short_state_dir()
    instance = Cli(state)
    yield instance
    for name in ("lc", "lc2", "crash"):
        instance.down_quietly(name)
    shutil.rmtree(state, ignore_errors=True)


def test_nodes_join_and_leave_with_their_routes(cli, tmp_path):
    cli.run("up", "--name", "lc", "--nodes", "2")
    manifest = write_manifest(str(tmp_path), "app.yaml", [
        deployment("app", 3), pod("zoned", nodeSelector={"zone": "z"})])
    cli.run("apply", "-f", manifest, "--name", "lc")
    assert cli.pods("lc")["zoned"]["status"]["reason"] == "Unschedulable"
    assert "didn't match Pod's node affinity/selector" in cli.pods("lc")["zoned"]["status"]["message"]

    cli.run("add", "node", "node-3", "--label", "zone=z", "--name", "lc")
    nodes = {n["metadata"]["name"]: n for n in cli.json("get", "nodes", "--name", "lc")["items"]}
    assert nodes["node-3"]["spec"]["podCIDR"] == "10.244.2.0/24"
    for peer in ("node-1", "node-2"):
        assert "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink" in in_netns(f"lc.node.{peer}", "ip", "route").stdout
    zoned = cli.pods("lc")["zoned"]
    assert zoned["status"]["phase"] == "Running" and zoned["spec"]["nodeName"] == "node-3"
    source = next(p for n, p in cli.pods("lc").items() if n.startswith("app-"))
    ping = in_netns(f"lc.pod.default.{source['metadata']['name']}", "ping", "-c1", "-W2", zoned["status"]["podIP"])
    assert ping.returncode == 0, ping.stdout

    cli.run("delete", "node", "node-3", "--name", "lc")
    assert "lc.node.node-3" not in namespaces_of("lc")
    assert "lc.pod.default.zoned" not in namespaces_of("lc")
    for peer in ("node-1", "node-2"):
        ns = f"lc.node.{peer}"
        assert "10.244.2.0" not in in_netns(ns, "ip", "route").stdout
        assert "10.244.2.0" not in in_netns(ns, "ip", "neigh", "show", "dev", "flannel.1").stdout
        assert "172.20.0.13" not in in_netns(ns, "bridge", "fdb", "show", "dev", "flannel.1").stdout
    pods = cli.pods("lc")
    assert "zoned" not in pods and sum(1 for n in pods if n.startswith("app-")) == 3
    assert all(p["spec"]["nodeName"] in ("node-1", "node-2") for p in pods.values())
    assert cli.run("verify", "--name", "lc", check=False).returncode == 0


def test_two_clusters_side_by_side(cli, tmp_path):
    cli.run("up", "--name", "lc", "--nodes", "2")
    cli.run("up", "--name", "lc2", "--nodes", "2")
    manifest = write_manifest(str(tmp_path), "app.yaml", [deployment("app", 2)])
    for name in ("lc", "lc2"):
        cli.run("apply", "-f", manifest, "--name", name)
    assert "several clusters exist (lc, lc2)" in cli.run("get", "nodes", check=False).stderr
    cli.run("down", "--name", "lc")
    assert namespaces_of("lc") == [] and len(namespaces_of("lc2")) == 2 + 2 + 2 + 2  # underlay, external, 2 nodes, 2 pods, 2 CoreDNS
    assert cli.run("verify", "--name", "lc2", check=False).returncode == 0


def test_down_after_kill_9_mid_up_removes_everything(cli):
    before = agent_processes()
    process = subprocess.Popen([sys.executable, "-m", "overlaynet", "up", "--name", "crash", "--nodes", "40",
                                "--node-network", "172.21.0.0/24"], env=cli.env, cwd=cli.env["PYTHONPATH"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(namespaces_of("crash")) < 10:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert namespaces_of("crash"), "the kill came too late to test anything"
    result = cli.run("down", "--name", "crash")
    assert "removed" in result.stdout
    assert namespaces_of("crash") == []
    assert agent_processes() - before == set()
    assert "crash" not in cli.run("get", "clusters").stdout


def test_down_after_kill_9_of_the_agent(cli, tmp_path):
    cli.run("up", "--name", "lc", "--nodes", "1")
    cli.run("apply", "-f", write_manifest(str(tmp_path), "p.yaml", [pod("solo")]), "--name", "lc")
    for entry in agent_processes():
        if "--cluster lc " in entry:
            os.kill(int(entry.split(":")[0]), signal.SIGKILL)
    cli.run("down", "--name", "lc")
    assert namespaces_of("lc") == []


def test_vxlan_capture_shows_port_8472_vni_1_and_pod_addresses(cli, tmp_path):
    from scapy.all import IP, UDP, VXLAN, rdpcap

    cli.run("up", "--name", "lc", "--nodes", "2")
    cli.run("apply", "-f", write_manifest(str(tmp_path), "p.yaml", [
        pod("left", nodeName="node-1"), pod("right", nodeName="node-2")]), "--name", "lc")
    pods = cli.pods("lc")
    left, right = pods["left"]["status"]["podIP"], pods["right"]["status"]["podIP"]
    capture = str(tmp_path / "eth0.pcap")
    tcpdump = subprocess.Popen(["ip", "netns", "exec", "lc.node.node-1", "tcpdump", "-i", "eth0", "-w", capture,
                                "-U", "-c", "4", "udp port 8472"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # tcpdump prints "listening" once its socket is open; give it a moment
    assert in_netns("lc.pod.default.left", "ping", "-c2", "-W2", right).returncode == 0
    tcpdump.wait(timeout=10)
    packets = [p for p in rdpcap(capture) if p.haslayer(VXLAN)]
    assert packets, "no VXLAN packet captured"
    outer = packets[0]
    assert outer[UDP].dport == 8472 and outer[VXLAN].vni == 1
    assert {outer[IP].src, outer[IP].dst} == {"172.20.0.11", "172.20.0.12"}
    inner = outer[VXLAN].payload
    assert {inner[IP].src, inner[IP].dst} == {left, right}
