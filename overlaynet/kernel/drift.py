"""Which steps of a plan the kernel no longer shows: the reading half of reconciliation.

What this module owns: ``missing_steps(plan)``, the steps of ``plan`` whose object is absent
or different in the kernel, read once per namespace through ``kernel.observe`` (links,
addresses, routes, neighbours, FDB entries, sysctls), in the plan's order, so that applying
just those steps (``kernel.apply.apply``, idempotent) puts back what was deleted behind
overlaynet's back. A step in a namespace that is gone is missing, and so is everything the
plan puts in it.

What is compared is what a learner would notice and what the datapath needs: a link by name
and kind (a veth by both ends, and its bridge port; a vxlan device by VNI, local address and
port), an address by device and CIDR, a route by destination, device, gateway and type, a
neighbour by device, address and MAC, an FDB entry by device, MAC and remote VTEP, a sysctl by
value. MACs the plan leaves to the kernel and a link's up/down state are not compared.

What it never does: change anything; read a namespace the plan does not name.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from overlaynet.datapath.plan import (
    Address,
    Bridge,
    FdbEntry,
    Neighbour,
    Netns,
    Plan,
    Route,
    Step,
    Sysctl,
    VethPair,
    Vxlan,
)
from overlaynet.errors import KernelError
from overlaynet.kernel import netns, observe


class _View:
    """What one namespace shows, read on first need."""

    def __init__(self, name: str):
        self.name = name
        self.exists = netns.exists(name)
        self._cache: dict[Any, Any] = {}

    def _read(self, key: Any, read: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = read()
        return self._cache[key]

    def links(self) -> dict[str, dict]:
        return self._read("links", lambda: {link["name"]: link for link in observe.observe_links(self.name)})

    def addresses(self) -> set[tuple[str, str]]:
        return self._read("addresses", lambda: {(a["dev"], a["cidr"]) for a in observe.observe_addresses(self.name)})

    def routes(self) -> list[dict]:
        return self._read("routes", lambda: observe.observe_routes(self.name))

    def neighbours(self) -> set[tuple[str, str, str]]:
        return self._read("neighbours", lambda: {(n["dev"], n["ip"], (n["mac"] or "").lower())
                                                 for n in observe.observe_neighbours(self.name)})

    def fdb(self, dev: str) -> set[tuple[str, str | None]]:
        def read() -> set[tuple[str, str | None]]:
            try:
                return {((e["mac"] or "").lower(), e["dst"]) for e in observe.observe_fdb(self.name, dev)}
            except KernelError:  # the device is gone: so are its entries
                return set()
        return self._read(("fdb", dev), read)

    def sysctl(self, key: str) -> str | None:
        def read() -> str | None:
            try:
                return observe.observe_sysctl(self.name, key)
            except (KernelError, OSError):  # a per-device key of a device that is gone
                return None
        return self._read(("sysctl", key), read)


def _link_present(view: _View, name: str, kind: str) -> dict | None:
    link = view.links().get(name) if view.exists else None
    return link if link is not None and link["kind"] == kind else None


def _route_present(view: _View, step: Route) -> bool:
    wanted = str(ipaddress.ip_network(step.dst, strict=False))
    return any(
        route["dst"] == wanted and route["type"] == step.type
        and (step.dev is None or route["dev"] == step.dev)
        and (step.gateway is None or route["gateway"] == step.gateway)
        for route in view.routes()
    )


def _present(step: Step, view: _View, views: dict[str, _View]) -> bool:
    if not view.exists:
        return False
    if isinstance(step, Netns):
        return True
    if isinstance(step, Bridge):
        return _link_present(view, step.name, "bridge") is not None
    if isinstance(step, VethPair):
        host = _link_present(view, step.name, "veth")
        peer_view = views.setdefault(step.peer_netns, _View(step.peer_netns))
        return (host is not None and host["master"] == step.master
                and _link_present(peer_view, step.peer_name, "veth") is not None)
    if isinstance(step, Vxlan):
        link = _link_present(view, step.name, "vxlan")
        return link is not None and (link["vni"], link["local"], link["port"]) == (step.vni, step.local, step.port)
    if isinstance(step, Address):
        return (step.dev, step.cidr) in view.addresses()
    if isinstance(step, Route):
        return _route_present(view, step)
    if isinstance(step, Neighbour):
        return (step.dev, step.ip, step.mac.lower()) in view.neighbours()
    if isinstance(step, FdbEntry):
        return (step.mac.lower(), step.dst) in view.fdb(step.dev)
    if isinstance(step, Sysctl):
        return view.sysctl(step.key) == step.value
    return True  # a kind this module does not read (proxy ARP entries): never reported


def missing_steps(plan: Plan) -> list[Step]:
    """The steps of ``plan`` the kernel does not show, in the plan's order."""
    views: dict[str, _View] = {}
    missing = []
    for step in plan:
        ns = step.name if isinstance(step, Netns) else step.netns
        view = views.setdefault(ns, _View(ns))
        if not _present(step, view, views):
            missing.append(step)
    return missing
