"""The two CNI modes' plans of one cluster, each against its golden file, and side by side.

The cluster: ``lab``, 3 nodes on 172.20.0.0/24, one pod on each node (``default/web-<n>`` on
``node-<n>``). Flannel gives every node a /24 pod CIDR, a bridge and a VXLAN device; Calico
gives every node the /26 IPAM block it claimed for its first pod (found by the seeded search of
``overlaynet.ipam.blocks``), a blackhole for it, a route to each peer's block via the peer's IP, and
a ``cali…`` veth per pod with proxy ARP instead of a bridge.

``modes-side-by-side.txt`` puts node-2's two plans next to each other, grouped by namespace,
for a learner to read. On a mismatch the failure shows golden and rendered side by side.
Regenerate after an intended change with ``OVERLAYNET_UPDATE_GOLDEN=1 pytest tests/golden``.
"""

from __future__ import annotations

import difflib
import os
import pathlib
from dataclasses import replace

import pytest

from overlaynet.api import model
from overlaynet.datapath import plan, topology
from overlaynet.datapath.modes import get_mode
from overlaynet.ipam import allocators, blocks

HERE = pathlib.Path(__file__).parent
CLUSTER = "lab"
WIDTH = 96  # of one column


def cluster(cni: str) -> tuple[model.ClusterSpec, object, list[topology.NodeInfo], list[topology.PodInfo]]:
    """Nodes and one pod per node, addressed as the mode's IPAM would address them."""
    spec = model.build_spec(name=CLUSTER, cni=cni)
    mode = get_mode(spec.cni)
    nodes = []
    for index, node in enumerate(spec.nodes):
        ip = spec.node_network.network_address + model.FIRST_NODE_HOST + index
        nodes.append(topology.NodeInfo(node.name, ip, allocators.node_cidr_at(spec.cluster_cidr, 24, index),
                                       tuple(sorted(mode.node_annotations(spec, node.name, str(ip)).items()))))
    pod_ips = []
    if spec.cni == "calico":
        state = blocks.PoolState(spec.cluster_cidr, spec.block_size)
        pod_ips = [state.allocate(node.name, f"web-{i}.eth0") for i, node in enumerate(nodes, 1)]
        nodes = [replace(n, blocks=state.node_blocks(n.name), borrowed=state.borrowed(n.name)) for n in nodes]
    else:
        pod_ips = [allocators.allocate_pod_ip(n.name, n.pod_cidr, []) for n in nodes]
    pods = [topology.PodInfo("default", f"web-{i}", pod_ips[i - 1], node.name, f"{CLUSTER}.pod.default.web-{i}",
                             f"{CLUSTER}.node.{node.name}", container_id=f"web-{i}")
            for i, node in enumerate(nodes, 1)]
    return spec, mode, nodes, pods


def node_plan(spec, mode, node, nodes) -> plan.Plan:
    """A node complete: base, the mode's devices, its own block routes (routed mode), peers."""
    steps = topology.plan_node_base(spec, node) + mode.plan_node(spec, node)
    if hasattr(mode, "plan_blocks"):
        steps += mode.plan_blocks(spec, node)
    for peer in nodes:
        if peer.name != node.name:
            steps += mode.plan_peer(spec, node, peer)
    return steps


def render(cni: str) -> str:
    spec, mode, nodes, pods = cluster(cni)
    steps = topology.plan_underlay(spec)
    for node in nodes:
        steps += node_plan(spec, mode, node, nodes)
    for node, pod in zip(nodes, pods):
        steps += (plan.Netns(pod.netns),) + mode.plan_pod(spec, node, pod)
    return "\n".join(plan.describe(step) for step in steps) + "\n"


def grouped(steps: plan.Plan) -> list[str]:
    """Steps under a ``[namespace]`` header each, without the repeated ``netns=`` field."""
    lines, current = [], None
    for step in steps:
        ns = step.name if isinstance(step, plan.Netns) else step.netns
        if ns != current:
            lines.append(f"[{ns}]")
            current = ns
        lines.append("  " + plan.describe(step).replace(f" netns={ns}", ""))
    return lines


