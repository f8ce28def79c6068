"""Fakes of the control plane's seams (``overlaynet.control.seams``), for tests without root.

- ``FakeRuntime``: ``OfflineRuntime`` (plans applied and removed, namespaces made and
  deleted, conflists, pod addresses from the real IPAM plugin) with the fakes below, and
  CNI ADD failures on demand (``fail_add``);
- ``FakeIptables``: each node's tables as parsed rules; a restore is applied over them as
  ``iptables-restore --noflush`` applies it (declared chains flushed and refilled, ``-X``
  deletes, others kept), a jump is inserted once into its built-in chain;
- ``OfflineBird`` is the fake BIRD (configurations in memory, routes learned at once from the
  other daemons' announcements) and ``OfflineAgent`` the fake agent (what each key serves).
"""

from __future__ import annotations

from collections.abc import Iterable

from overlaynet.control.offline import OfflineAgent, OfflineBird, OfflineRuntime
from overlaynet.errors import CniError, OverlaynetError
from overlaynet.node import kubelet
from overlaynet.proxy.render import Jump
from overlaynet.proxy.rules import BUILTIN_CHAINS, Tables, parse_rule, parse_tables

__all__ = ["FakeIptables", "FakeRuntime", "OfflineAgent", "OfflineBird"]


class FakeIptables:
    def __init__(self) -> None:
        self.tables: dict[str, Tables] = {}  # netns -> its tables
        self.payloads: dict[str, list[str]] = {}  # netns -> every restore, in order
        self.inserted: list[tuple[str, Jump]] = []

    def _tables(self, netns: str) -> Tables:
        if netns not in self.tables:
            tables = Tables()
            for table, chains in BUILTIN_CHAINS.items():
                for chain in chains:
                    tables.table(table)[chain] = []
            self.tables[netns] = tables
        return self.tables[netns]

    def backend(self) -> str:
        return "nft"

    def chains(self, netns: str, backend: str, table: str) -> list[str]:
        return list(self._tables(netns).table(table))

    def ensure_jumps(self, netns: str, jumps: Iterable[Jump], backend: str) -> list[Jump]:
        added = []
        for jump in jumps:
            chain = self._tables(netns).table(jump.table)[jump.chain]
            rule = parse_rule(jump.rule)
            if rule not in chain:
                chain.insert(0, rule)
                added.append(jump)
                self.inserted.append((netns, jump))
        return added

    def ensure_chains(self, netns: str, chains: Iterable[tuple[str, str]], backend: str) -> None:
        for table, chain in chains:
            self._tables(netns).table(table).setdefault(chain, [])

    def restore(self, netns: str, payload: str, backend: str) -> None:
        parse_tables(payload, self._tables(netns))
        self.payloads.setdefault(netns, []).append(payload)

    def rules(self, netns: str, table: str, chain: str) -> list[str]:
        return [rule.text for rule in self._tables(netns).table(table).get(chain, [])]


class FakeRuntime(OfflineRuntime):
    def __init__(self) -> None:
        super().__init__()
        self.iptables = FakeIptables()
        self.fail_add: set[str] = set()  # pod names whose CNI ADD fails
        self.agent_started: list[str] = []  # socket paths

    def cni_add(self, state_dir: str, cluster: str,
                sandboxes: list[kubelet.Sandbox]) -> dict[kubelet.Sandbox, dict | OverlaynetError]:
        failing = [s for s in sandboxes if s.name in self.fail_add]
        outcomes = super().cni_add(state_dir, cluster, [s for s in sandboxes if s not in failing])
        outcomes.update({s: CniError(999, "failed to set up the pod network", "injected by the test")
                         for s in failing})
        return outcomes

    def start_agent(self, cluster: str, socket_path: str, log_path: str) -> int:
        self.agent_started.append(socket_path)
        return super().start_agent(cluster, socket_path, log_path)
