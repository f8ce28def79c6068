"""Golden files for rendered node plans: a change to what a mode programs shows as a diff.

Regenerate after an intended change with ``OVERLAYNET_UPDATE_GOLDEN=1 pytest tests/golden``.
"""

import difflib
import ipaddress
import os
import pathlib

import pytest

from overlaynet.datapath import plan, topology
from tests.golden.test_modes_side_by_side import cluster

HERE = pathlib.Path(__file__).parent


def render_cluster(cni: str) -> str:
    spec, mode, nodes, _ = cluster(cni)  # the nodes as the side-by-side golden test addresses them
    steps = topology.plan_cluster(spec, mode, nodes)
    pod = topology.PodInfo("default", "web-1", ipaddress.IPv4Address("10.244.1.2"), "node-2", "lab.pod.default.web-1",
                              "lab.node.node-2")
    steps += mode.plan_pod(spec, nodes[1], pod)
    return "\n".join(plan.describe(step) for step in steps) + "\n"


def compare(name: str, actual: str) -> None:
    path = HERE / name
    if os.environ.get("OVERLAYNET_UPDATE_GOLDEN"):
        path.write_text(actual)
    expected = path.read_text()
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            f"{name} (golden)", f"{name} (rendered)"))
        pytest.fail(f"rendered plan differs from {name}:\n{diff}")


def test_flannel_three_node_plan():
    compare("flannel-3-nodes.txt", render_cluster("flannel"))


def test_flannel_per_peer_order_is_neigh_fdb_route():
    lines = render_cluster("flannel").splitlines()
    per_peer = [line.split()[0] for line in lines
                if line.split()[0] in ("Neighbour", "FdbEntry", "Route") and "netns=lab.node.node-1 " in line
                and "dev=flannel.1" in line]
    assert per_peer == ["Neighbour", "FdbEntry", "Route"] * 2
