"""Pod placement, as kube-scheduler would decide it for this small world (pure).

Filter, then score: a node passes if it is Ready, matches the pod's ``spec.nodeName`` and
``spec.nodeSelector``, and has a free pod IP (our only capacity); among those the node with
the fewest pods wins, ties broken by name. A pod that fits nowhere stays Pending with
kube-scheduler's style of message: ``0/3 nodes are available: 3 node(s) didn't match Pod's
node affinity/selector.``
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    name: str
    labels: dict
    ready: bool
    free_ips: int
    pods: int


@dataclass(frozen=True)
class Decision:
    node: str | None
    reason: str = ""
    message: str = ""


def schedule(node_name: str | None, node_selector: dict, candidates: list[Candidate]) -> Decision:
    if node_name is not None and node_name not in {c.name for c in candidates}:
        return Decision(None, "NodeNotFound", f'node "{node_name}" not found')
    rejections: Counter[str] = Counter()
    fitting = []
    for candidate in candidates:
        if node_name is not None and candidate.name != node_name:
            rejections["didn't match the requested node name"] += 1
        elif not candidate.ready:
            rejections["were not ready"] += 1
        elif any(candidate.labels.get(k) != v for k, v in node_selector.items()):
            rejections["didn't match Pod's node affinity/selector"] += 1
        elif candidate.free_ips <= 0:
            rejections["had no free pod IPs"] += 1
        else:
            fitting.append(candidate)
    if fitting:
        best = min(fitting, key=lambda c: (c.pods, c.name))
        return Decision(best.name)
    detail = ", ".join(f"{count} node(s) {why}" for why, count in sorted(rejections.items()))
    return Decision(None, "Unschedulable", f"0/{len(candidates)} nodes are available: {detail}.")
