"""doctor, graph and capture run for real: the doctor's probes leave nothing behind, the graph
of a live cluster turns red where a kernel object was removed by hand, and capture decodes the
VXLAN (or plain routed) packets a real ping sends."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import pytest
from scapy.all import VXLAN, rdpcap

from overlaynet.kernel import netns
from tests.netns.clusters import REPO, Cli, in_netns, pod, short_state_dir, write_manifest

FLANNEL, CALICO = "tools-f", "tools-c"


@pytest.fixture
def cli():
    state = short_state_dir()
    instance = Cli(state)
    yield instance
    for name in (FLANNEL, CALICO):
        instance.down_quietly(name)
    shutil.rmtree(state, ignore_errors=True)


def two_pods(cli: Cli, cluster: str, tmp_path) -> tuple[str, str]:
    cli.run("apply", "-f", write_manifest(str(tmp_path), "p.yaml", [
        pod("left", nodeName="node-1"), pod("right", nodeName="node-2")]), "--name", cluster)
    pods = cli.pods(cluster)
    return pods["left"]["status"]["podIP"], pods["right"]["status"]["podIP"]


def start_capture(cli: Cli, *args: str) -> subprocess.Popen:
    """``overlaynet capture`` in the background, returned once it says it listens."""
    process = subprocess.Popen([sys.executable, "-m", "overlaynet", "capture", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=cli.env, cwd=REPO)
    first = process.stderr.readline()
    assert first.startswith("Capturing on "), first + process.stderr.read()
    return process


def test_doctor_passes_here_and_its_probe_namespace_is_gone(cli):
    before = set(netns.list_names())
    result = cli.run("doctor", "-o", "json")
    report = json.loads(result.stdout)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert report["passed"] and all(statuses[f] == "ok" for f in ("root", "netns", "veth", "bridge", "vxlan",
                                                                  "nf_tables"))
    assert not [n for n in set(netns.list_names()) - before if n.startswith("overlaynet-doctor-")]
    text = cli.run("doctor").stdout
    assert "✓ vxlan" in text and "checks" in text.splitlines()[-1]


def test_doctor_without_capabilities_fails_on_root_with_the_fix(cli):
    result = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-m", "overlaynet",
                             "doctor"], capture_output=True, text=True, env=cli.env, cwd=REPO, timeout=60, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "✗ root" in result.stdout and "missing CAP_SYS_ADMIN and CAP_NET_ADMIN" in result.stdout
    assert "fix: sudo overlaynet doctor" in result.stdout


def test_graph_of_a_flannel_cluster_turns_red_where_an_fdb_entry_went(cli, tmp_path):
    cli.run("up", "--name", FLANNEL, "--nodes", "2", "--no-dns")
    left, right = two_pods(cli, FLANNEL, tmp_path)
    text = cli.run("graph", "--name", FLANNEL).stdout
    assert "pod left" in text and left in text and right in text
    assert "flannel.1 (VXLAN, VNI 1, UDP 8472)" in text and "encapsulated to 172.20.0.12" in text
    assert text.endswith("no problems found\n")

    ns = f"{FLANNEL}.node.node-1"
    entry = next(line for line in in_netns(ns, "bridge", "fdb", "show", "dev", "flannel.1").stdout.splitlines()
                 if "dst 172.20.0.12" in line)
    mac = entry.split()[0]
    assert in_netns(ns, "bridge", "fdb", "del", mac, "dev", "flannel.1", "dst", "172.20.0.12").returncode == 0
    broken = cli.run("graph", "--name", FLANNEL).stdout
    assert f"✗ no FDB entry for {mac} on flannel.1 (bridge fdb)" in broken and "1 problem found" in broken
    assert json.loads(cli.run("graph", "--name", FLANNEL, "-o", "json").stdout)["problems"] == [
        f"node-1 -> node-2 (10.244.1.0/24): no FDB entry for {mac} on flannel.1 (bridge fdb)"]

    svg, png = tmp_path / "g.svg", tmp_path / "g.png"
    written = cli.run("graph", "--name", FLANNEL, "--file", str(svg)).stdout
    assert written.startswith(f"wrote {svg} (svg): 2 nodes, 2 pods, 1 problems")
    assert "<svg" in svg.read_text() and "no FDB entry" in svg.read_text()
    cli.run("graph", "--name", FLANNEL, "-o", "png", "--file", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_capture_on_a_node_decodes_vxlan_and_keeps_the_pcap(cli, tmp_path):
    cli.run("up", "--name", FLANNEL, "--nodes", "2")
    left, right = two_pods(cli, FLANNEL, tmp_path)
    pcap = tmp_path / "vxlan.pcap"
    capture = start_capture(cli, "node/node-1", "--name", FLANNEL, "--filter", "udp port 8472", "--count", "2",
                            "--timeout", "20", "-w", str(pcap))
    assert in_netns(f"{FLANNEL}.pod.default.left", "ping", "-c1", "-W2", right).returncode == 0
    out, err = capture.communicate(timeout=30)
    assert capture.returncode == 0, err
    assert f"VXLAN VNI 1: ICMP {left} → {right}  echo-request" in out
    assert f"VXLAN VNI 1: ICMP {right} → {left}  echo-reply" in out
    assert "outer IPv4      172.20.0.11 → 172.20.0.12" in out and "outer UDP" in out and "→ 8472 (VXLAN)" in out
    assert f"inner IPv4      {left} → {right}" in out
    assert "2 packets in" in err and f"kept in {pcap}" in err
    assert [p[VXLAN].vni for p in rdpcap(str(pcap))] == [1, 1]

    # Ctrl-C (SIGINT) right after the packets: what tcpdump had is decoded, none lost in an open block
    endless = start_capture(cli, "underlay", "--name", FLANNEL, "--count", "0", "-o", "json")
    assert in_netns(f"{FLANNEL}.pod.default.left", "ping", "-c1", "-W2", right).returncode == 0
    endless.send_signal(signal.SIGINT)
    out, err = endless.communicate(timeout=30)
    summaries = [p["summary"] for p in json.loads(out)["packets"]]
    assert f"VXLAN VNI 1: ICMP {left} → {right}  echo-request id" in " ".join(summaries), err

    quiet = cli.run("capture", "underlay", "--name", FLANNEL, "--filter", "tcp port 9", "--timeout", "1")
    assert "No packets captured on the underlay, underlay0" in quiet.stderr and quiet.stdout == ""
    missing = cli.run("capture", "left", "--name", FLANNEL, "-i", "eth7", check=False)
    assert missing.returncode == 2 and 'pod left has no interface "eth7" (it has: lo, eth0)' in missing.stderr


def test_routed_mode_graph_shows_routes_and_capture_plain_ip(cli, tmp_path):
    cli.run("up", "--name", CALICO, "--nodes", "2", "--cni", "calico")
    left, right = two_pods(cli, CALICO, tmp_path)
    text = cli.run("graph", "--name", CALICO).stdout
    assert "pods routed by the node (a /32 route each, no bridge)" in text and "via 172.20.0.12 dev eth0" in text
    assert text.endswith("no problems found\n")

    capture = start_capture(cli, "node/node-2", "--name", CALICO, "--filter", "icmp", "--count", "2",
                            "--timeout", "20")
    assert in_netns(f"{CALICO}.pod.default.left", "ping", "-c1", "-W2", right).returncode == 0
    out, err = capture.communicate(timeout=30)
    assert f"ICMP {left} → {right}  echo-request" in out and "VXLAN" not in out, out + err

    route = next(line for line in in_netns(f"{CALICO}.node.node-1", "ip", "route").stdout.splitlines()
                 if "via 172.20.0.12" in line)
    block = route.split()[0]
    assert in_netns(f"{CALICO}.node.node-1", "ip", "route", "del", block).returncode == 0
    broken = cli.run("graph", "--name", CALICO).stdout
    assert f"✗ no route to {block}" in broken
