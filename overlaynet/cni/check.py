"""CHECK and STATUS of a main plugin: what the kernel shows, judged against the mode.

- ``check``: the attachment ``prevResult`` describes is still as the mode plans it (cni.md §5:
  CHECK names every missing object). The attachment is planned again from ``prevResult``'s
  address and each step compared with what the kernel shows (interfaces and their bridge,
  addresses, routes, sysctls); every difference goes into one error, worded as the learner
  would look for it (``route 0.0.0.0/0 via 10.244.1.1 dev eth0 in the sandbox``);
- ``status``: the node is ready for ADDs (its netns exists, the mode finds what it needs in it),
  then the IPAM plugin's STATUS.

What it never does: change the kernel; it only observes.
"""

from __future__ import annotations

import ipaddress

from overlaynet.cni import spec
from overlaynet.cni.attachment import host_netns, plan_attachment, pod_info, prev_address, prev_result
from overlaynet.cni.delegation import delegate
from overlaynet.cni.invocation import Invocation
from overlaynet.cni.main_config import MainConfig
from overlaynet.datapath.plan import Address, Route, Sysctl, VethPair, netns_of
from overlaynet.errors import CniError, OverlaynetError
from overlaynet.kernel import netns, observe


def check(inv: Invocation, conf: dict, cfg: MainConfig) -> None:
    """The attachment of ``prevResult`` is as the mode plans it; the error names everything
    missing or wrong."""
    prev = prev_result(conf)
    if prev is None:
        raise CniError(spec.ERR_INVALID_CONFIG, "CHECK needs prevResult (the attachment's ADD result)")
    delegate(inv, conf, "CHECK")
    sandbox, host_ns = inv.env.netns, host_netns(inv, cfg)
    who = f"{inv.env.container_id}/{inv.env.ifname}"
    if not netns.exists(sandbox):
        raise CniError(spec.ERR_PLUGIN, f"CHECK {who}: CNI_NETNS {sandbox} does not exist")
    ip = prev_address(prev, inv.env.ifname)
    if ip is None:
        raise CniError(spec.ERR_PLUGIN, f"CHECK {who}: prevResult lists no IPv4 address for {inv.env.ifname}")
    plan = plan_attachment(inv, cfg, pod_info(inv, cfg, ip), fill_macs=False)
    missing: list[str] = []
    views: dict[str, dict] = {}

    def view(ns: str) -> dict:
        if ns not in views:
            try:
                views[ns] = {"links": {link["name"]: link for link in observe.observe_links(ns)},
                             "addresses": observe.observe_addresses(ns), "routes": observe.observe_routes(ns)}
            except OverlaynetError as exc:
                raise CniError(spec.ERR_PLUGIN, f"CHECK {who}: cannot read netns {ns}", str(exc)) from None
        return views[ns]

    if not netns.exists(host_ns):
        raise CniError(spec.ERR_PLUGIN, f'CHECK {who}: the node\'s network namespace "{host_ns}" does not exist')
    for step in plan:
        where = "the sandbox" if netns_of(step) == sandbox else "the node"
        if isinstance(step, VethPair):
            host_link = view(step.netns)["links"].get(step.name)
            if host_link is None:
                missing.append(f"interface {step.name} in {where}")
            elif step.master and host_link.get("master") != step.master:
                missing.append(f"interface {step.name} is not on bridge {step.master}")
            pod_link = view(step.peer_netns)["links"].get(step.peer_name)
            if pod_link is None:
                missing.append(f"interface {step.peer_name} in the sandbox")
            elif not pod_link["up"]:
                missing.append(f"interface {step.peer_name} in the sandbox is down")
        elif isinstance(step, Address):
            if not any(a["dev"] == step.dev and a["cidr"] == step.cidr for a in view(step.netns)["addresses"]):
                missing.append(f"address {step.cidr} on {step.dev} in {where}")
        elif isinstance(step, Route):
            if not any(_route_matches(step, r) for r in view(step.netns)["routes"]):
                missing.append(f"{_route_words(step)} in {where}")
        elif isinstance(step, Sysctl):
            try:
                value = observe.observe_sysctl(step.netns, step.key)
            except OverlaynetError:
                value = None
            if value != step.value:
                missing.append(f"sysctl {step.key}={step.value} in {where} (is {value})")
    if missing:
        raise CniError(spec.ERR_PLUGIN, f"CHECK {who}: missing or wrong: " + "; ".join(missing))


def _route_matches(step: Route, seen: dict) -> bool:
    dst = "0.0.0.0/0" if step.dst == "default" else str(ipaddress.ip_network(step.dst, strict=False))
    return (seen["dst"] == dst and seen["type"] == step.type
            and (step.gateway is None or seen["gateway"] == step.gateway)
            and (step.dev is None or seen["dev"] == step.dev))


def _route_words(step: Route) -> str:
    words = ["route", step.dst]
    if step.gateway:
        words += ["via", step.gateway]
    if step.dev:
        words += ["dev", step.dev]
    return " ".join(words)


def status(inv: Invocation, conf: dict, cfg: MainConfig) -> None:
    """The node can take ADDs: else ``ERR_NOT_AVAILABLE`` with the mode's reason."""
    host_ns = host_netns(inv, cfg)
    if not netns.exists(host_ns):
        raise CniError(spec.ERR_NOT_AVAILABLE, f'the node\'s network namespace "{host_ns}" does not exist')
    problem = cfg.mode.status_problem(cfg.options, observe.observe_links(host_ns), observe.observe_routes(host_ns))
    if problem is not None:
        raise CniError(spec.ERR_NOT_AVAILABLE, *problem)
    delegate(inv, conf, "STATUS")
