"""ADD and DEL of a main plugin: a pod's attachment made true in the kernel, and taken apart.

ADD checks the sandbox, gets an address from the IPAM plugin (``delegation``), applies the
mode's prerequisites (made when missing and never undone) and the attachment plan
(``attachment.plan_attachment``), and answers the result: the host veth (no ``sandbox``) and
the pod interface (``sandbox`` = ``CNI_NETNS``), the pod address with ``interface`` pointing
at the latter, the mode's sandbox routes and DNS: the shape the reference ``portmap`` and
``bandwidth`` plugins need. ADD fails if the interface exists in the sandbox and undoes
everything (plan and address) when any later step fails (cni.md §4-5).

DEL is idempotent and works without netns, prevResult or allocation: it takes the host side
apart unless ``prevResult`` shows that the veth of that name now has another MAC (a newer
attachment of the same pod name reuses the name), then releases the address.

What it never does: touch the kernel except through ``overlaynet.kernel``, or create or
delete the sandbox (the runtime's).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

from overlaynet.cni import spec
from overlaynet.cni.attachment import (
    first_ipv4,
    host_netns,
    plan_attachment,
    pod_info,
    prev_address,
    prev_result,
    veth_of,
)
from overlaynet.cni.delegation import delegate
from overlaynet.cni.invocation import Invocation
from overlaynet.cni.main_config import MainConfig
from overlaynet.cni.spec import Interface, IPConfig, Result, RouteEntry
from overlaynet.datapath.modes import IPAM_HOST_LOCAL, pod_cidr_of
from overlaynet.datapath.plan import Address, Plan, Route, VethPair, netns_of
from overlaynet.errors import CniError, OverlaynetError
from overlaynet.kernel import apply as kapply
from overlaynet.kernel import netns, observe

SCOPE_LINK = 253


# --------------------------------------------------------------------------- ADD


def _same_namespace(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(netns.path(a)), os.stat(netns.path(b))
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _check_sandbox(inv: Invocation, host_ns: str) -> None:
    """Before any work: the sandbox exists, is not the node's netns, and has no ``ifname``."""
    sandbox = inv.env.netns
    if not netns.exists(sandbox):
        raise CniError(spec.ERR_UNKNOWN_CONTAINER, f"CNI_NETNS {sandbox} does not exist")
    if not netns.exists(host_ns):
        raise CniError(spec.ERR_PLUGIN, f'the node\'s network namespace "{host_ns}" does not exist')
    if _same_namespace(sandbox, host_ns):
        raise CniError(spec.ERR_PLUGIN, f"CNI_NETNS {sandbox} is the node's own network namespace")
    try:
        taken = netns.ifindex(sandbox, inv.env.ifname) is not None
    except OverlaynetError as exc:
        raise CniError(spec.ERR_UNKNOWN_CONTAINER, f"CNI_NETNS {sandbox} is not a usable network namespace",
                       str(exc)) from None
    if taken:
        raise CniError(spec.ERR_PLUGIN, f'interface "{inv.env.ifname}" already exists in {sandbox}')


def add(inv: Invocation, conf: dict, cfg: MainConfig) -> Result:
    host_ns = host_netns(inv, cfg)
    _check_sandbox(inv, host_ns)
    ipam_result = delegate(inv, conf, "ADD")
    assert ipam_result is not None  # delegate returns the result of an ADD
    pod_steps: Plan = ()
    try:
        address, _ = first_ipv4(ipam_result, conf["ipam"]["type"])
        if cfg.mode.ipam == IPAM_HOST_LOCAL and address.ip not in pod_cidr_of(cfg.node):
            raise CniError(spec.ERR_INVALID_CONFIG,
                           f"ipam gave {address.ip}, outside the node's podCIDR {cfg.node.pod_cidr}")
        pod = pod_info(inv, cfg, address.ip)
        plan = plan_attachment(inv, cfg, pod, fill_macs=True)
        pod_steps = plan + _ipam_routes(inv, plan, ipam_result)
        prerequisites = cfg.mode.plan_pod_prerequisites(cfg.spec, cfg.node, host_ns, cfg.options)
        kapply.apply(prerequisites + pod_steps)
    except BaseException as exc:
        _undo(inv, conf, pod_steps, exc)
        raise
    return _result(inv, conf, cfg, pod_steps, ipam_result)


def _undo(inv: Invocation, conf: Mapping, steps: Plan, exc: BaseException) -> None:
    """After a failed ADD: take the attachment apart and give the address back."""
    if steps:
        try:
            kapply.remove(steps)
        except Exception as undo_exc:
            inv.log(f"undoing the failed ADD: {undo_exc}")
    try:
        delegate(inv, conf, "DEL")
    except CniError as del_exc:
        inv.log(f"releasing the address after the failed ADD ({exc}): {del_exc}")


