"""The only code that runs iptables: one ``iptables-restore`` per sync, inside a node's netns.

What this module owns:
- ``backend()``: which iptables backend the host uses, ``"legacy"`` or ``"nf_tables"``
  (what ``iptables -V`` reports for the host's ``iptables`` alternative, as kube-proxy
  follows the host), overridable by argument or ``$OVERLAYNET_IPTABLES_BACKEND``;
- ``restore(netns, payload, backend)``: one ``iptables[-legacy|-nft]-restore -w 5 -W 100000
  --noflush --counters`` (kube-proxy's flags, reference/kube-proxy.md §7), the payload on
  stdin, run through ``ip netns exec <netns>`` as an argv list (never a shell);
- ``ensure_jumps(netns, jumps, backend)``: kube-proxy's EnsureChain + EnsureRule(Prepend)
  for the jumps from built-in chains: ``-N`` the target if missing, ``-C``, and ``-I`` only
  when the check fails - idempotent, existing jumps are not moved;
- ``ensure_chains(netns, chains, backend)``: EnsureChain alone (``-N``, an existing chain is
  fine), as for kube-proxy's canary chains;
- ``save(netns, backend, table=None)``: ``iptables-save`` text;
- ``chains(netns, backend, table)``: the chain names of a table (for stale-chain detection).

Errors are ``KernelError`` naming the netns, the command and iptables' own message; a restore
error quotes the payload lines around the line iptables names (as kube-proxy logs them).
What it never does: compose rules (``proxy/render.py`` does), or pick a backend per table:
one backend per node (iptables-nft warns when legacy tables exist in the same netns).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable

from overlaynet.errors import HostError, InvalidInput, KernelError
from overlaynet.kernel import netns as netns_mod
from overlaynet.proxy.render import Jump

BACKENDS = ("legacy", "nf_tables")
BACKEND_ENV = "OVERLAYNET_IPTABLES_BACKEND"
_SUFFIX = {"legacy": "legacy", "nf_tables": "nft"}
WAIT = ("-w", "5", "-W", "100000")  # kube-proxy: wait up to 5 s for the xtables lock, poll every 100 ms
TIMEOUT = 1800  # seconds; an nf_tables restore of 10k services takes minutes on small VMs
_FAILED_LINE = re.compile(r"line (\d+) failed|Error occurred at line: (\d+)")


def backend(override: str | None = None) -> str:
    """The backend to use: ``override``, else ``$OVERLAYNET_IPTABLES_BACKEND``, else the
    host's (``iptables -V`` prints ``(nf_tables)`` or ``(legacy)``)."""
    choice = override or os.environ.get(BACKEND_ENV)
    if choice:
        aliases = {"nft": "nf_tables", "nftables": "nf_tables", "nf_tables": "nf_tables", "legacy": "legacy"}
        if choice not in aliases:
            source = "" if override else f" (from ${BACKEND_ENV})"
            raise InvalidInput(f'iptables backend "{choice}"{source} is not known (known: legacy, nf_tables)')
        return aliases[choice]
    iptables = shutil.which("iptables")
    if iptables is None:
        raise HostError("iptables is not installed: install the iptables package (1.8 or later)")
    result = subprocess.run([iptables, "-V"], capture_output=True, text=True, timeout=30)
    text = result.stdout + result.stderr
    if "nf_tables" in text:
        return "nf_tables"
    if "legacy" in text:
        return "legacy"
    return "legacy"  # iptables before 1.8 had only the legacy backend and says neither


def command(tool: str, backend_name: str) -> str:
    """The executable for ``tool`` (``iptables``, ``iptables-restore``, ``iptables-save``)."""
    if backend_name not in BACKENDS:
        raise InvalidInput(f'iptables backend "{backend_name}" is not known (known: legacy, nf_tables)')
    name = tool.replace("iptables", f"iptables-{_SUFFIX[backend_name]}", 1)
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise HostError(f"{name} is not installed: overlaynet needs iptables 1.8 or later with both backends "
                        "(Debian/Ubuntu: apt-get install iptables)")
    return path


