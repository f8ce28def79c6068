"""``overlaynet fault``: what each break-it fault changes in a node and how it is undone (pure).

A fault is planned from the node's own plan (what the node should hold) and written as plain
actions, one list to make it and one to undo it, so the store can keep both *before* anything
changes and ``fault clear`` (or a later process after a crash) undoes exactly what was made:

- ``mtu NODE --mtu N``: the node's tunnel device (``flannel.1``) or, in a mode without one, its
  ``eth0`` (the pod path) gets MTU N; undone by the planned MTU;
- ``route NODE CIDR``: the node's planned route to a peer's pod CIDR or block is deleted;
  undone by re-creating it from the plan (``kernel.apply``'s ensure is idempotent);
- ``fdb NODE PEER`` / ``neigh NODE PEER``: the node's planned VXLAN FDB / neighbour entry for
  the peer is deleted; undone the same way;
- ``masquerade NODE``: a stray ``MASQUERADE`` for pod-to-pod traffic is appended to the node's
  nat ``POSTROUTING`` (breaking "no NAT"), with a comment naming the fault; undone by deleting it;
- ``bird NODE``: the node's BIRD is stopped (``--bgp`` clusters); undone by starting it again.

Nothing is hidden: each fault is an ordinary kernel object a learner finds with ``ip link``,
``ip route``, ``bridge fdb``, ``ip neigh``, ``iptables-save`` or ``ping -s``; ``hint`` says which.
What it never does: touch the kernel or the store; a fault that does not apply to the cluster
(a VXLAN fault on a routed cluster, BIRD without ``--bgp``) is an ``InvalidInput`` naming the
node and the field.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

from overlaynet import names
from overlaynet.datapath import plan as plan_steps
from overlaynet.datapath.plan import FdbEntry, Neighbour, Plan, Route, Step, VethPair, Vxlan, words
from overlaynet.errors import InvalidInput, invalid

FAULT_KIND = "Fault"  # the store's kind for fault records
FAULT_TYPES = ("mtu", "route", "fdb", "neigh", "masquerade", "bird")
MTU_MIN, MTU_MAX = 68, 65535  # IPv4's minimum; the kernel's maximum for these devices


@dataclass(frozen=True)
class SetMtu:
    netns: str
    dev: str
    mtu: int


@dataclass(frozen=True)
class DeleteSteps:
    steps: Plan


@dataclass(frozen=True)
class ApplySteps:
    steps: Plan


@dataclass(frozen=True)
class AppendRule:
    netns: str
    table: str
    rule: str  # "-A CHAIN ..." as iptables-save prints it


@dataclass(frozen=True)
class DeleteRule:
    netns: str
    table: str
    rule: str


@dataclass(frozen=True)
class StopBird:
    node: str


@dataclass(frozen=True)
class StartBird:
    node: str


Action = SetMtu | DeleteSteps | ApplySteps | AppendRule | DeleteRule | StopBird | StartBird
_ACTIONS = {cls.__name__: cls for cls in (SetMtu, DeleteSteps, ApplySteps, AppendRule, DeleteRule, StopBird, StartBird)}
_STEPS = {cls.__name__: cls for cls in (plan_steps.Netns, plan_steps.Sysctl, plan_steps.Bridge, VethPair, Vxlan,
                                         plan_steps.Address, Route, Neighbour, FdbEntry)}


@dataclass(frozen=True)
class Fault:
    type: str
    node: str
    change: str  # in words: "flannel.1 mtu 1450 -> 1400"
    hint: str  # how a learner finds it
    inject: tuple[Action, ...]
    undo: tuple[Action, ...]


# --------------------------------------------------------------------------- planning


def plan_mtu(node: str, node_netns: str, node_plan: Plan, mtu: int) -> Fault:
    """The tunnel device of the node's plan, else its ``eth0``, at ``mtu``."""
    if not MTU_MIN <= mtu <= MTU_MAX:
        raise invalid("node", node, f"fault mtu: --mtu {mtu} is out of range {MTU_MIN}-{MTU_MAX}")
    tunnel = next((s for s in node_plan if isinstance(s, Vxlan)), None)
    if tunnel is not None:
        dev, planned = tunnel.name, tunnel.mtu
    else:
        uplink = next((s for s in node_plan if isinstance(s, VethPair) and s.peer_netns == node_netns
                       and s.peer_name == names.NODE_UPLINK), None)
        if uplink is None:
            raise invalid("node", node, f"fault mtu: its plan has neither a tunnel device nor {names.NODE_UPLINK}")
        dev, planned = names.NODE_UPLINK, uplink.mtu
    if mtu == planned:
        raise invalid("node", node, f"fault mtu: --mtu {mtu} is {dev}'s MTU already")
    return Fault("mtu", node, f"{dev} mtu {planned} -> {mtu}",
                 f"overlaynet exec node/{node} -- ip link show {dev}; from {node} or its pods to a pod "
                 f"elsewhere, ping -M do -s {planned - 28} fails and ping -s 56 passes",
                 (SetMtu(node_netns, dev, mtu),), (SetMtu(node_netns, dev, planned),))