def _ipam_routes(inv: Invocation, plan: Plan, ipam_result: Result) -> Plan:
    """IPAM routes the mode did not plan, in the sandbox via the IPAM gateway (as the bridge
    plugin installs them)."""
    planned = {step.dst for step in plan if isinstance(step, Route) and step.netns == inv.env.netns}
    gateway = next((ip.gateway for ip in ipam_result.ips if ip.gateway and ":" not in ip.gateway), None)
    extra = []
    for route in ipam_result.routes:
        dst = str(ipaddress.ip_network(route.dst, strict=False))
        if ":" in dst or dst in planned:
            continue
        gw = route.gw or gateway
        extra.append(Route(inv.env.netns, dst, gateway=gw, dev=inv.env.ifname,
                           scope="universe" if gw else "link"))
        planned.add(dst)
    return tuple(extra)


def _result(inv: Invocation, conf: Mapping, cfg: MainConfig, steps: Plan, ipam_result: Result) -> Result:
    """The ADD result: host veth (no sandbox), then the pod interface (sandbox = CNI_NETNS),
    its address (``interface`` = the pod interface's index), its routes, DNS."""
    version = spec.parse_version(conf["cniVersion"])
    veth = veth_of(steps, inv)
    prev = prev_result(conf) or Result()
    base = len(prev.interfaces)
    interfaces = [Interface(name=veth.name, mac=veth.mac, mtu=veth.mtu),
                  Interface(name=inv.env.ifname, mac=veth.peer_mac, mtu=veth.mtu, sandbox=inv.env.netns)]
    sandbox_routes = [s for s in steps if isinstance(s, Route) and s.netns == inv.env.netns]
    gateway = next((r.gateway for r in sandbox_routes if r.dst in ("0.0.0.0/0", "default") and r.gateway), None)
    ips = [IPConfig(address=s.cidr, gateway=gateway, interface=base + 1)
           for s in steps if isinstance(s, Address) and s.netns == inv.env.netns and s.dev == inv.env.ifname]
    routes = []
    for r in sandbox_routes:
        if r.scope == "link" and not r.gateway:
            if version < (1, 1, 0):
                continue  # without "scope", a gateway-less route would read "via the ips gateway"
            routes.append(RouteEntry(dst=r.dst, scope=SCOPE_LINK))
        else:
            routes.append(RouteEntry(dst="0.0.0.0/0" if r.dst == "default" else r.dst, gw=r.gateway))
    dns = cfg.dns or ipam_result.dns
    return Result(interfaces=prev.interfaces + interfaces, ips=prev.ips + ips, routes=prev.routes + routes,
                  dns=dns if (dns.nameservers or dns.domain or dns.search or dns.options) else prev.dns)


# --------------------------------------------------------------------------- DEL


def delete(inv: Invocation, conf: dict, cfg: MainConfig) -> None:
    """Idempotent: host side of the attachment (unless prevResult shows the veth of that name
    is another attachment's now), then the address."""
    host_ns = host_netns(inv, cfg)
    sandbox = inv.env.netns
    sandbox_there = bool(sandbox) and netns.exists(sandbox)
    prev = prev_result(conf)
    ip = prev_address(prev, inv.env.ifname)
    if ip is None and sandbox_there:
        try:
            for entry in observe.observe_addresses(sandbox):
                if entry["dev"] == inv.env.ifname:
                    ip = ipaddress.IPv4Interface(entry["cidr"]).ip
                    break
        except OverlaynetError:
            pass
    pod = pod_info(inv, cfg, ip or ipaddress.IPv4Address("0.0.0.0"))
    plan = plan_attachment(inv, cfg, pod, fill_macs=False)
    host_steps = tuple(s for s in plan if netns_of(s) != pod.netns)
    if netns.exists(host_ns):
        veth = veth_of(plan, inv)
        if prev is not None:
            listed = next((i for i in prev.interfaces if i.name == veth.name and not i.sandbox and i.mac), None)
            if listed is not None:
                current = next((link for link in observe.observe_links(host_ns) if link["name"] == veth.name), None)
                if current is not None and (current["mac"] or "").lower() != (listed.mac or "").lower():
                    inv.log(f"{veth.name} in {host_ns} has MAC {current['mac']}, not {listed.mac} as prevResult says: "
                            "it belongs to a newer attachment; leaving it")
                    host_steps = tuple(s for s in host_steps
                                       if not (isinstance(s, VethPair) and s.name == veth.name)
                                       and getattr(s, "dev", None) != veth.name)
        try:
            kapply.remove(host_steps)
        except OverlaynetError as exc:
            raise CniError(spec.ERR_PLUGIN,
                           f"DEL: cannot remove the host side of {inv.env.container_id}/{inv.env.ifname}",
                           str(exc)) from None
    delegate(inv, conf, "DEL")
