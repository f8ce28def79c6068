"""The agent's drift watch: rtnetlink and nf_tables events in the namespaces it is told to
watch, and a tick.

This module owns two netlink sockets per watched namespace, made inside it: one bound to the
link, address, IPv4 route and neighbour groups (FDB entries arrive with the neighbours), one
to nf_tables' group (``NFNLGRP_NFTABLES``: what iptables-nft writes), and the timing of heal
passes. A deletion worth a look — a link (not one moved to another namespace, which is how a
CNI plugin hands a veth end to a pod), an address, a route of the main table, a neighbour or
FDB entry — asks for a pass with the kernel checked; a table, chain or rule deleted, or a rule
added, for a pass with the iptables rules checked (kube-proxy's and the policy agent's own
restores, too, ask for one: the check finds them as rendered). Either comes 100 ms later, so
that a burst of events (a namespace deleted takes its links with it) is one pass. The legacy
iptables backend sends no events: its rules are left to ``reconcile``. Every second a pass
without the kernel check runs too: processes (BIRD) die without a netlink event. A watched
namespace whose name is gone (or names another namespace now) is let go on that tick — the
socket alone would keep the deleted namespace, and its links, alive — and the kernel checked;
so it is when ``/run/netns`` changed (a pod's namespace deleted: the agent's sockets in it
keep it, and its veth, alive, so no link event tells). While it watches, it keeps the agent's
guardian (``agent.guardian``) running: started with the first watch, started again on the
tick after it died, ended when the watch is (``watch([])``), but not when the agent stops:
the agent's death is the guardian's to heal.

What it never does: decide what is drifted or repair it. The pass is the ``Heal`` callback
the agent was started with (``__main__`` wires the controller in); it runs in a worker thread
and answers None when the cluster is busy (an operation holds its lock), and then the pass is
asked for again on the next tick.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import subprocess
from collections.abc import Callable

from overlaynet.agent.testserver import netns_identity
from overlaynet.errors import KernelError
from overlaynet.kernel import netns

log = logging.getLogger("overlaynet.agent")

# One pass: (check the kernel state too, check the iptables rules too); returns what it
# repaired or reported (lines for the log), or None when the cluster was busy and nothing was
# looked at.
Heal = Callable[[bool, bool], list[str] | None]

SETTLE = 0.1  # seconds from the first event of a burst to its pass
TICK = 1.0  # seconds between passes without an event
MAIN_TABLE = 254
NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
# linux/netfilter/nf_tables.h: NFT_MSG_DELTABLE, NFT_MSG_DELCHAIN, NFT_MSG_NEWRULE, NFT_MSG_DELRULE
_RULE_CHANGES = frozenset((NFNL_SUBSYS_NFTABLES << 8) | message for message in (2, 5, 6, 8))
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port


def worth_a_look(message) -> bool:
    """A deletion that may be drift: not a new object, not a link moved to another namespace,
    not a route of another table (the local table follows the addresses)."""
    event = message.get("event")
    if event == "RTM_DELLINK":
        return message.get_attr("IFLA_NEW_NETNSID") is None
    if event == "RTM_DELROUTE":
        return message["table"] == MAIN_TABLE
    return event in ("RTM_DELADDR", "RTM_DELNEIGH")


def rules_touched(data: bytes) -> bool:
    """Whether a datagram of nf_tables events deletes a table, chain or rule, or adds a rule."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, *_ = _NLMSGHDR.unpack_from(data, offset)
        if kind in _RULE_CHANGES:
            return True
        if length < _NLMSGHDR.size:
            return False
        offset += (length + 3) & ~3
    return False


def _groups() -> int:
    """The multicast groups of the events watched: links, neighbours and FDB, routes, addresses."""
    netns.load_pyroute2()
    from pyroute2.netlink import rtnl

    return rtnl.RTMGRP_LINK | rtnl.RTMGRP_NEIGH | rtnl.RTMGRP_IPV4_ROUTE | rtnl.RTMGRP_IPV4_IFADDR


def _names_changed_at() -> int:
    """When a namespace name was last added or removed (``/run/netns``'s mtime)."""
    try:
        return os.stat(netns.NETNS_RUN_DIR).st_mtime_ns
    except FileNotFoundError:
        return 0