def _peer_routes(node_plan: Plan) -> list[Route]:
    """The planned routes to other nodes' pods: via a gateway, not the default route."""
    return [s for s in node_plan if isinstance(s, Route) and s.dst != "0.0.0.0/0" and s.gateway]


def plan_route(node: str, node_plan: Plan, cidr: str, learned_by_bgp: bool) -> Fault:
    """Delete the node's planned route(s) to ``cidr``."""
    if learned_by_bgp:
        raise invalid("node", node, "fault route: its routes to other nodes are BIRD's (proto bird), and BIRD "
                      "puts a deleted one back within seconds; break BGP instead: overlaynet fault bird " + node)
    routes = [r for r in _peer_routes(node_plan) if r.dst == cidr]
    if not routes:
        known = ", ".join(sorted({r.dst for r in _peer_routes(node_plan)})) or "none"
        raise invalid("node", node, f"fault route: no planned route to {cidr} (its routes to peers: {known})")
    change = "; ".join(f"deleted {words(r)}" for r in routes)
    probe = next(ipaddress.ip_network(cidr).hosts(), ipaddress.ip_network(cidr).network_address)
    return Fault("route", node, change, f"overlaynet exec node/{node} -- ip route get {probe}",
                 (DeleteSteps(tuple(routes)),), (ApplySteps(tuple(routes)),))


def _entry_fault(kind: str, step_type: type[FdbEntry | Neighbour], node: str, peer: str, peer_plan: Plan,
                 cni: str, command: str) -> Fault:
    entries: tuple[FdbEntry | Neighbour, ...] = tuple(s for s in peer_plan if isinstance(s, step_type))
    if not entries:
        raise invalid("node", node, f"fault {kind}: cni {cni} plans no {'VXLAN FDB' if kind == 'fdb' else 'neighbour'} "
                      f'entry for peer "{peer}" (only an encapsulating mode has them)')
    change = "; ".join(f"deleted {words(e)}" for e in entries)
    hint = f"overlaynet exec node/{node} -- {command} dev {entries[0].dev}"
    return Fault(kind, node, change, hint, (DeleteSteps(entries),), (ApplySteps(entries),))


def plan_fdb(node: str, peer: str, peer_plan: Plan, cni: str) -> Fault:
    """Delete the node's FDB entry that sends the peer's VTEP MAC to the peer's address."""
    return _entry_fault("fdb", FdbEntry, node, peer, peer_plan, cni, "bridge fdb show")


def plan_neigh(node: str, peer: str, peer_plan: Plan, cni: str) -> Fault:
    """Delete the node's permanent neighbour entry for the peer's VTEP address."""
    return _entry_fault("neigh", Neighbour, node, peer, peer_plan, cni, "ip neigh show")


def masquerade_rule(cluster_cidr: str, fault_id: str) -> str:
    """The stray rule, as iptables-save prints it (so it is found again by its text)."""
    return (f"-A POSTROUTING -s {cluster_cidr} -d {cluster_cidr} -m comment "
            f'--comment "overlaynet fault {fault_id}: stray MASQUERADE" -j MASQUERADE')


