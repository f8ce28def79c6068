"""``overlaynet trace``: one packet walked through a node's real rules, then its route (pure).

What this module owns, given what the kernel side read from the node the packet enters:
- ``plan_packet``: the first packet of a connection from a pod, a node or the external client,
  as the netfilter hooks of that node meet it (a pod's or the external client's packet arrives:
  nat PREROUTING; a node's own packet: nat OUTPUT);
- ``trace_rules``: the live ``iptables-save`` text through ``proxy.trace.Tracer``, every branch
  with its probability (the ``statistic --mode random`` choices of kube-proxy), and for every
  chain entered the rule that jumped into it (``rule_steps``), the DNAT rule and the
  MASQUERADE rule that fired;
- ``describe_route``: the kernel's route lookup for the (translated) destination, in words a
  learner checks with ``ip route``, ``ip neigh`` and ``bridge fdb``: local, the ``cni0``
  bridge, a VXLAN device to the node that the neighbour and FDB entries name, a route via a node
  (``proto bird``: learned over BGP), a pod's own veth, the node network's router, or dropped;
- ``render_text`` and ``as_dict`` (``-o json``).

What it never does: read the kernel or the store (the CLI hands it what ``kernel.iptables``,
``kernel.routes`` and ``kernel.observe`` read), or guess a rule: when several rules of a chain
jump to the same chain, the step names the chain only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from overlaynet.cli.output import table
from overlaynet.errors import InvalidInput, OverlaynetError, RuleError
from overlaynet.proxy.rules import Tables
from overlaynet.proxy.trace import Packet, TraceOutcome, Tracer

PROTOCOLS = ("tcp", "udp", "icmp")
ICMP_PORT = 0  # an ICMP echo has no port; the tracer's port matches then never hit


@dataclass(frozen=True)
class Source:
    """Where the packet starts: ``kind`` pod, node or external; ``name`` as the learner typed it."""

    kind: str
    name: str
    ip: str


@dataclass(frozen=True)
class RuleStep:
    """A chain the packet entered, and the rule that jumped into it (None: a hook, or several
    rules of the calling chain jump there)."""

    table: str
    chain: str
    rule: str | None


@dataclass(frozen=True)
class RouteHop:
    """Where the node sends the packet: ``kind`` local, bridge, vxlan, via-node, veth, gateway
    or dropped; ``text`` says it in words; ``route`` is the routing entry as ``ip route`` prints it."""

    kind: str
    text: str
    route: str | None = None
    next_node: str | None = None


@dataclass(frozen=True)
class Branch:
    probability: float
    verdict: str  # DNAT, ACCEPT (no translation), REJECT, DROP
    destination: str  # "ip:port" after DNAT, or the original
    masquerade: bool
    steps: tuple[RuleStep, ...]
    dnat_rule: str | None
    masquerade_rules: tuple[str, ...]  # the MASQUERADE rules of the chains walked after routing
    remembered: bool = False  # a ``recent --set`` list took the client (ClientIP session affinity)
    final_rule: str | None = None  # for REJECT and DROP, the rule that ended the walk
    hop: RouteHop | None = None


@dataclass
class TraceReport:
    source: Source
    destination: str  # as asked: "10.96.0.2:80"
    proto: str
    node: str
    netns: str
    hook: str  # "nat PREROUTING" | "nat OUTPUT"
    branches: list[Branch] = field(default_factory=list)


def parse_destination(text: str) -> tuple[str, int | None]:
    """``DEST[:PORT]`` -> (address, port or None)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, ""
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise InvalidInput(f"trace: destination {text!r} must be an IPv4 address, with :PORT for tcp and udp") from None
    if not port:
        return host, None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidInput(f"trace: destination {text!r}: port {port!r} is out of range 1-65535")
    return host, int(port)


def plan_packet(source: Source, dst: str, port: int | None, proto: str) -> Packet:
    if proto not in PROTOCOLS:
        raise InvalidInput(f"trace: --proto {proto!r} is not one of {', '.join(PROTOCOLS)}")
    if proto == "icmp":
        if port is not None:
            raise InvalidInput(f"trace: destination {dst}:{port}: icmp has no port")
        port = ICMP_PORT
    elif port is None:
        raise InvalidInput(f"trace: destination {dst}: {proto} needs a port (DEST:PORT)")
    origin = "node" if source.kind == "node" else ("external" if source.kind == "external" else "pod")
    return Packet(src=source.ip, dst=dst, dport=port, proto=proto, origin=origin)