class Watcher:
    """Sockets on the watched namespaces, and the loop that runs heal passes."""

    def __init__(self, heal: Heal, guardian_argv: list[str] | None = None):
        self.heal = heal
        self.guardian_argv = guardian_argv  # None: no guardian (the agent's death is not healed)
        self.guardian: subprocess.Popen | None = None
        self.sockets: dict[str, tuple[socket.socket, tuple[int, int] | None]] = {}  # name -> socket, identity
        self.rule_sockets: dict[str, socket.socket] = {}  # name -> its nf_tables events
        self.marshal = None  # pyroute2's rtnetlink parser, loaded on the first watch (the agent stays light)
        self._kernel_changed = asyncio.Event()
        self._rules_changed = False  # with _kernel_changed set: the pass checks the rules
        self._task: asyncio.Task | None = None
        self._names_seen = _names_changed_at()

    def watch(self, names: list[str]) -> list[str]:
        """Watch exactly ``names`` from now on; return those that do not exist (not watched)."""
        loop = asyncio.get_running_loop()
        before = dict(self.sockets)
        for name in set(self.sockets) - set(names):
            self._let_go(name)
        missing = []
        if names and self.marshal is None:
            netns.load_pyroute2()
            from pyroute2.netlink.rtnl import marshal

            self.marshal = marshal.MarshalRtnl()
        for name in names:
            if name in self.sockets and self.sockets[name][1] == netns_identity(name):
                continue
            if name in self.sockets:
                self._let_go(name)
            identity = netns_identity(name)
            try:
                with netns.inside(name):
                    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                                         socket.NETLINK_ROUTE)
                    rules = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                                          NETLINK_NETFILTER)
            except (OSError, KernelError):  # the namespace is gone
                missing.append(name)
                continue
            for events, groups in ((sock, _groups()), (rules, 1 << (NFNLGRP_NFTABLES - 1))):
                events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                events.bind((0, groups))
            self.sockets[name] = (sock, identity)
            self.rule_sockets[name] = rules
            loop.add_reader(sock.fileno(), self._readable, name)
            loop.add_reader(rules.fileno(), self._rules_readable, name)
        if self.sockets and self._task is None:
            self._task = loop.create_task(self._passes())
        elif not self.sockets and self._task is not None:
            self._task.cancel()
            self._task = None
        if self.sockets:
            self._keep_guardian()
        elif not names:
            self._end_guardian()
        if self.sockets != before:
            log.info("self-heal: watching %d namespaces%s", len(self.sockets),
                     f" ({', '.join(missing)} missing)" if missing else "")
        return missing

    def _keep_guardian(self) -> None:
        """Start the guardian if there is none (any more)."""
        if self.guardian_argv is None or (self.guardian is not None and self.guardian.poll() is None):
            return
        if self.guardian is not None:
            log.warning("self-heal: the guardian (pid %d) exited with %s; starting another",
                        self.guardian.pid, self.guardian.returncode)
        try:  # its output goes where the agent's does; its own session: a kill of the agent's spares it
            self.guardian = subprocess.Popen(self.guardian_argv, stdin=subprocess.DEVNULL, cwd="/",
                                             start_new_session=True, close_fds=True)
        except OSError as exc:
            log.error("self-heal: cannot start the guardian: %s", exc)
            self.guardian = None
            return
        log.info("self-heal: guardian pid %d watches the agent", self.guardian.pid)

    def _end_guardian(self) -> None:
        if self.guardian is not None and self.guardian.poll() is None:
            self.guardian.kill()
            self.guardian.wait()
        self.guardian = None

    def _let_go(self, name: str) -> None:
        sock, _ = self.sockets.pop(name)
        for events in (sock, self.rule_sockets.pop(name)):
            asyncio.get_running_loop().remove_reader(events.fileno())
            events.close()

    @staticmethod
    def _drain(sock: socket.socket, touched: Callable[[bytes], bool]) -> bool:
        """Read every event waiting on ``sock``; True if one is ``touched`` or some were lost."""
        found = False
        while True:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return found
            except OSError:  # ENOBUFS: events were lost; look anyway
                found = True
                continue
            found = found or touched(data)

    def _rules_readable(self, name: str) -> None:
        if self._drain(self.rule_sockets[name], rules_touched):
            self._rules_changed = True
            self._kernel_changed.set()

    def _readable(self, name: str) -> None:
        sock, _ = self.sockets[name]
        if self._drain(sock, lambda data: any(worth_a_look(message) for message in self.marshal.parse(data))):
            self._kernel_changed.set()

    def _forget_deleted(self) -> None:
        """Let go of namespaces deleted (or replaced) under their name since the last tick."""
        seen = _names_changed_at()
        if seen != self._names_seen:
            self._names_seen = seen
            self._kernel_changed.set()
        for name, (_, identity) in list(self.sockets.items()):
            if netns_identity(name) != identity:
                log.info("self-heal: namespace %s was deleted", name)
                self._let_go(name)
                self._kernel_changed.set()

    async def _passes(self) -> None:
        loop = asyncio.get_running_loop()
        pending_kernel = pending_rules = False
        while True:
            try:
                async with asyncio.timeout(TICK):
                    await self._kernel_changed.wait()
                await asyncio.sleep(SETTLE)
            except TimeoutError:
                self._forget_deleted()
                self._keep_guardian()
            if self._kernel_changed.is_set():
                self._kernel_changed.clear()
                pending_kernel = True
                pending_rules = pending_rules or self._rules_changed
                self._rules_changed = False
            try:
                lines = await loop.run_in_executor(None, self.heal, pending_kernel, pending_rules)
            except Exception:
                log.exception("self-heal: the pass failed; again in %ss", TICK)
                continue
            if lines is None:  # the cluster was busy: the checks wait for the next pass
                continue
            pending_kernel = pending_rules = False
            for line in lines:
                log.info("self-heal: %s", line)

    def stop(self) -> None:
        """The agent stops: let go of every namespace, but leave the guardian be."""
        for name in list(self.sockets):
            self._let_go(name)
        if self._task is not None:
            self._task.cancel()
            self._task = None
