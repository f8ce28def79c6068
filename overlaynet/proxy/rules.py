"""iptables rule text as values (pure): the parser and the read-back normalisation of
reference/kube-proxy.md §8.

What this module owns:
- ``parse_rule`` / ``parse_tables``: ``iptables-restore`` input or ``iptables-save`` output ->
  tables of chains of parsed ``Rule`` values (``-X`` lines delete chains, as the restore would;
  with a ``base``, a payload is applied over it as ``--noflush`` would);
- ``canonical_tables``: rule text in the form ``iptables-save`` prints it (addresses with
  ``/32``, generic options first, comments unquoted, MARK ``--set-xmark``, REJECT's default,
  statistic probabilities as the kernel's 31-bit fraction, ``recent`` defaults), so rendered
  and read-back rules compare equal exactly when the kernel holds what was rendered;
- ``saved_chain_lines``: ``iptables-save`` output as the lines of each chain, verbatim;
- ``owned_rule_lines``: the canonical rules of kube-proxy's and the policy agent's chains, one
  line each, what ``rules --diff`` and the self-heal loop compare.

What it never does: run iptables, or decide what a rule does to a packet (``proxy.trace``).
It reads the matches and targets kube-proxy uses (comment, tcp/udp, addrtype, statistic,
recent, mark, conntrack; DNAT, MASQUERADE, MARK, REJECT, DROP, ACCEPT, RETURN, jumps);
anything it cannot read is a ``RuleError``, so a new rule form cannot slip past the tests.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from overlaynet.errors import RuleError

STANDARD_TARGETS = frozenset({"ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "SNAT", "MASQUERADE", "MARK"})
BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}
_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
_GENERIC = {"-s": "src", "--source": "src", "-d": "dst", "--destination": "dst", "-p": "proto",
            "--protocol": "proto", "-i": "in", "--in-interface": "in", "-o": "out", "--out-interface": "out"}


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Option:
    name: str  # "--dport"
    values: tuple[str, ...]
    negated: bool = False


@dataclass(frozen=True)
class Match:
    name: str  # "tcp", "comment", ...
    options: tuple[Option, ...]

    def get(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def require(self, name: str, rule: Rule) -> Option:
        """The option ``name``, which this match of ``rule`` cannot go without."""
        option = self.get(name)
        if option is None:
            raise RuleError(f"match {self.name} without {name}: {rule.text!r}")
        return option


@dataclass(frozen=True)
class Rule:
    chain: str
    generic: tuple[tuple[str, str, bool], ...]  # (field, value, negated) for src/dst/proto/in/out
    matches: tuple[Match, ...]
    target: str | None
    target_options: tuple[Option, ...]
    text: str = field(default="", compare=False)

    def generic_value(self, key: str) -> tuple[str, bool] | None:
        for name, value, negated in self.generic:
            if name == key:
                return value, negated
        return None

    @property
    def comment(self) -> str | None:
        for match in self.matches:
            if match.name == "comment":
                option = match.get("--comment")
                return option.values[0] if option else None
        return None


def tokenize(line: str) -> list[str]:
    """Split a rule line like iptables-restore does: words, or double-quoted strings."""
    return [m.group(1).replace('\\"', '"') if m.group(1) is not None else m.group(2)
            for m in _TOKEN.finditer(line)]


def parse_rule(line: str) -> Rule:
    """One ``-A CHAIN ...`` line."""
    tokens = tokenize(line)
    if len(tokens) < 2 or tokens[0] not in ("-A", "--append"):
        raise RuleError(f"not an -A rule: {line!r}")
    chain = tokens[1]
    generic: list[tuple[str, str, bool]] = []
    matches: list[tuple[str, list[Option]]] = []
    target: str | None = None
    target_options: list[Option] = []
    negate = False
    i = 2
    while i < len(tokens):
        token = tokens[i]
        if token == "!":
            negate = True
            i += 1
            continue
        if token in _GENERIC:
            generic.append((_GENERIC[token], tokens[i + 1], negate))
            negate = False
            i += 2
            continue
        if token in ("-m", "--match"):
            matches.append((tokens[i + 1], []))
            i += 2
            continue
        if token in ("-j", "--jump"):
            target = tokens[i + 1]
            i += 2
            continue
        if token in ("-g", "--goto"):
            raise RuleError(f"-g (goto) is not used by kube-proxy: {line!r}")
        if token.startswith("--"):
            values = []
            j = i + 1
            while j < len(tokens) and not tokens[j].startswith("-") and tokens[j] != "!":
                values.append(tokens[j])
                j += 1
            option = Option(token, tuple(values), negate)
            negate = False
            if target is not None:
                target_options.append(option)
            else:
                if not matches:
                    proto = next((v for k, v, _ in generic if k == "proto"), None)
                    if proto in ("tcp", "udp") and token in ("--dport", "--sport", "--destination-port",
                                                             "--source-port"):
                        matches.append((proto, []))  # the implicit protocol match
                    else:
                        raise RuleError(f"option {token} outside any match: {line!r}")
                matches[-1][1].append(option)
            i = j
            continue
        raise RuleError(f"cannot read {token!r} in {line!r}")
    return Rule(chain, tuple(generic), tuple(Match(n, tuple(o)) for n, o in matches), target,
                tuple(target_options), line)


@dataclass
class Tables:
    """Parsed rule text: table -> chain -> rules, plus the declared chains in order."""

    chains: dict[str, dict[str, list[Rule]]] = field(default_factory=dict)

    def table(self, name: str) -> dict[str, list[Rule]]:
        return self.chains.setdefault(name, {})


def parse_tables(text: str, base: Tables | None = None) -> Tables:
    """Parse restore input or save output. With ``base``, apply it as ``--noflush`` would:
    declared chains are flushed and refilled, others kept, ``-X`` deletes, ``-D`` and ``-I``
    delete and insert single rules."""
    tables = base if base is not None else Tables()
    current: dict[str, list[Rule]] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.table(line[1:])
            continue
        if line == "COMMIT":
            current = None
            continue
        if current is None:
            raise RuleError(f"line {number}: outside a table: {line!r}")
        if line.startswith(":"):
            current[line[1:].split()[0]] = []
        elif line.startswith(("-X ", "--delete-chain ")):
            chain = line.split()[1]
            if current.get(chain):
                raise RuleError(f"line {number}: -X {chain}: the chain is not empty")
            current.pop(chain, None)
        elif line.startswith(("-A ", "--append ")):
            rule = parse_rule(line)
            if rule.chain not in current:
                raise RuleError(f"line {number}: chain {rule.chain} was not declared")
            current[rule.chain].append(rule)
        elif line.startswith(("-D ", "-I ")):  # a rule deleted, or inserted at a position (1 = the top)
            words = line.split(None, 3)
            position = int(words[2]) if len(words) > 2 and words[2].isdigit() else None
            rest = (words[3] if len(words) > 3 else "") if position is not None else " ".join(words[2:])
            rule = parse_rule(f"-A {words[1]} {rest}")
            if rule.chain not in current:
                raise RuleError(f"line {number}: chain {rule.chain} does not exist")
            if words[0] == "-D":
                if rule not in current[rule.chain]:
                    raise RuleError(f"line {number}: -D {rule.chain}: no such rule")
                current[rule.chain].remove(rule)
            else:
                current[rule.chain].insert((position or 1) - 1, rule)
        else:
            raise RuleError(f"line {number}: cannot read {line!r}")
    return tables


# --------------------------------------------------------------------------- canonical form


def _address(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        return value


def _hex(value: str) -> str:
    if "/" in value:
        left, right = value.split("/", 1)
        return f"{_hex(left)}/{_hex(right)}"
    return hex(int(value, 0))


def _canonical_match(match: Match) -> tuple:
    options: list[tuple] = []
    for option in match.options:
        values = option.values
        if match.name == "statistic" and option.name == "--probability":
            values = (str(round(float(values[0]) * 2 ** 31)),)  # the kernel's 31-bit fraction
        elif match.name == "mark" and option.name == "--mark":
            values = (_hex(values[0]),)
        elif match.name == "conntrack" and option.name in ("--ctstate", "--ctstatus"):
            values = (",".join(sorted(values[0].split(","))),)
        options.append((option.name, values, option.negated))
    if match.name == "recent":
        names = {o[0] for o in options}
        if "--mask" not in names:
            options.append(("--mask", ("255.255.255.255",), False))
        if "--rsource" not in names and "--rdest" not in names:
            options.append(("--rsource", (), False))
    return match.name, tuple(sorted(options))


def _canonical_target(rule: Rule) -> tuple:
    target = rule.target
    options = [(o.name, o.values, o.negated) for o in rule.target_options]
    if target == "MARK":
        converted: list[tuple[str, tuple[str, ...], bool]] = []
        for name, values, negated in options:
            if name == "--or-mark":
                converted.append(("--set-xmark", (f"{_hex(values[0])}/{_hex(values[0])}",), negated))
            elif name == "--xor-mark":
                converted.append(("--set-xmark", (f"{_hex(values[0])}/0x0",), negated))
            elif name in ("--set-xmark", "--set-mark"):
                value = values[0] if "/" in values[0] else f"{values[0]}/0xffffffff"
                converted.append(("--set-xmark", (_hex(value),), negated))
            else:
                converted.append((name, values, negated))
        options = converted
    elif target == "REJECT" and not options:
        options = [("--reject-with", ("icmp-port-unreachable",), False)]
    return target, tuple(sorted(options))


def canonical_rule(rule: Rule) -> tuple:
    """The rule as iptables-save would print it, as a comparable value."""
    order = {"src": 0, "dst": 1, "in": 2, "out": 3, "proto": 4}
    generic = tuple(sorted(((k, _address(v) if k in ("src", "dst") else v.lower(), n) for k, v, n in rule.generic),
                           key=lambda g: order[g[0]]))
    return (rule.chain, generic, tuple(_canonical_match(m) for m in rule.matches), _canonical_target(rule))


def canonical_tables(text: str, chains: Iterable[str] | None = None) -> dict[str, dict[str, list[tuple]]]:
    """table -> chain -> canonical rules, optionally only for ``chains``."""
    wanted = set(chains) if chains is not None else None
    return {table: {chain: [canonical_rule(r) for r in rules] for chain, rules in table_chains.items()
                    if wanted is None or chain in wanted}
            for table, table_chains in parse_tables(text).chains.items()}


def saved_chain_lines(text: str) -> dict[str, dict[str, list[str]]]:
    """``iptables-save`` output -> table -> chain -> the rule lines exactly as printed."""
    result: dict[str, dict[str, list[str]]] = {}
    table: dict[str, list[str]] | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = result.setdefault(line[1:], {})
        elif table is not None and line.startswith(":"):
            table.setdefault(line[1:].split()[0], [])
        elif table is not None and line.startswith("-A "):
            table.setdefault(line.split()[1], []).append(line)
    return result


OWNED_CHAIN_PREFIXES = ("KUBE-", "cali-")  # kube-proxy's chains and the policy agent's


def owned_rule_lines(text: str, tables: Iterable[str]) -> list[str]:
    """``table chain: rule`` for every rule of a ``KUBE-*`` or ``cali-*`` chain of ``tables``,
    canonical, chains sorted and each chain's rules in order."""
    canonical = canonical_tables(text)
    return [f"{table} {chain}: {rule}" for table in tables
            for chain, rules in sorted(canonical.get(table, {}).items()) if chain.startswith(OWNED_CHAIN_PREFIXES)
            for rule in rules]