def _jumps_to(tables: Tables, table: str, chain: str, target: str) -> list[str]:
    return [rule.text for rule in tables.chains.get(table, {}).get(chain, []) if rule.target == target]


def rule_steps(tables: Tables, path: Sequence[str]) -> tuple[RuleStep, ...]:
    """Each ``table/chain`` of a traced path with the rule that jumped into it: the calling
    chain is the nearest earlier chain of the same table that has a rule jumping there."""
    steps = []
    for i, entry in enumerate(path):
        table, chain = entry.split("/", 1)
        rule = None
        for earlier in reversed(path[:i]):
            earlier_table, earlier_chain = earlier.split("/", 1)
            if earlier_table != table:
                break
            candidates = _jumps_to(tables, table, earlier_chain, chain)
            if candidates:
                rule = candidates[0] if len(candidates) == 1 else None
                break
        steps.append(RuleStep(table, chain, rule))
    return tuple(steps)


def _rules_with_target(tables: Tables, steps: Sequence[RuleStep], target: str,
                       wanted: str | None = None) -> tuple[str, ...]:
    """The rules with ``target`` in the chains walked (for DNAT, those to ``wanted``)."""
    found = []
    for step in steps:
        for rule in tables.chains.get(step.table, {}).get(step.chain, []):
            if rule.target != target:
                continue
            if wanted is not None:
                option = next((o for o in rule.target_options if o.name == "--to-destination"), None)
                if option is None or option.values[0] != wanted:
                    continue
            found.append(rule.text)
    return tuple(dict.fromkeys(found))


def trace_rules(save_text: str, packet: Packet, local_addresses: Sequence[str], node: str) -> list[Branch]:
    """The packet through ``save_text`` (a node's ``iptables-save``): one branch per outcome,
    most likely first."""
    try:
        tracer = Tracer(save_text, local_addresses=local_addresses)
        result = tracer.trace(packet)
    except RuleError as exc:
        raise OverlaynetError(f'node "{node}": its iptables rules cannot be traced: {exc}') from None
    branches = []
    for outcome in sorted(result.outcomes, key=lambda o: -o.probability):
        branches.append(_branch(tracer.tables, packet, outcome))
    return branches


def _branch(tables: Tables, packet: Packet, outcome: TraceOutcome) -> Branch:
    steps = rule_steps(tables, outcome.path)
    destination = outcome.destination or (f"{packet.dst}:{packet.dport}" if packet.proto != "icmp" else packet.dst)
    postrouting = [s for i, s in enumerate(steps)
                   if s.table == "nat" and any(p.chain == "POSTROUTING" for p in steps[:i + 1])]
    return Branch(
        probability=outcome.probability,
        verdict=outcome.verdict,
        destination=destination,
        masquerade=outcome.masquerade,
        steps=steps,
        dnat_rule=next(iter(_rules_with_target(tables, steps, "DNAT", outcome.destination)), None)
        if outcome.destination else None,
        masquerade_rules=_rules_with_target(tables, postrouting, "MASQUERADE") if outcome.masquerade else (),
        remembered=bool(outcome.recent_set),
        final_rule=next(iter(_rules_with_target(tables, steps[-1:], outcome.verdict)), None)
        if outcome.verdict in ("REJECT", "DROP") else None,
    )


def destination_ip(branch: Branch) -> str:
    return branch.destination.rpartition(":")[0] if ":" in branch.destination else branch.destination


# --------------------------------------------------------------------------- the route


def route_text(route: Mapping) -> str:
    """A FIB entry as ``ip route`` prints it."""
    dst = route["dst"]
    parts = [] if route["type"] == "unicast" else [route["type"]]
    parts.append("default" if dst == "0.0.0.0/0" else dst.removesuffix("/32"))
    if route.get("gateway"):
        parts += ["via", route["gateway"]]
    if route.get("dev"):
        parts += ["dev", route["dev"]]
    if route.get("proto") not in (None, "boot"):
        parts += ["proto", route["proto"]]
    if route.get("onlink"):
        parts.append("onlink")
    return " ".join(parts)


