"""What ``overlaynet doctor`` looks at, read from this host in one place.

What this module owns: ``observe_host()``, which fills a ``tools.doctor.HostFacts``: the
process's effective capabilities; the kernel features, each proven by creating it (a network
namespace, a veth pair, a bridge, a VXLAN device, an nf_tables table through iptables-nft)
inside one throwaway namespace that is always deleted again, since ``/sys/module`` does not
list what is built in; the iptables backends' rule counts and FORWARD policies on the host;
``ip_forward``, br_netfilter's sysctl and the ARP table limits; the programs on the PATH and
the reference CNI plugins.

What it never does: change anything that outlives the call (the probe namespace and what is
in it go with it), load modules by hand, or judge what it reads (``tools.doctor`` does).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from overlaynet.errors import KernelError
from overlaynet.kernel import host, netns
from overlaynet.tools.doctor import CNI_PLUGIN_DIR, CNI_PLUGINS, PROGRAMS, HostFacts

_CAPABILITIES = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21}
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/local/sbin", "/usr/sbin", "/sbin"])
_TIMEOUT = 20


def observe_host() -> HostFacts:
    capabilities = _effective_capabilities()
    root = capabilities == frozenset(_CAPABILITIES)
    programs = {name: shutil.which(name, path=_SEARCH_PATH) for program in PROGRAMS for name in program.names}
    legacy_saved = _legacy_save() if root else None
    nft_saved = _run([_sibling("iptables-nft-save")]) if root else None
    return HostFacts(
        euid=os.geteuid(),
        capabilities=capabilities,
        kernel=_probe_kernel() if root else {},
        iptables_version=_run([shutil.which("iptables", path=_SEARCH_PATH), "--version"]),
        legacy_rules=None if legacy_saved is None else _rule_count(legacy_saved),
        nft_rules=None if nft_saved is None else _rule_count(nft_saved),
        forward_policies=None if not root else {
            backend: policy for backend, saved in (("legacy", legacy_saved), ("nf_tables", nft_saved))
            if (policy := _forward_policy(saved or ""))},
        docker_chains=any(line.startswith((":DOCKER ", ":DOCKER-USER ")) for saved in (legacy_saved, nft_saved)
                          for line in (saved or "").splitlines()),
        ip_forward=_read("/proc/sys/net/ipv4/ip_forward"),
        bridge_nf_call_iptables=_read("/proc/sys/net/bridge/bridge-nf-call-iptables"),
        neighbour_limits=host.current_limits(),
        neighbour_limits_writable=all(os.access("/proc/sys/" + key.replace(".", "/"), os.W_OK)
                                      for key in host.NEIGHBOUR_TABLE_LIMITS),
        programs=programs,
        cni_plugins={p: os.access(os.path.join(CNI_PLUGIN_DIR, p), os.X_OK) for p in CNI_PLUGINS},
    )


def _effective_capabilities() -> frozenset[str]:
    with open("/proc/self/status") as status:
        effective = int(next(line for line in status if line.startswith("CapEff:")).split()[1], 16)
    return frozenset(name for name, bit in _CAPABILITIES.items() if effective & (1 << bit))


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _sibling(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH_PATH)


def _run(argv: list[str | None]) -> str | None:
    """The stdout of ``argv`` (a list, never a shell), or None when it is missing or fails."""
    if not all(argv):
        return None
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False)  # type: ignore[arg-type]
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def _legacy_save() -> str | None:
    """The host's legacy tables, only those the kernel already holds (listing a table that is
    not loaded would load it: ``/proc/net/ip_tables_names`` names the loaded ones)."""
    loaded = _read("/proc/net/ip_tables_names")
    if loaded is None:
        return ""
    saver = _sibling("iptables-legacy-save")
    texts = [_run([saver, "-t", table]) for table in loaded.split()]
    return None if any(t is None for t in texts) else "".join(t or "" for t in texts)


def _rule_count(saved: str) -> int:
    return sum(1 for line in saved.splitlines() if line.startswith("-A "))


def _forward_policy(saved: str) -> str | None:
    table = None
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif table == "filter" and line.startswith(":FORWARD "):
            return line.split()[1]
    return None


def _probe_kernel() -> dict[str, str | None]:
    """feature -> None when this kernel can make it, else the kernel's words; all in one
    namespace named after this process, deleted in every case."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    netns.sweep_throwaways("doctor")
    probe = netns.throwaway_name("doctor")
    found: dict[str, str | None] = {}
    try:
        try:
            netns.ensure(probe)
        except KernelError as exc:
            return {"netns": str(exc)}
        found["netns"] = None
        with netns.inside(probe):
            ipr = IPRoute(groups=0)
            try:
                for feature, request in (("veth", {"kind": "veth", "ifname": "probe-veth0", "peer": "probe-veth1"}),
                                         ("bridge", {"kind": "bridge", "ifname": "probe-br0"}),
                                         ("vxlan", {"kind": "vxlan", "ifname": "probe-vx0", "vxlan_id": 1,
                                                    "vxlan_port": 8472})):
                    try:
                        ipr.link("add", **request)
                        found[feature] = None
                    except NetlinkError as exc:
                        found[feature] = os.strerror(exc.code)
            finally:
                ipr.close()
        found["nf_tables"] = _probe_nf_tables(probe)
    finally:
        netns.delete(probe)
    return found


def _probe_nf_tables(probe: str) -> str | None:
    if os.path.isdir("/sys/module/nf_tables"):
        return None
    tool = _sibling("iptables-nft")
    if tool is None:
        return "not loaded as a module, and iptables-nft (to try it) is not installed"
    try:
        result = subprocess.run(["ip", "netns", "exec", probe, tool, "-t", "filter", "-L", "-n"],
                                capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"iptables-nft could not run: {exc}"
    return None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["iptables-nft failed"])[-1]
