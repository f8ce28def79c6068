"""NetworkPolicies -> the ``filter`` table rules one node enforces them with (pure).

The layout is Calico's (Felix's ``cali-*`` chains, shared/reference/calico.md), with the
dispatch of kube-router for bridged pods:

    FORWARD -> cali-FORWARD                     (kept first in FORWARD, ahead of kube-proxy's ACCEPTs)
    cali-FORWARD: RELATED,ESTABLISHED -> RETURN (replies of allowed connections)
                  from a local pod     -> cali-fw-<iface>   (its egress)
                  to a local pod       -> cali-tw-<iface>   (its ingress)
    INPUT -> cali-INPUT: the same egress dispatch for a pod's traffic to its own node
    cali-fw-/cali-tw-<iface>: clear the accept mark, then each selecting policy's chain;
                  RETURN as soon as one set the mark; DROP at the end (nothing allowed it)
    cali-po-/cali-pi-<hash>: one rule per (rule, peer address, port) that sets the accept
                  mark 0x10000; ipBlock peers with ``except`` get their own chain
                  cali-pb-<hash> (RETURN for each except range, then the mark)

Allowed traffic RETURNs to FORWARD (kube-proxy's rules and the chain's policy decide the
rest); the policy chains only ever drop. Chains exist only for pods some policy isolates, so
a cluster without policies carries an empty ``cali-FORWARD``.

Matching the pod's interface: in the routed mode every pod has its own ``cali*`` veth, so
``-i``/``-o`` name it. On a bridge (the vxlan mode) same-node traffic is bridged, seen by
FORWARD only through br_netfilter (``bridge-nf-call-iptables=1`` in the node's netns); the
interface a packet came from is ``--physdev-in <veth>`` (for bridged and routed packets
alike), while the bridge port it leaves by is unknown for routed packets, so traffic *to*
a pod is matched by its address, as kube-router does.

Peers are written out as one rule per address (ipset is not installed on the machines we
target; a course cluster has tens of pods, not thousands). Every rule's comment names the
policy and the rule index. Traffic the node itself sends to its pods never crosses FORWARD,
so it is always allowed (kubelet probes keep working), as the Kubernetes docs require.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from overlaynet.api.netpol import EGRESS, INGRESS, NetworkPolicy, Peer, PolicyPort
from overlaynet.policy.semantics import PodEndpoint, PolicyView, isolating, peer_pods, resolve_port, selects
from overlaynet.proxy.render import Jump

FORWARD_CHAIN = "cali-FORWARD"
INPUT_CHAIN = "cali-INPUT"  # a pod's egress to its own node arrives here, not in FORWARD
CHAIN_PREFIX = "cali-"
ACCEPT_MARK = "0x10000/0x10000"  # Felix's default "accept" mark bit
CLEAR_MARK = "0x0/0x10000"
CHAIN_MAX = 28  # iptables' chain name limit (XT_EXTENSION_MAXNAMELEN - 1)
COMMENT_MAX = 256  # xt_comment's XT_MAX_COMMENT_LEN, with its NUL


@dataclass(frozen=True)
class LocalPod:
    """A pod on the node being rendered, with the host side of its veth."""

    pod: PodEndpoint
    interface: str


@dataclass(frozen=True)
class PolicyRuleset:
    payload: str
    chains: tuple[str, ...]
    jumps: tuple[Jump, ...]
    moves: str  # a second restore payload: each jump deleted and inserted again at the top
    pod_chains: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # key -> (tw, fw)
    policy_chains: dict[str, str] = field(default_factory=dict)  # cali-pi-/cali-po- chain -> policy key

    def chain_owners(self) -> dict[str, str]:
        """Chain -> what it enforces (``pod shop/api``, ``policy shop/deny``), for ``rules``."""
        owners = {chain: f"policy {key}" for chain, key in self.policy_chains.items()}
        for key, chains in self.pod_chains.items():
            owners.update({chain: f"pod {key}" for chain in chains if chain})
        return owners


def policy_hash(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:16]


def ingress_chain(policy: NetworkPolicy) -> str:
    return f"cali-pi-{policy_hash(policy.namespace, policy.name)}"


def egress_chain(policy: NetworkPolicy) -> str:
    return f"cali-po-{policy_hash(policy.namespace, policy.name)}"


def to_workload_chain(interface: str) -> str:
    return f"cali-tw-{interface}"


def from_workload_chain(interface: str) -> str:
    return f"cali-fw-{interface}"


def is_policy_chain(chain: str) -> bool:
    return chain.startswith(CHAIN_PREFIX) and chain not in (FORWARD_CHAIN, INPUT_CHAIN)


def policy_jumps() -> tuple[Jump, ...]:
    """FORWARD -> cali-FORWARD (pod traffic) and INPUT -> cali-INPUT (pods to their node)."""
    return tuple(Jump("filter", builtin, target, ("-m", "comment", "--comment", "network policy (overlaynet)",
                                                 "-j", target))
                 for builtin, target in (("FORWARD", FORWARD_CHAIN), ("INPUT", INPUT_CHAIN)))


def _quote(words: list[str]) -> str:
    return " ".join(f'"{w}"' if " " in w or not w else w for w in words)


class _Writer:
    """Rules grouped by chain, chains in the order they were first named."""

    def __init__(self) -> None:
        self.rules: dict[str, list[str]] = {}

    @property
    def chains(self) -> list[str]:
        return list(self.rules)

    def chain(self, name: str) -> str:
        if len(name) > CHAIN_MAX:
            raise ValueError(f"chain name {name!r} is over {CHAIN_MAX} characters")
        self.rules.setdefault(name, [])
        return name

    def add(self, chain: str, *words: str, comment: str | None = None) -> None:
        """``-A chain <matches> [-m comment --comment ...] -j <target ...>``."""
        split = words.index("-j")
        parts = ["-A", chain, *words[:split]]
        if comment:  # long names (a 253-character policy or pod) are cut to what xt_comment holds
            parts += ["-m", "comment", "--comment",
                      comment if len(comment) < COMMENT_MAX else comment[:COMMENT_MAX - 4] + "..."]
        self.rules[chain].append(_quote([*parts, *words[split:]]))


def _port_matches(spec: PolicyPort, destination: PodEndpoint | None) -> list[str] | None:
    """The ``-p ... --dport`` words for ``spec`` at ``destination``; None if it cannot resolve."""
    span = resolve_port(spec, destination)
    if span is None:
        return None
    words = ["-p", spec.protocol.lower()]
    if span != (1, 65535):
        words += ["--dport", f"{span[0]}:{span[1]}" if span[1] != span[0] else str(span[0])]
    return words


def _render_policy(writer: _Writer, view: PolicyView, policy: NetworkPolicy, direction: str,
                   local: list[PodEndpoint]) -> str:
    """The ``cali-pi-``/``cali-po-`` chain of ``policy``: one rule setting the accept mark per
    allowed (peer, port); ``local`` are the node's pods the policy selects (named ports of
    ingress resolve against them)."""
    ingress = direction == INGRESS
    chain = writer.chain(ingress_chain(policy) if ingress else egress_chain(policy))
    rules = policy.ingress if ingress else policy.egress
    peer_flag, self_flag = ("-s", "-d") if ingress else ("-d", "-s")
    field_name = "from" if ingress else "to"

    def mark(words: list[str], comment: str) -> None:
        writer.add(chain, *words, "-j", "MARK", "--set-xmark", ACCEPT_MARK, comment=comment)

    if not rules:
        writer.add(chain, "-j", "RETURN", comment=f"{policy.key} {direction.lower()}: no rules (deny all)")
    for r_index, rule in enumerate(rules):
        where = f"{policy.key} {direction.lower()}[{r_index}]"
        # per resolved peer: its match words, its label, the pod it is (named ports of egress
        # resolve against it) or the ipBlock peer it came from
        targets: list[tuple[list[str], str, PodEndpoint | None, Peer | None]] = []
        if not rule.peers:
            targets.append(([], "any peer", None, None))
        for p_index, peer in enumerate(rule.peers):
            label = f"{field_name}[{p_index}]"
            if peer.ip_block is not None:
                targets.append(([], label, None, peer))
            else:
                for pod in peer_pods(view, policy, peer):
                    targets.append(([peer_flag, f"{pod.ip}/32"], f"{label} {pod.key}", pod, None))
        ports: list[PolicyPort | None] = list(rule.ports) or [None]
        for peer_words, label, peer_pod, block_peer in targets:
            for p_index, spec in enumerate(ports):
                port_label = "" if spec is None else f" ports[{p_index}]"
                comment = f"{where} {label}{port_label}"
                # named ports resolve at the destination: the peer (egress) or each local pod (ingress)
                if spec is not None and isinstance(spec.port, str):
                    destinations: list[tuple[PodEndpoint | None, list[str]]]
                    if ingress:
                        destinations = [(pod, [self_flag, f"{pod.ip}/32"]) for pod in local]
                    elif rule.peers and block_peer is None:
                        destinations = [(peer_pod, [])]
                    elif not rule.peers:
                        destinations = [(pod, ["-d", f"{pod.ip}/32"]) for pod in view.pods if pod.ip]
                    else:
                        destinations = []  # an ipBlock destination has no named ports
                    variants = [(extra, _port_matches(spec, pod)) for pod, extra in destinations]
                else:
                    variants = [([], [] if spec is None else _port_matches(spec, None))]
                for extra, port_words in variants:
                    if port_words is None:
                        continue
                    if block_peer is not None and block_peer.ip_block is not None:
                        block = block_peer.ip_block
                        if block.excepts:
                            sub = writer.chain(f"cali-pb-{policy_hash(chain, comment, *extra)}")
                            for e_index, excluded in enumerate(block.excepts):
                                writer.add(sub, peer_flag, str(excluded), "-j", "RETURN",
                                           comment=f"{comment} except[{e_index}]")
                            writer.add(sub, peer_flag, str(block.cidr), *extra, *port_words, "-j", "MARK",
                                       "--set-xmark", ACCEPT_MARK, comment=f"{comment} ipBlock {block.cidr}")
                            writer.add(chain, "-j", sub, comment=f"{comment} ipBlock with except")
                            continue
                        mark([peer_flag, str(block.cidr), *extra, *port_words], f"{comment} ipBlock {block.cidr}")
                    else:
                        mark([*peer_words, *extra, *port_words], comment)
    return chain


def render(view: PolicyView, local_pods: list[LocalPod], bridged: bool,
           existing_chains: Iterable[str] = ()) -> PolicyRuleset:
    """The node's policy chains as an ``iptables-restore --noflush`` payload for ``filter``:
    every chain declared (flushed) and refilled, and the ``existing_chains`` no policy needs
    any more deleted; ``moves`` puts the jumps from FORWARD and INPUT back at the top."""
    writer = _Writer()
    forward, to_host = writer.chain(FORWARD_CHAIN), writer.chain(INPUT_CHAIN)
    for chain in (forward, to_host):
        writer.add(chain, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN",
                   comment="replies of allowed connections")
    policy_chains: dict[tuple[str, str], str] = {}
    pod_chains: dict[str, tuple[str | None, str | None]] = {}
    tw_rules: list[tuple[list[str], str, str]] = []
    node_pods = [p.pod for p in local_pods]
    for local in sorted(local_pods, key=lambda p: p.pod.key):
        pod = local.pod
        chosen: dict[str, str | None] = {}
        for direction in (EGRESS, INGRESS):
            policies = isolating(view, pod, direction)
            if not policies:
                chosen[direction] = None
                continue
            name = writer.chain((to_workload_chain if direction == INGRESS else from_workload_chain)(local.interface))
            chosen[direction] = name
            writer.add(name, "-j", "MARK", "--set-xmark", CLEAR_MARK, comment="start: clear the accept mark")
            itself = ["-s" if direction == INGRESS else "-d", f"{pod.ip}/32"]
            writer.add(name, *itself, "-j", "RETURN", comment=f"{pod.key} itself (hairpin through a Service)")
            for policy in policies:
                key = (policy.key, direction)
                if key not in policy_chains:
                    mine = [p for p in node_pods if selects(policy, p) and p.ip]
                    policy_chains[key] = _render_policy(writer, view, policy, direction, mine)
                writer.add(name, "-j", policy_chains[key], comment=f"policy {policy.key}")
                writer.add(name, "-m", "mark", "--mark", ACCEPT_MARK, "-j", "RETURN",
                           comment=f"allowed by {policy.key}")
            writer.add(name, "-j", "DROP",
                       comment=f"{pod.key}: no {direction.lower()} policy allowed it")
            if direction == EGRESS:
                match = ["-m", "physdev", "--physdev-in", local.interface] if bridged else ["-i", local.interface]
                writer.add(forward, *match, "-j", name, comment=f"from pod {pod.key}: egress policy")
                writer.add(to_host, *match, "-j", name, comment=f"from pod {pod.key} to this node: egress policy")
            else:
                match = ["-d", f"{pod.ip}/32"] if bridged else ["-o", local.interface]
                tw_rules.append((match, name, f"to pod {pod.key}: ingress policy"))
        pod_chains[pod.key] = (chosen[INGRESS], chosen[EGRESS])
    for match, name, comment in tw_rules:
        writer.add(forward, *match, "-j", name, comment=comment)
    jumps = policy_jumps()
    stale = [c for c in existing_chains if is_policy_chain(c) and c not in writer.chains]
    moves = [line for jump in jumps for line in (jump.rule.replace(f"-A {jump.chain}", f"-D {jump.chain}", 1),
                                                 jump.rule.replace(f"-A {jump.chain}", f"-I {jump.chain} 1", 1))]
    lines = ["*filter", *(f":{c} - [0:0]" for c in writer.chains), *(f":{c} - [0:0]" for c in stale),
             *(rule for rules in writer.rules.values() for rule in rules), *(f"-X {c}" for c in stale),
             "COMMIT", ""]
    return PolicyRuleset("\n".join(lines), tuple(writer.chains), jumps, "\n".join(["*filter", *moves, "COMMIT", ""]),
                         pod_chains, {chain: key for (key, _), chain in policy_chains.items()})