def describe_route(lookup: Mapping, link_kinds: Mapping[str, str], neighbours: Sequence[Mapping],
                   fdb: Sequence[Mapping], who: Mapping[str, str], nodes_by_ip: Mapping[str, str]) -> RouteHop:
    """The lookup of ``kernel.routes.observe_route_get`` in words. ``link_kinds``: device ->
    kind in this node; ``neighbours``/``fdb``: the entries of the output device (VXLAN);
    ``who``: address -> "pod default/web-1" etc.; ``nodes_by_ip``: node address -> node name."""
    dst = lookup["dst"]
    target = who.get(dst, dst)
    if lookup["type"] == "error":
        return RouteHop("dropped", f"no route to {dst}: {lookup['error']}; the packet is dropped here")
    route = route_text(lookup["route"])
    kind = lookup["type"]
    if kind == "local":
        return RouteHop("local", f"local: {dst} is an address of this node, delivered here", route)
    if kind != "unicast":
        return RouteHop("dropped", f"{kind} route {lookup['route']['dst']}: the packet is dropped here", route)
    dev, gateway = lookup.get("dev"), lookup.get("gateway")
    dev_kind = link_kinds.get(dev or "", "")
    if dev_kind == "bridge":
        return RouteHop("bridge", f"bridge {dev}: a pod of this node", route)
    if dev_kind == "vxlan":
        mac = next((n["mac"] for n in neighbours if n["ip"] == gateway), None)
        if mac is None:
            return RouteHop("dropped", f"{dev} via {gateway}, but no neighbour entry for {gateway} on {dev} "
                            "(ip neigh): the VXLAN device cannot resolve it, the packet is dropped", route)
        remote = next((e["dst"] for e in fdb if e["mac"] == mac and e.get("dst")), None)
        if remote is None:
            return RouteHop("dropped", f"{dev} via {gateway} ({mac}), but no FDB entry for {mac} on {dev} "
                            "(bridge fdb): no node to send it to, the packet is dropped", route)
        node = nodes_by_ip.get(remote, remote)
        return RouteHop("vxlan", f"{dev} -> {node} ({remote}): VXLAN to the node, neighbour {gateway} lladdr {mac}, "
                        f"fdb {mac} dst {remote}", route, nodes_by_ip.get(remote))
    if gateway and gateway in nodes_by_ip:
        proto = lookup["route"]["proto"]
        how = "learned over BGP (proto bird)" if proto == "bird" else (
            "a static route" if proto in ("boot", "static") else f"a static route (proto {proto})")
        return RouteHop("via-node", f"via {nodes_by_ip[gateway]} ({gateway}) dev {dev}, {how}",
                        route, nodes_by_ip[gateway])
    if gateway:
        return RouteHop("gateway", f"via {gateway} dev {dev}: the node network's router, not a node; "
                        f"the packet leaves the cluster network", route)
    if dst in nodes_by_ip:
        return RouteHop("via-node", f"dev {dev}: {target}, on the node network", route, nodes_by_ip[dst])
    return RouteHop("veth" if dev_kind == "veth" else "device", f"dev {dev}: straight to {target}", route)


# --------------------------------------------------------------------------- output


def _percent(p: float) -> str:
    return f"{p * 100:.1f}%" if p < 0.9995 else "100%"


def _rule_body(rule: str) -> str:
    """``-A CHAIN -d ... -j X`` -> ``-d ... -j X`` (the chain is printed beside it)."""
    return rule.split(None, 2)[2] if rule.startswith("-A ") and rule.count(" ") >= 2 else rule


def _step_lines(steps: Sequence[RuleStep]) -> list[str]:
    """nat steps one per line with the rule that jumped; a hook's filter chains on one line."""
    lines: list[str] = []
    for step in steps:
        if step.table == "filter" and step.rule is not None and lines and lines[-1].startswith("  filter "):
            lines[-1] += f", {step.chain}"
            continue
        head = f"{step.table} {step.chain}"
        if step.table == "filter" and step.rule is not None:
            lines.append(f"  filter {step.chain}")
        else:
            lines.append(f"  {head:<30} {_rule_body(step.rule)}" if step.rule else f"  {head}")
    return [line.replace("  filter ", "  filter (", 1) + ")" if line.startswith("  filter ") and "," in line
            else line for line in lines]


def _common(branches: Sequence[Branch]) -> tuple[int, int]:
    """How many steps all branches share at the start and at the end."""
    paths = [b.steps for b in branches]
    shortest = min(len(p) for p in paths)
    head = 0
    while head < shortest and all(p[head] == paths[0][head] for p in paths):
        head += 1
    tail = 0
    while tail < shortest - head and all(p[-1 - tail] == paths[0][-1 - tail] for p in paths):
        tail += 1
    return head, tail