def render_node_side_by_side(node_name: str = "node-2") -> str:
    columns = []
    for cni in ("flannel", "calico"):
        spec, mode, nodes, pods = cluster(cni)
        index = [n.name for n in nodes].index(node_name)
        steps = node_plan(spec, mode, nodes[index], nodes)
        steps += (plan.Netns(pods[index].netns),) + mode.plan_pod(spec, nodes[index], pods[index])
        columns.append(grouped(steps))
    header = [f"# {node_name} of a 3-node cluster with one pod per node: flannel (left), calico (right).",
              "# '|' same step, '<' flannel only, '>' calico only, '~' the step differs."]
    return "\n".join(header + side_by_side(columns[0], columns[1], "flannel", "calico")) + "\n"


def _cell(text: str) -> str:
    return text if len(text) <= WIDTH else text[:WIDTH - 1] + "…"


def side_by_side(left: list[str], right: list[str], left_title: str, right_title: str,
                 context: int | None = None) -> list[str]:
    """Two columns aligned by difflib; ``context`` keeps only that many lines around changes."""
    rows: list[tuple[str, str, str]] = []
    matcher = difflib.SequenceMatcher(a=left, b=right, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            rows += [(a, "|", b) for a, b in zip(left[i1:i2], right[j1:j2])]
            continue
        a_part, b_part = left[i1:i2], right[j1:j2]
        for k in range(max(len(a_part), len(b_part))):
            a = a_part[k] if k < len(a_part) else ""
            b = b_part[k] if k < len(b_part) else ""
            rows.append((a, "~" if a and b else ("<" if a else ">"), b))
    if context is not None:
        keep = set()
        for n, (_, mark, _) in enumerate(rows):
            if mark != "|":
                keep.update(range(n - context, n + context + 1))
        trimmed, last = [], -1
        for n, row in enumerate(rows):
            if n in keep:
                if last != -1 and n != last + 1:
                    trimmed.append(("...", " ", "..."))
                trimmed.append(row)
                last = n
        rows = trimmed
    out = [f"{_cell(left_title):<{WIDTH}}   {right_title}", f"{'-' * WIDTH}   {'-' * WIDTH}"]
    out += [f"{_cell(a):<{WIDTH}} {mark} {_cell(b)}".rstrip() for a, mark, b in rows]
    return out


def compare(name: str, actual: str) -> None:
    path = HERE / name
    if os.environ.get("OVERLAYNET_UPDATE_GOLDEN"):
        path.write_text(actual)
    expected = path.read_text()
    if actual != expected:
        view = side_by_side(expected.splitlines(), actual.splitlines(), f"{name} (golden)", "rendered", context=2)
        pytest.fail(f"rendered plan differs from {name}:\n" + "\n".join(view))


def test_flannel_plan_with_a_pod_per_node():
    compare("flannel-3-nodes-3-pods.txt", render("flannel"))


def test_calico_plan_with_a_pod_per_node():
    compare("calico-3-nodes.txt", render("calico"))


def test_node_plans_side_by_side():
    compare("modes-side-by-side.txt", render_node_side_by_side())


def test_calico_plan_is_routed_not_encapsulated():
    text = render("calico")
    assert "Vxlan" not in text and "Bridge netns=lab.node" not in text and "FdbEntry" not in text
    spec, mode, nodes, pods = cluster("calico")
    for node in nodes:
        ns = f"lab.node.{node.name}"
        (block,) = node.blocks
        assert f"Route netns={ns} dst={block} type=blackhole proto=80" in text
        for peer in nodes:
            if peer is not node:
                assert f"Route netns={ns} dst={peer.blocks[0]} gateway={peer.ip} dev=eth0 proto=80" in text
        assert f"Route netns={ns} dst=0.0.0.0/0 gateway=172.20.0.1 dev=eth0" in text
    for pod in pods:
        assert f"Address netns={pod.netns} dev=eth0 cidr={pod.ip}/32" in text
        assert f"Route netns={pod.host_netns} dst={pod.ip}/32 dev=cali" in text


def test_the_failure_view_shows_both_columns():
    view = "\n".join(side_by_side(["a", "b", "c"], ["a", "B", "c", "d"], "golden", "rendered"))
    assert "b" in view and "B" in view and " ~ " in view and " > d" in view
    assert view.splitlines()[0].startswith("golden") and "rendered" in view.splitlines()[0]
