"""A mode registered in the tests only, end to end: ``tests.modes.hostgw`` (Flannel's host-gw)
brings up a real cluster through the CLI, its pods on two nodes reach each other over plain
routes via the node IPs, and ``verify`` passes, with nothing in ``overlaynet`` knowing of it.
The CLI, the agent and the mode's CNI plugin each find the mode by the import path the
Cluster document names; the plugin is the mode's own three-line launcher on
``$OVERLAYNET_CNI_PATH``."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.modes import hostgw
from tests.netns.clusters import Cli, in_netns, namespaces_of, pod, short_state_dir, write_manifest

CLUSTER = "hgw"


@pytest.fixture
def cli(tmp_path):
    state = short_state_dir()
    plugins = tmp_path / "bin"
    plugins.mkdir()
    hostgw.write_plugin(str(plugins))
    instance = Cli(state)
    instance.env["OVERLAYNET_CNI_PATH"] = str(plugins)
    yield instance
    instance.down_quietly(CLUSTER)
    shutil.rmtree(state, ignore_errors=True)


def test_a_test_only_host_gw_mode_wires_a_working_cluster(cli, tmp_path):
    up = cli.run("up", "--name", CLUSTER, "--cni", "tests.modes.hostgw", "--nodes", "2", "--no-dns").stdout
    assert f"cni tests.modes.hostgw ({hostgw.MODE.description})" in up
    node1 = in_netns(f"{CLUSTER}.node.node-1", "ip", "route").stdout
    node2 = in_netns(f"{CLUSTER}.node.node-2", "ip", "route").stdout
    assert "10.244.1.0/24 via 172.20.0.12 dev eth0" in node1, node1
    assert "10.244.0.0/24 via 172.20.0.11 dev eth0" in node2, node2
    assert "flannel.1" not in in_netns(f"{CLUSTER}.node.node-1", "ip", "link").stdout

    cli.run("apply", "-f", write_manifest(str(tmp_path), "pods.yaml", [pod("a", nodeName="node-1"),
                                                                        pod("b", nodeName="node-2")]),
            "--name", CLUSTER)
    pods = cli.pods(CLUSTER)
    assert {name: p["status"]["phase"] for name, p in pods.items()} == {"a": "Running", "b": "Running"}
    a, b = pods["a"]["status"]["podIP"], pods["b"]["status"]["podIP"]
    assert a.startswith("10.244.0.") and b.startswith("10.244.1.")
    assert in_netns(f"{CLUSTER}.pod.default.a", "ping", "-c1", "-W2", b).returncode == 0
    assert in_netns(f"{CLUSTER}.pod.default.b", "ping", "-c1", "-W2", a).returncode == 0
    assert "mtu 1500" in in_netns(f"{CLUSTER}.pod.default.a", "ip", "link", "show", "eth0").stdout

    described = cli.run("describe", "node", "node-1", "--name", CLUSTER).stdout
    assert '"type": "overlaynet-hostgw"' in described and "host-gw" in described
    wide = cli.run("get", "nodes", "-o", "wide", "--name", CLUSTER).stdout
    assert "POD-CIDR" in wide.splitlines()[0] and "tests.modes.hostgw" in wide
    with open(os.path.join(cli.state_dir, f"{CLUSTER}.agent.log")) as handle:
        agent_log = handle.read()
    assert "cni overlaynet-hostgw ADD" in agent_log  # the thin path: the agent found the mode too

    result = cli.run("verify", "--name", CLUSTER, "-o", "json", check=False)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["passed"], result.stdout
    cli.run("down", "--name", CLUSTER)
    assert namespaces_of(CLUSTER) == []