def render_text(report: TraceReport, who: Mapping[str, str]) -> str:
    """The trace as a learner reads it: the chains in order, the DNAT choices with their
    probabilities, masquerade or not, and the route to each (translated) destination."""
    src = report.source
    asked = report.destination.rpartition(":")[0] if ":" in report.destination else report.destination
    known = f" ({who[asked]})" if asked in who else ""
    lines = [(f"trace {src.kind} {src.name} ({src.ip}) -> {report.destination}{known} {report.proto}, "
              "the first packet of a connection"),
             f"node {report.node} (netns {report.netns}), from {report.hook}, rules read live with iptables-save:"]
    branches = report.branches
    head, tail = _common(branches)
    lines += _step_lines(branches[0].steps[:head])
    if len(branches) > 1:
        mixed = len({b.masquerade for b in branches}) > 1
        rows = []
        for b in branches:
            middle = b.steps[head:len(b.steps) - tail]
            rows.append([_percent(b.probability), " -> ".join(s.chain for s in middle if s.table == "nat") or "-",
                         b.destination if b.verdict == "DNAT" else b.verdict,
                         who.get(destination_ip(b), "") if b.verdict == "DNAT" else ""]
                        + (["yes" if b.masquerade else "no"] if mixed else []))
        lines.append(f"  then one of {len(branches)} ways, chosen at random per connection (statistic):")
        header = ["P", "CHAINS", "DNAT TO", "ENDPOINT"] + (["MASQUERADE"] if mixed else [])
        lines += ["    " + row for row in table(header, rows).splitlines()]
    lines += _step_lines(branches[0].steps[len(branches[0].steps) - tail:] if tail else ())
    if len(branches) == 1:
        b = branches[0]
        if b.verdict == "DNAT":
            lines.append(f"DNAT to {b.destination} ({who.get(destination_ip(b), 'not a known pod')})")
        elif b.verdict in ("REJECT", "DROP"):
            lines.append(f"{b.verdict}: the packet goes no further"
                         + (f"\n  {b.steps[-1].table} {b.final_rule}" if b.final_rule else ""))
        else:
            lines.append(f"no DNAT: the destination stays {b.destination}")
    if any(b.remembered for b in branches):
        lines.append(f"session affinity: the endpoint chosen is remembered for {src.ip} (-m recent --set), "
                     "so its next connections go to the same one")
    passing = [b for b in branches if b.verdict not in ("REJECT", "DROP")]
    masqueraded = {b.masquerade for b in passing}
    rules = sorted({rule for b in passing for rule in b.masquerade_rules})
    if masqueraded == {True}:
        lines.append("masquerade: yes, the source becomes the node's address"
                     + (", by one of:" if len(rules) > 1 else ":") + "".join(f"\n  {rule}" for rule in rules))
    elif masqueraded == {False}:
        lines.append(f"masquerade: no, the source stays {src.ip}")
    elif masqueraded:
        lines.append("masquerade: on the ways marked yes"
                     + "".join(f"\n  {rule}" for rule in rules))
    hops: dict[RouteHop, list[str]] = {}
    for b in passing:
        if b.hop and destination_ip(b) not in hops.setdefault(b.hop, []):
            hops[b.hop].append(destination_ip(b))
    if hops:
        lines.append(f"route from {report.node} (the kernel's lookup, as ip route get):")
        for hop, destinations in hops.items():
            lines.append(f"  {', '.join(destinations)}: {hop.route or 'no route'}")
            lines.append(f"    -> {hop.text}")
    return "\n".join(lines)


def as_dict(report: TraceReport) -> dict:
    return {
        "source": {"kind": report.source.kind, "name": report.source.name, "ip": report.source.ip},
        "destination": report.destination, "proto": report.proto, "node": report.node, "netns": report.netns,
        "hook": report.hook,
        "outcomes": [{
            "probability": round(b.probability, 6), "verdict": b.verdict, "destination": b.destination,
            "masquerade": b.masquerade, "dnatRule": b.dnat_rule, "masqueradeRules": list(b.masquerade_rules), "remembered": b.remembered,
            "finalRule": b.final_rule,
            "chains": [{"table": s.table, "chain": s.chain, "rule": s.rule} for s in b.steps],
            "route": None if b.hop is None else {"kind": b.hop.kind, "route": b.hop.route, "text": b.hop.text,
                                                 "nextNode": b.hop.next_node},
        } for b in report.branches],
    }


# --------------------------------------------------------------------------- --live

LIVE_COMMENT = "overlaynet trace --live"
_NFT_RETURN = "0xfffffffb"  # NFT_RETURN as xtables-monitor prints an unnamed verdict


