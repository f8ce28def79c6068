"""Clusters whose pods are wired through the CNI exec protocol, driven through the CLI:
the routed (Calico-like) mode with and without BGP, a conflist of the reference plugins
instead of ours, and plugins that fail."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest

from tests.conftest import agent_processes
from tests.netns.clusters import Cli, deployment, in_netns, namespaces_of, pod, short_state_dir, write_manifest


@pytest.fixture
def cli():
    state = short_state_dir()
    instance = Cli(state)
    yield instance
    for name in ("rt", "bgp", "ref", "bad"):
        instance.down_quietly(name)
    shutil.rmtree(state, ignore_errors=True)


def routes(cluster: str, node: str) -> str:
    return in_netns(f"{cluster}.node.{node}", "ip", "route").stdout


def test_routed_mode_blocks_second_block_and_borrowing(cli, tmp_path):
    # A pool of four /28 blocks: node-2 claims one, node-1 the other three, then borrows.
    cli.run("up", "--name", "rt", "--cni", "calico", "--nodes", "2", "--no-dns", "--cluster-cidr", "10.244.0.0/26",
            "--node-cidr-mask-size", "28", "--block-size", "28")
    cli.run("apply", "-f", write_manifest(str(tmp_path), "one.yaml", [pod("lone", nodeName="node-2")]), "--name", "rt")
    cli.run("apply", "-f", write_manifest(str(tmp_path), "many.yaml",
                                          [deployment("many", 56, nodeName="node-1")]), "--name", "rt")
    pods = cli.pods("rt")
    assert all(p["status"]["phase"] == "Running" for p in pods.values())
    wide = cli.run("get", "nodes", "-o", "wide", "--name", "rt").stdout
    assert "BLOCKS" in wide.splitlines()[0]
    node1 = routes("rt", "node-1")
    assert node1.count("blackhole") == 3 and "proto 80" in node1
    lone = pods["lone"]["status"]["podIP"]
    node2 = routes("rt", "node-2")
    assert f"{lone} dev cali" in node2
    # node-1 filled three blocks (48 addresses) and borrowed the other 8 from node-2's block:
    # node-2 routes each of them back to node-1 with a /32 that beats its own blackhole.
    borrowed = [line for line in node2.splitlines() if " via 172.20.0.11 " in line and "/" not in line.split()[0]]
    assert len(borrowed) == 8, node2
    assert cli.run("verify", "--name", "rt", check=False).returncode == 0


def test_routed_pod_wiring_is_calicos(cli, tmp_path):
    cli.run("up", "--name", "rt", "--cni", "routed", "--nodes", "2")
    cli.run("apply", "-f", write_manifest(str(tmp_path), "p.yaml", [pod("a", nodeName="node-1"),
                                                                      pod("b", nodeName="node-2")]), "--name", "rt")
    pods = cli.pods("rt")
    ns = "rt.pod.default.a"
    assert f"{pods['a']['status']['podIP']}/32" in in_netns(ns, "ip", "-4", "addr", "show", "eth0").stdout
    pod_routes = in_netns(ns, "ip", "route").stdout
    assert "default via 169.254.1.1 dev eth0" in pod_routes and "169.254.1.1 dev eth0 scope link" in pod_routes
    import hashlib

    veth = "cali" + hashlib.sha1(b"default.a").hexdigest()[:11]
    link = in_netns("rt.node.node-1", "ip", "link", "show", veth).stdout
    assert "ee:ee:ee:ee:ee:ee" in link
    assert in_netns("rt.node.node-1", "cat", f"/proc/sys/net/ipv4/conf/{veth}/proxy_arp").stdout.strip() == "1"
    assert in_netns(ns, "ping", "-c1", "-W2", pods["b"]["status"]["podIP"]).returncode == 0
    assert "169.254.1.1 dev eth0 lladdr ee:ee:ee:ee:ee:ee" in in_netns(ns, "ip", "neigh").stdout
    text = cli.run("describe", "pod", "a", "--name", "rt").stdout
    assert '"sandbox": "/run/netns/rt.pod.default.a"' in text and veth in text
    conflist = cli.run("describe", "node", "node-1", "--name", "rt").stdout
    assert '"type": "overlaynet-calico"' in conflist and '"mode": "blocks"' in conflist


def test_bgp_mesh_carries_the_block_routes(cli, tmp_path):
    up = cli.run("up", "--name", "bgp", "--cni", "calico", "--bgp", "--nodes", "3").stdout
    assert "BGP sessions Established" in up
    cli.run("apply", "-f", write_manifest(str(tmp_path), "d.yaml", [deployment("web", 6)]), "--name", "bgp")
    node1 = routes("bgp", "node-1")
    assert "proto bird" in node1 and "blackhole" in node1 and "proto 80" not in node1
    assert node1.count("via 172.20.0.1") >= 2  # .12 and .13: peer blocks learned over BGP
    described = cli.run("describe", "node", "node-1", "--name", "bgp").stdout
    assert described.count("Established") == 2 and "Mesh_172_20_0_12" in described
    assert cli.run("verify", "--name", "bgp", check=False).returncode == 0
    cli.run("down", "--name", "bgp")
    assert not [p for p in subprocess.run(["pgrep", "-a", "bird"], capture_output=True, text=True).stdout.splitlines()
                if "defunct" not in p and "bgp.bird" in p]


def test_reference_bridge_and_host_local_conflist(cli, tmp_path):
    conflist = tmp_path / "ref.conflist"
    conflist.write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "refnet",
        "plugins": [{"type": "bridge", "bridge": "br-ref", "isGateway": True, "ipMasq": False,
                     "hairpinMode": True,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]],
                              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(tmp_path / "host-local")}}]}))
    cli.run("up", "--name", "ref", "--nodes", "1", "--no-dns", "--cni-conflist", str(conflist))
    cli.run("apply", "-f", write_manifest(str(tmp_path), "d.yaml", [deployment("web", 4)]), "--name", "ref")
    pods = cli.pods("ref")
    assert sorted(p["status"]["podIP"] for p in pods.values()) == [f"10.244.0.{i}" for i in (2, 3, 4, 5)]
    assert "br-ref" in in_netns("ref.node.node-1", "ip", "link").stdout
    assert cli.run("verify", "--name", "ref", check=False).returncode == 0


def test_plugin_not_on_the_path_leaves_the_pod_creating(cli, tmp_path):
    conflist = tmp_path / "missing.conflist"
    conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": "ghostnet",
                                    "plugins": [{"type": "no-such-plugin"}]}))
    cli.run("up", "--name", "bad", "--nodes", "1", "--cni-conflist", str(conflist))
    cli.run("apply", "-f", write_manifest(str(tmp_path), "p.yaml", [pod("stuck")]), "--name", "bad")
    stuck = cli.pods("bad")["stuck"]
    assert stuck["status"]["phase"] == "Pending" and stuck["status"]["reason"] == "ContainerCreating"
    assert "no-such-plugin" in stuck["status"]["message"] and "/usr/lib/cni" in stuck["status"]["message"]
    assert "ContainerCreating" in cli.run("get", "pods", "--name", "bad").stdout
    assert "bad.pod.default.stuck" not in namespaces_of("bad")
    cli.run("delete", "pod", "stuck", "--name", "bad")


@pytest.mark.parametrize("behaviour", ["crash", "garbage"])
def test_a_failing_plugin_is_reported_and_nothing_leaks(cli, tmp_path, behaviour):
    plugins = tmp_path / "bin"
    plugins.mkdir()
    script = plugins / "flaky"
    body = ("import sys\nsys.stderr.write('flaky: segmentation fault in the imaginary driver\\n')\nsys.exit(139)\n"
            if behaviour == "crash" else "print('<<<this is not json>>>')\n")
    script.write_text("#!/usr/bin/env python3\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    conflist = tmp_path / "flaky.conflist"
    conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": "flakynet", "plugins": [{"type": "flaky"}]}))
    cli.env["OVERLAYNET_CNI_PATH"] = str(plugins)
    cli.run("up", "--name", "bad", "--nodes", "1", "--cni-conflist", str(conflist))
    cli.run("apply", "-f", write_manifest(str(tmp_path), "p.yaml", [pod("victim")]), "--name", "bad")
    victim = cli.pods("bad")["victim"]
    assert victim["status"]["reason"] == "ContainerCreating"
    message = victim["status"]["message"]
    assert "flaky" in message and ("segmentation fault" in message if behaviour == "crash" else "not json" in message)
    assert "bad.pod.default.victim" not in namespaces_of("bad")
    assert in_netns("bad.node.node-1", "ip", "-o", "link").stdout.count("veth") == 0


def test_bgp_without_bird_is_refused_before_anything_exists(cli, monkeypatch, capsys):
    from overlaynet.cli import main
    from overlaynet.kernel import bird

    before = agent_processes()
    monkeypatch.setenv("OVERLAYNET_STATE_DIR", cli.state_dir)
    monkeypatch.setattr(bird, "BIRD", "/nonexistent/bird")
    assert main(["up", "--name", "bgp", "--cni", "calico", "--bgp", "--nodes", "2"]) != 0
    error = capsys.readouterr().err
    assert "BGP needs BIRD 2 (Debian package bird2): /nonexistent/bird not found" in error
    assert namespaces_of("bgp") == [] and agent_processes() == before
    assert not os.path.exists(os.path.join(cli.state_dir, "bgp.bird"))
