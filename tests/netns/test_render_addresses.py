"""``overlaynet render`` runs the real control plane over fakes: the addresses and placement it
works from are exactly those a live cluster gets from the same documents."""

from __future__ import annotations

import shutil

import pytest

from overlaynet.api.manifests import load_cluster, load_documents, parse_document
from overlaynet.control.offline import run_offline
from tests.netns.clusters import Cli, deployment, pod, short_state_dir, write_manifest


def addressing(pods: list[dict]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Each pod's node, and each node's pod addresses (a kubelet attaches pods in parallel, so
    which pod of a node gets which address may differ; the node's set may not)."""
    placed = {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in pods}
    addresses: dict[str, list[str]] = {}
    for p in pods:
        if p["status"].get("podIP"):
            addresses.setdefault(p["spec"]["nodeName"], []).append(p["status"]["podIP"])
    return placed, {node: sorted(ips) for node, ips in addresses.items()}


@pytest.mark.parametrize("cni", ["flannel", "calico"])
def test_render_addresses_are_the_live_clusters(cni):
    name = f"rdr{cni[0]}"
    state = short_state_dir()
    cli = Cli(state)
    cluster = write_manifest(state, "cluster.yaml", [{
        "apiVersion": "overlaynet.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": name},
        "spec": {"nodes": 3, "cni": cni, "nodeCIDRMaskSize": 28, "blockSize": 29}}])
    app = write_manifest(state, "app.yaml", [deployment("web", 9), pod("pinned", nodeName="node-2"),
                                             deployment("api", 4)])
    try:
        cli.run("up", "-f", cluster)
        cli.run("apply", "-f", app, "--name", name)
        live = addressing(list(cli.pods(name).values()))
        manifests = [parse_document(d, app, None, i) for i, d in enumerate(load_documents(app), 1)]
        with run_offline(load_cluster(cluster), manifests) as manager:
            rendered = addressing(manager.pods(name))
    finally:
        cli.down_quietly(name)
        shutil.rmtree(state, ignore_errors=True)
    assert rendered == live
    assert sum(len(ips) for ips in live[1].values()) == 9 + 1 + 4 + 2  # and the two CoreDNS pods