@dataclass(frozen=True)
class LiveStep:
    """One trace event of the packet: a rule that matched (``rule`` its text) or a built-in
    chain's policy (``rule`` None); ``packet`` the addresses as the hook saw them."""

    table: str
    chain: str
    verdict: str  # "JUMP KUBE-SERVICES", "ACCEPT", "RETURN", "policy ACCEPT", ...
    rule: str | None
    packet: str
    dst: str = ""  # the packet's destination address at this step


def live_rule(packet: Packet) -> str:
    """The raw-table TRACE rule that picks out the packet ``send_probe`` sends (for TCP only
    the SYN, so the rest of the connection is not traced)."""
    chain = "OUTPUT" if packet.origin == "node" else "PREROUTING"
    parts = ["-A", chain, "-s", f"{packet.src}/32", "-d", f"{packet.dst}/32", "-p", packet.proto]
    if packet.proto == "tcp":
        parts += ["-m", "tcp", "--dport", str(packet.dport), "--tcp-flags", "FIN,SYN,RST,ACK", "SYN"]
    elif packet.proto == "udp":
        parts += ["-m", "udp", "--dport", str(packet.dport)]
    else:
        parts += ["-m", "icmp", "--icmp-type", "8"]
    return " ".join(parts + ["-m", "comment", "--comment", f'"{LIVE_COMMENT}"', "-j", "TRACE"])


def _packet_words(fields: dict[str, str]) -> str:
    src, dst = fields.get("SRC", "?"), fields.get("DST", "?")
    if "DPORT" in fields:
        return f"{src}:{fields.get('SPORT', '?')} -> {dst}:{fields['DPORT']}"
    return f"{src} -> {dst}"


def parse_monitor(text: str) -> list[LiveStep]:
    """``xtables-monitor --trace`` output -> the steps of the first packet traced, in order,
    without the raw table's own TRACE rule. The trace id is no guide (the kernel derives it
    from the packet, and it changes once the packet is routed); the trace rule marks only the
    packet sent, so its events run until the raw table sees a packet again."""
    steps: list[LiveStep] = []
    packet, dst = "", ""
    for line in text.splitlines():
        words = line.split()
        if len(words) < 4 or words[0] not in ("PACKET:", "TRACE:"):
            continue
        if words[0] == "PACKET:":
            fields = dict(w.split("=", 1) for w in words[3:] if "=" in w)
            packet, dst = _packet_words(fields), fields.get("DST", "")
            continue
        spec = words[3].split(":")
        if spec[0] == "raw":
            if steps:  # the same id arriving at raw again: a later packet, not ours
                break
            continue
        if len(spec) < 4:
            continue
        table, chain, kind = spec[0], spec[1], spec[2]
        rule_text = line.split(f" -t {table} ", 1)[1].strip() if f" -t {table} " in line else None
        if kind == "policy":
            steps.append(LiveStep(table, chain, f"policy {spec[3]}", None, packet, dst))
            continue
        verdict = spec[4] if len(spec) > 4 else ""
        verdict = {"JUMP": f"JUMP {spec[5]}" if len(spec) > 5 else "JUMP", _NFT_RETURN: "RETURN"}.get(verdict, verdict)
        if verdict == "GOTO" and len(spec) > 5:
            verdict = f"GOTO {spec[5]}"
        steps.append(LiveStep(table, chain, verdict, rule_text, packet, dst))
    return steps


def render_live(source: Source, node: str, steps: list[LiveStep], hop: RouteHop | None = None) -> str:
    lines = [(f"live: one packet sent from {source.kind} {source.name} ({source.ip}), the rules the kernel matched "
              f"in {node} (xtables-monitor --trace):")]
    if not steps:
        lines.append(f"  no trace event: the packet never reached {node}'s netfilter hooks "
                     "(look at the source's route: ip route get)")
        return "\n".join(lines)
    packet = None
    for step in steps:
        if step.packet != packet:
            packet = step.packet
            lines.append(f"  packet {packet}")
        head = f"{step.table} {step.chain}"
        lines.append(f"    {head:<32} {step.verdict:<34} {_rule_body(step.rule) if step.rule else ''}".rstrip())
    if hop is not None:
        lines.append(f"route from {node} to {steps[-1].dst}: {hop.route or 'none'}")
        lines.append(f"  -> {hop.text}")
    return "\n".join(lines)


def live_as_dict(steps: list[LiveStep]) -> list[dict]:
    return [{"table": s.table, "chain": s.chain, "verdict": s.verdict, "rule": s.rule, "packet": s.packet,
             "dst": s.dst} for s in steps]