def _in_netns(netns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def _run(netns: str, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(_in_netns(netns, argv), input=stdin, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise KernelError(f'netns "{netns}": {os.path.basename(argv[0])} did not finish within {TIMEOUT} s') from None


def _message(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in (result.stderr or result.stdout).splitlines()
             if line.strip() and "Ignoring deprecated --wait-interval" not in line and not line.startswith("Try `")]
    return "; ".join(lines) or f"exit status {result.returncode}"


def restore(netns: str, payload: str, backend_name: str, noflush: bool = True, counters: bool = True) -> None:
    """Load ``payload`` with one ``iptables-restore`` inside ``netns``.

    ``--noflush`` (the default, as kube-proxy) leaves undeclared chains alone and flushes and
    refills every declared one; the whole payload commits atomically per table or not at all.
    An empty payload (a minimal partial sync with nothing to write) runs nothing.
    """
    netns_mod.require(netns)
    if not payload:
        return
    argv = [command("iptables-restore", backend_name), *WAIT]
    if noflush:
        argv.append("--noflush")
    if counters:
        argv.append("--counters")
    result = _run(netns, argv, payload)
    if result.returncode != 0:
        message = _message(result)
        context = ""
        found = _FAILED_LINE.search(message)
        if found:
            number = int(found.group(1) or found.group(2))
            lines = payload.splitlines()
            low, high = max(1, number - 2), min(len(lines), number + 2)
            context = "\n" + "\n".join(f"{'>' if n == number else ' '} {n}: {lines[n - 1]}"
                                       for n in range(low, high + 1))
        raise KernelError(f'netns "{netns}": {os.path.basename(argv[0])} failed ({backend_name}): {message}{context}')


def _iptables(netns: str, backend_name: str, table: str, *args: str) -> subprocess.CompletedProcess:
    return _run(netns, [command("iptables", backend_name), *WAIT, "-t", table, *args])


def ensure_jumps(netns: str, jumps: Iterable[Jump], backend_name: str) -> list[Jump]:
    """Make sure each jump exists in its built-in chain, as kube-proxy's full sync does:
    ``-N`` the target chain (an existing one is fine), ``-C`` the rule, and ``-I`` it at the top
    only when the check fails, in order, so the last one inserted ends up first. Returns the
    jumps inserted. Call it before the full sync's restore, as kube-proxy does: on the legacy
    backend every iptables command reads and rewrites the whole table, so it is cheapest while
    the tables are still small."""
    jumps = list(jumps)
    ensure_chains(netns, dict.fromkeys((j.table, j.target) for j in jumps), backend_name)
    inserted = []
    for jump in jumps:
        check = _iptables(netns, backend_name, jump.table, "-C", jump.chain, *jump.args)
        if check.returncode == 0:
            continue
        if check.returncode != 1:
            raise KernelError(f'netns "{netns}": iptables -t {jump.table} -C {jump.chain} failed '
                              f"({backend_name}): {_message(check)}")
        result = _iptables(netns, backend_name, jump.table, "-I", jump.chain, *jump.args)
        if result.returncode != 0:
            raise KernelError(f'netns "{netns}": iptables -t {jump.table} -I {jump.chain} ... -j {jump.target} '
                              f"failed ({backend_name}): {_message(result)}")
        inserted.append(jump)
    return inserted


def ensure_chains(netns: str, chains: Iterable[tuple[str, str]], backend_name: str) -> None:
    """``-N`` each ``(table, chain)`` that is missing (kube-proxy's EnsureChain)."""
    netns_mod.require(netns)
    for table, chain in chains:
        result = _iptables(netns, backend_name, table, "-N", chain)
        if result.returncode != 0 and "already exists" not in _message(result):
            raise KernelError(f'netns "{netns}": iptables -t {table} -N {chain} failed ({backend_name}): '
                              f"{_message(result)}")


def save(netns: str, backend_name: str, table: str | None = None) -> str:
    """``iptables-save`` of ``netns`` (one table, or all)."""
    netns_mod.require(netns)
    argv = [command("iptables-save", backend_name)]
    if table:
        argv += ["-t", table]
    result = _run(netns, argv)
    if result.returncode != 0:
        raise KernelError(f'netns "{netns}": {os.path.basename(argv[0])} failed ({backend_name}): {_message(result)}')
    return result.stdout


def chains(netns: str, backend_name: str, table: str) -> list[str]:
    """The chains of ``table`` in ``netns`` (built-in and user), as iptables-save declares them."""
    return [line[1:].split()[0] for line in save(netns, backend_name, table).splitlines() if line.startswith(":")]
