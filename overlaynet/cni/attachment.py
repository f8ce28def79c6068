"""One pod attachment as the main plugin sees it (pure): which namespaces, the mode's plan
for it, and what a previous result says about it.

What this module owns: the pod and namespaces of an invocation (``pod_info``, ``host_netns``),
the mode's attachment plan without the sandbox (``plan_attachment``, MACs filled in when the
mode leaves them to the kernel, so the result names them without reading them back), the veth
of that plan (``veth_of``), and the reading of ``prevResult`` (``prev_result``,
``prev_address``) and of an IPAM result (``first_ipv4``). ADD, DEL (``main_plugin``) and CHECK
(``check``) share these.

What it never does: touch the kernel or run the IPAM plugin.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from typing import Any

from overlaynet import names
from overlaynet.cni import spec
from overlaynet.cni.invocation import Invocation
from overlaynet.cni.main_config import MainConfig
from overlaynet.cni.spec import Result
from overlaynet.datapath.plan import Netns, Plan, Step, VethPair
from overlaynet.datapath.topology import PodInfo
from overlaynet.errors import CniError, OverlaynetError


def host_netns(inv: Invocation, cfg: MainConfig) -> str:
    """Where the host side goes: ``overlaynet.node.netns``, else the runtime's (the node's)."""
    return cfg.node_netns or inv.runtime_netns


def pod_info(inv: Invocation, cfg: MainConfig, ip: ipaddress.IPv4Address) -> PodInfo:
    """The pod of this invocation (``CNI_ARGS`` ``K8S_POD_*``) with address ``ip``."""
    return PodInfo(namespace=inv.env.pod_namespace, name=inv.env.pod_name, ip=ip, node=cfg.node.name,
                   netns=inv.env.netns, host_netns=host_netns(inv, cfg),
                   container_id=inv.env.container_id, ifname=inv.env.ifname)


def plan_attachment(inv: Invocation, cfg: MainConfig, pod: PodInfo, fill_macs: bool) -> Plan:
    """The mode's attachment plan for this config's options, without the sandbox (the
    runtime's), with MACs chosen here when the mode leaves them to the kernel: derived from
    the attachment (container ID, sandbox, interface), so a newer attachment of the same pod
    name has other MACs and a retried ADD of the same one the same."""
    try:
        plan = cfg.mode.plan_pod(cfg.spec, cfg.node, pod, cfg.options)
    except (OverlaynetError, ValueError) as exc:
        raise CniError(spec.ERR_PLUGIN, f"cannot plan the attachment: {exc}") from None
    attachment = (inv.env.container_id, inv.env.netns, inv.env.ifname)
    out: list[Step] = []
    for step in plan:
        if isinstance(step, Netns):
            continue  # the runtime owns the sandbox; a plugin never creates or deletes it
        if isinstance(step, VethPair) and fill_macs:
            changes: dict[str, Any] = {}
            if step.mac is None:
                changes["mac"] = names.derived_mac(*attachment, "host")
            if step.peer_mac is None:
                changes["peer_mac"] = names.derived_mac(*attachment, "pod")
            step = dataclasses.replace(step, **changes)
        out.append(step)
    return tuple(out)


def veth_of(plan: Plan, inv: Invocation) -> VethPair:
    """The plan's veth whose pod end is ``CNI_IFNAME``."""
    for step in plan:
        if isinstance(step, VethPair) and step.peer_name == inv.env.ifname:
            return step
    raise CniError(spec.ERR_PLUGIN, f"the mode's plan has no veth for {inv.env.ifname}")


def first_ipv4(result: Result, ipam_type: str) -> tuple[ipaddress.IPv4Interface, str | None]:
    """The first IPv4 address of an IPAM result, and its gateway."""
    for ip in result.ips:
        iface = ipaddress.ip_interface(ip.address)
        if isinstance(iface, ipaddress.IPv4Interface):
            return iface, ip.gateway
    raise CniError(spec.ERR_PLUGIN, f"ipam plugin {ipam_type} returned no IPv4 address",
                   f"ips: {[ip.address for ip in result.ips]}")


def prev_result(conf: Mapping) -> Result | None:
    prev = conf.get("prevResult")
    return Result.from_dict(prev, "prevResult") if isinstance(prev, dict) else None


def prev_address(prev: Result | None, ifname: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address prevResult gives the sandbox interface ``ifname``."""
    if prev is None:
        return None
    for ip in prev.ips:
        iface = ipaddress.ip_interface(ip.address)
        if not isinstance(iface, ipaddress.IPv4Interface):
            continue
        if ip.interface is None or (prev.interfaces[ip.interface].name == ifname
                                    and prev.interfaces[ip.interface].sandbox):
            return iface.ip
    return None
