"""Following packets through iptables rule text (pure): the packet tracer and the
jump-target check. The text is read by ``proxy.rules``.

What this module owns:
- ``Tracer``: walks a packet through the netfilter hooks the way the kernel would, over the
  rules of one node - nat PREROUTING (arriving) or OUTPUT (sent by the node), then filter
  INPUT/FORWARD/OUTPUT, then nat POSTROUTING - and reports every outcome with its probability:
  the chain path, the DNAT destination, whether the source is masqueraded, or REJECT/DROP.
  ``statistic --mode random`` rules split the walk into weighted branches, so the tracer
  gives the exact distribution over endpoints rather than a sample (kube-proxy's own unit
  tests trace packets the same way, pkg/proxy/iptables/proxier_test.go);
- ``missing_targets``: every ``-j`` must name a standard target or a chain of its table.

What it never does: run iptables, or parse rule text itself. A match or target it cannot
follow is a ``RuleError``, so a new rule form cannot slip past the tests untraced.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from overlaynet.errors import RuleError
from overlaynet.proxy.render import Jump
from overlaynet.proxy.rules import BUILTIN_CHAINS, STANDARD_TARGETS, Rule, parse_rule, parse_tables


def missing_targets(payload: str, jumps: Iterable[Jump] = (), existing: Mapping[str, Iterable[str]] | None = None
                    ) -> list[str]:
    """Every ``-j`` that names neither a standard target nor a chain of its table, as
    ``"nat: KUBE-SVC-X -> KUBE-SEP-Y"``. ``existing`` adds chains already in the kernel (for
    checking a partial payload); the jumps from built-in chains are checked too."""
    tables = parse_tables(payload)
    known = {name: set(chains) | set(BUILTIN_CHAINS.get(name, ())) | set((existing or {}).get(name, ()))
             for name, chains in tables.chains.items()}
    problems = []
    for name, chains in tables.chains.items():
        for chain, rules in chains.items():
            for rule in rules:
                if rule.target and rule.target not in STANDARD_TARGETS and rule.target not in known[name]:
                    problems.append(f"{name}: {chain} -> {rule.target}")
    for jump in jumps:
        if jump.target not in known.get(jump.table, ()):
            problems.append(f"{jump.table}: {jump.chain} (jump) -> {jump.target}")
    return problems


# --------------------------------------------------------------------------- tracing


@dataclass(frozen=True)
class Packet:
    """The first packet of a connection as it reaches one node's netfilter hooks.

    ``origin``: ``"pod"`` (from a pod of this node, through its veth: nat PREROUTING),
    ``"external"`` (from the node network: nat PREROUTING too; only the source address
    differs), or ``"node"`` (sent by a process of the node itself: nat OUTPUT).

    The interfaces are needed only by rules that match them (NetworkPolicy's chains):
    ``in_interface``/``out_interface`` for ``-i``/``-o`` (``out_by_destination`` gives the
    route's device for some destinations, looked up after DNAT), ``physdev_in`` for a packet
    that entered a bridge through that port (``-m physdev --physdev-in``)."""

    src: str
    dst: str
    dport: int
    proto: str = "tcp"
    sport: int = 40000
    origin: str = "pod"
    in_interface: str | None = None
    out_interface: str | None = None
    physdev_in: str | None = None
    out_by_destination: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TraceOutcome:
    """One way a traced packet can go, and its probability."""

    probability: float
    verdict: str  # "DNAT" (to destination), "ACCEPT" (not a service: untouched), "REJECT", "DROP"
    destination: str | None  # "ip:port" after DNAT
    masquerade: bool
    path: tuple[str, ...]  # "table/chain" in the order entered
    recent_set: tuple[str, ...] = ()  # recent lists the source was added to (affinity)

    @property
    def service_chains(self) -> tuple[str, ...]:
        """The user chains walked in nat before the packet left PREROUTING/OUTPUT: the
        kube-proxy path (KUBE-SERVICES, KUBE-SVC-..., KUBE-SEP-...), without KUBE-MARK-MASQ."""
        chains = []
        for step in self.path:
            table, chain = step.split("/", 1)
            if table != "nat":
                break
            if chain not in BUILTIN_CHAINS["nat"] and chain != "KUBE-MARK-MASQ":
                chains.append(chain)
        return tuple(chains)


@dataclass(frozen=True)
class TraceResult:
    packet: Packet
    outcomes: tuple[TraceOutcome, ...]

    @property
    def destinations(self) -> dict[str | None, float]:
        """DNAT destination -> probability (``None`` for outcomes without DNAT)."""
        result: dict[str | None, float] = {}
        for outcome in self.outcomes:
            result[outcome.destination] = result.get(outcome.destination, 0.0) + outcome.probability
        return result

    @property
    def verdicts(self) -> dict[str, float]:
        result: dict[str, float] = {}
        for outcome in self.outcomes:
            result[outcome.verdict] = result.get(outcome.verdict, 0.0) + outcome.probability
        return result

    @property
    def masqueraded(self) -> bool | None:
        """True/False when every outcome agrees, None when it depends on the branch."""
        values = {o.masquerade for o in self.outcomes}
        return values.pop() if len(values) == 1 else None

    def only(self) -> TraceOutcome:
        """The single outcome of a deterministic trace."""
        if len(self.outcomes) != 1:
            raise AssertionError(f"{len(self.outcomes)} outcomes: {self.outcomes}")
        return self.outcomes[0]


@dataclass(frozen=True)
class _State:
    src: str
    dst: str
    dport: int
    mark: int = 0
    dnat: str | None = None
    masquerade: bool = False
    path: tuple[str, ...] = ()
    recent_set: tuple[str, ...] = ()


_Branch = tuple[float, _State, "str | None"]  # probability, state, verdict (None: continue)


class Tracer:
    """Traces packets through the rules of one node: ``Tracer(payload, jumps, local_addresses)``.

    ``payload`` is rendered restore text (or iptables-save output); the built-in chains get
    ``jumps`` as kube-proxy inserts them (each prepended). ``local_addresses`` are the node's
    own addresses, for ``addrtype LOCAL`` (127.0.0.0/8 is always local)."""

    MAX_DEPTH = 32

    def __init__(self, payload: str, jumps: Iterable[Jump] = (), local_addresses: Iterable[str] = ()):
        self.tables = parse_tables(payload)
        for name, chains in BUILTIN_CHAINS.items():
            table = self.tables.table(name)
            for chain in chains:
                table.setdefault(chain, [])
        for jump in jumps:
            self.tables.table(jump.table)[jump.chain].insert(0, parse_rule(jump.rule))
        self.local = [ipaddress.ip_network(a, strict=False) for a in (*local_addresses, "127.0.0.0/8")]

    def _is_local(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip in network for network in self.local)

    def trace(self, packet: Packet, recent: Mapping[str, Iterable[str]] | None = None) -> TraceResult:
        """Every way ``packet`` can go, with its probability. ``recent`` holds the ``recent``
        lists (affinity) as they stand: list name -> source addresses recorded."""
        self._packet = packet
        self._recent = {k: set(v) for k, v in (recent or {}).items()}
        state = _State(packet.src, packet.dst, packet.dport)
        first = "OUTPUT" if packet.origin == "node" else "PREROUTING"
        outcomes: list[TraceOutcome] = []
        for p, st, verdict in self._hook("nat", first, 1.0, state):
            if verdict in ("DROP", "REJECT"):
                outcomes.append(self._outcome(p, st, verdict))
                continue
            if packet.origin == "node":
                filter_chain = "OUTPUT"
            else:
                filter_chain = "INPUT" if self._is_local(st.dst) else "FORWARD"
            for p2, st2, verdict2 in self._hook("filter", filter_chain, p, st):
                if verdict2 in ("DROP", "REJECT"):
                    outcomes.append(self._outcome(p2, st2, verdict2))
                    continue
                if filter_chain == "INPUT":  # delivered locally: no POSTROUTING
                    outcomes.append(self._outcome(p2, st2, "DNAT" if st2.dnat else "ACCEPT"))
                    continue
                for p3, st3, _ in self._hook("nat", "POSTROUTING", p2, st2):
                    outcomes.append(self._outcome(p3, st3, "DNAT" if st3.dnat else "ACCEPT"))
        merged: dict[tuple, TraceOutcome] = {}
        for outcome in outcomes:
            key = (outcome.verdict, outcome.destination, outcome.masquerade, outcome.path, outcome.recent_set)
            if key in merged:
                merged[key] = replace(merged[key], probability=merged[key].probability + outcome.probability)
            else:
                merged[key] = outcome
        return TraceResult(packet, tuple(merged.values()))

    @staticmethod
    def _outcome(p: float, st: _State, verdict: str) -> TraceOutcome:
        return TraceOutcome(p, verdict, st.dnat, st.masquerade, st.path, st.recent_set)

    def _hook(self, table: str, chain: str, p: float, st: _State) -> list[_Branch]:
        """A built-in chain: falling off the end (or RETURN) is its policy, ACCEPT."""
        results: list[_Branch] = []
        for bp, bst, verdict in self._chain(table, chain, p, st, 0):
            results.append((bp, bst, verdict if verdict not in (None, "RETURN") else "ACCEPT"))
        return results

    def _chain(self, table: str, chain: str, p: float, st: _State, depth: int) -> list[_Branch]:
        if depth > self.MAX_DEPTH:
            raise RuleError(f"{table}/{chain}: jumps nest deeper than {self.MAX_DEPTH} (a loop?)")
        rules = self.tables.chains.get(table, {}).get(chain)
        if rules is None:
            raise RuleError(f"{table}: jump to {chain}, which does not exist")
        st = replace(st, path=st.path + (f"{table}/{chain}",))
        done: list[_Branch] = []
        pending: list[tuple[float, _State]] = [(p, st)]
        for rule in rules:
            still: list[tuple[float, _State]] = []
            for bp, bst in pending:
                for fraction, matched, mst in self._match(rule, bst):
                    if fraction == 0.0:
                        continue
                    if not matched:
                        still.append((bp * fraction, mst))
                        continue
                    for op, ost, verdict in self._target(table, rule, bp * fraction, mst, depth):
                        if verdict is None:
                            still.append((op, ost))
                        elif verdict == "RETURN":
                            done.append((op, ost, None))
                        else:
                            done.append((op, ost, verdict))
            pending = still
            if not pending:
                break
        done.extend((bp, bst, None) for bp, bst in pending)
        return done

    def _target(self, table: str, rule: Rule, p: float, st: _State, depth: int) -> list[_Branch]:
        target = rule.target
        if target is None:
            return [(p, st, None)]
        if target in ("ACCEPT", "DROP", "REJECT", "RETURN"):
            return [(p, st, target)]
        if target == "MARK":
            mark = st.mark
            for option in rule.target_options:
                value = int(option.values[0].split("/")[0], 0)
                if option.name == "--or-mark":
                    mark |= value
                elif option.name == "--xor-mark":
                    mark ^= value
                elif option.name == "--set-xmark":
                    mask = int(option.values[0].split("/")[1], 0) if "/" in option.values[0] else 0xFFFFFFFF
                    mark = (mark & ~mask & 0xFFFFFFFF) ^ value
                else:
                    raise RuleError(f"MARK {option.name} is not understood: {rule.text!r}")
            return [(p, replace(st, mark=mark), None)]
        if target == "DNAT":
            destination = next((o for o in rule.target_options if o.name == "--to-destination"), None)
            if destination is None:
                raise RuleError(f"DNAT without --to-destination: {rule.text!r}")
            ip, _, port = destination.values[0].rpartition(":")
            return [(p, replace(st, dnat=destination.values[0], dst=ip, dport=int(port)), "DNAT")]
        if target == "MASQUERADE":
            return [(p, replace(st, masquerade=True), "MASQUERADE")]
        if target in STANDARD_TARGETS:
            raise RuleError(f"target {target} is not traced: {rule.text!r}")
        return self._chain(table, target, p, st, depth + 1)

    def _match(self, rule: Rule, st: _State) -> list[tuple[float, bool, _State]]:
        """[(fraction of the branch, matched?, state)]: one entry, or two for a random match."""
        packet = self._packet
        for key, value, negated in rule.generic:
            if key in ("src", "dst"):
                address = st.src if key == "src" else st.dst
                hit = ipaddress.ip_address(address) in ipaddress.ip_network(value, strict=False)
            elif key == "proto":
                hit = value.lower() == packet.proto
            else:
                interface = packet.in_interface if key == "in" else \
                    dict(packet.out_by_destination).get(st.dst, packet.out_interface)
                if interface is None:
                    raise RuleError(f"interface match on a packet without that interface: {rule.text!r}")
                hit = interface.startswith(value[:-1]) if value.endswith("+") else interface == value
            if hit == negated:
                return [(1.0, False, st)]
        split: float | None = None
        for match in rule.matches:
            name = match.name
            if name == "comment":
                continue
            if name in ("tcp", "udp"):
                if packet.proto != name:
                    return [(1.0, False, st)]
                for option in match.options:
                    if option.name in ("--dport", "--destination-port"):
                        first, _, last = option.values[0].partition(":")
                        hit = int(first) <= st.dport <= int(last or first)
                    elif option.name in ("--sport", "--source-port"):
                        hit = packet.sport == int(option.values[0])
                    else:
                        raise RuleError(f"{name} {option.name} is not traced: {rule.text!r}")
                    if hit == option.negated:
                        return [(1.0, False, st)]
            elif name == "addrtype":
                for option in match.options:
                    address = st.src if option.name == "--src-type" else st.dst
                    if option.values[0] != "LOCAL":
                        raise RuleError(f"addrtype {option.values[0]} is not traced: {rule.text!r}")
                    if self._is_local(address) == option.negated:
                        return [(1.0, False, st)]
            elif name == "mark":
                mark = match.require("--mark", rule)
                value, _, mask = mark.values[0].partition("/")
                mask_value = int(mask, 0) if mask else 0xFFFFFFFF
                hit = (st.mark & mask_value) == int(value, 0)
                if hit == mark.negated:
                    return [(1.0, False, st)]
            elif name == "conntrack":
                for option in match.options:
                    if option.name != "--ctstate":
                        raise RuleError(f"conntrack {option.name} is not traced: {rule.text!r}")
                    states = {"NEW"} | ({"DNAT"} if st.dnat else set())
                    hit = bool(states & set(option.values[0].split(",")))
                    if hit == option.negated:
                        return [(1.0, False, st)]
            elif name == "physdev":
                for option in match.options:
                    if option.name != "--physdev-in":
                        raise RuleError(f"physdev {option.name} is not traced: {rule.text!r}")
                    if (packet.physdev_in == option.values[0]) == option.negated:
                        return [(1.0, False, st)]
            elif name == "statistic":
                mode = match.get("--mode")
                if mode is None or mode.values[0] != "random":
                    raise RuleError(f"statistic other than --mode random is not traced: {rule.text!r}")
                split = float(match.require("--probability", rule).values[0])
            elif name == "recent":
                list_name = match.require("--name", rule).values[0]
                if match.get("--rcheck") is not None:
                    if st.src not in self._recent.get(list_name, ()):
                        return [(1.0, False, st)]
                elif match.get("--set") is not None:
                    st = replace(st, recent_set=st.recent_set + (list_name,))
                else:
                    raise RuleError(f"recent without --set/--rcheck is not traced: {rule.text!r}")
            else:
                raise RuleError(f"match {name} is not traced: {rule.text!r}")
        if split is not None:
            return [(split, True, st), (1.0 - split, False, st)]
        return [(1.0, True, st)]