def plan_masquerade(node: str, node_netns: str, cluster_cidr: str, fault_id: str) -> Fault:
    rule = masquerade_rule(cluster_cidr, fault_id)
    return Fault("masquerade", node, f"stray MASQUERADE appended to nat POSTROUTING (-s {cluster_cidr} -d {cluster_cidr})",
                 f"overlaynet exec node/{node} -- iptables-save -t nat; overlaynet verify (NAT between pods)",
                 (AppendRule(node_netns, "nat", rule),), (DeleteRule(node_netns, "nat", rule),))


def plan_bird(node: str, cluster: str, bgp: str | None) -> Fault:
    if bgp != "bird":
        raise invalid("cluster", cluster, "fault bird: bgp is off, no BIRD runs "
                      "(a cluster made with `overlaynet up --cni calico --bgp` has one per node)")
    return Fault("bird", node, "BIRD stopped", f"overlaynet describe node {node} (its BGP sessions); "
                 f"the other nodes' ip route lacks {node}'s blocks", (StopBird(node),), (StartBird(node),))


# --------------------------------------------------------------------------- records


def _step_dict(step: Step) -> dict:
    return {"kind": type(step).__name__, **asdict(step)}


def _action_dict(action: Action) -> dict:
    body = {f.name: getattr(action, f.name) for f in fields(action)}
    if isinstance(action, (DeleteSteps, ApplySteps)):
        body["steps"] = [_step_dict(s) for s in action.steps]
    return {"action": type(action).__name__, **body}


def _action(body: dict) -> Action:
    values = {k: v for k, v in body.items() if k != "action"}
    cls = _ACTIONS.get(body.get("action", ""))
    if cls is None:
        raise InvalidInput(f"fault record: unknown action {body.get('action')!r}")
    if cls in (DeleteSteps, ApplySteps):
        values["steps"] = tuple(_STEPS[s["kind"]](**{k: v for k, v in s.items() if k != "kind"})
                                for s in values["steps"])
    return cls(**values)


def fault_record(fault_id: str, fault: Fault, created: str) -> dict:
    """The store's record of a fault, written before the fault is made."""
    return {"apiVersion": "overlaynet.dev/v1", "kind": FAULT_KIND,
            "metadata": {"name": fault_id, "creationTimestamp": created},
            "spec": {"type": fault.type, "node": fault.node, "change": fault.change, "hint": fault.hint,
                     "inject": [_action_dict(a) for a in fault.inject],
                     "undo": [_action_dict(a) for a in fault.undo]},
            "status": {"phase": "Injecting"}}


def fault_of(record: dict) -> Fault:
    spec = record["spec"]
    return Fault(spec["type"], spec["node"], spec["change"], spec["hint"],
                 tuple(_action(a) for a in spec["inject"]), tuple(_action(a) for a in spec["undo"]))


def undo_words(fault: Fault) -> str:
    """What ``fault clear`` did, in words."""
    parts = []
    for action in fault.undo:
        if isinstance(action, SetMtu):
            parts.append(f"{action.dev} mtu {action.mtu} again")
        elif isinstance(action, ApplySteps):
            parts += [f"re-created {words(s)}" for s in action.steps]
        elif isinstance(action, DeleteRule):
            parts.append("deleted the stray MASQUERADE rule")
        elif isinstance(action, StartBird):
            parts.append("BIRD started again")
    return "; ".join(parts)


def check_not_active(fault: Fault, records: Sequence[dict]) -> None:
    """Refuse a fault that is already made: the same object broken twice would be restored
    half-way by the first clear."""
    for record in records:
        spec = record["spec"]
        if spec["type"] == fault.type and spec["node"] == fault.node and (
                fault.type in ("mtu", "masquerade", "bird") or spec["change"] == fault.change):
            raise invalid("node", fault.node, f"fault {fault.type}: {record['metadata']['name']} "
                          f"({spec['change']}) is active already; clear it first")
