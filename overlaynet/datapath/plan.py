"""The vocabulary between planning and the kernel: one frozen dataclass per kernel object.

A plan is an ordered tuple of ``Step`` values. Planning code (``topology``, ``modes``) builds
plans without touching anything; ``overlaynet.kernel.apply`` makes each step true in the
kernel (idempotently, in order) and ``overlaynet.kernel.remove`` undoes steps (in reverse order,
succeeding when an object is already gone). Steps are plain data, so a plan can be printed,
compared against a golden file, or diffed between two CNI modes; the two ways a step is
written out live here too (``describe``: every field, for golden files; ``words``: as a
learner would type it, for errors).

Addresses are strings in the forms ``ip route`` prints (``10.244.1.0/24``, ``10.244.1.1``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Union


@dataclass(frozen=True)
class Netns:
    """A named network namespace (``/run/netns/<name>``), with ``lo`` up."""

    name: str


@dataclass(frozen=True)
class Sysctl:
    """A per-namespace sysctl, e.g. ``net.ipv4.ip_forward = 1``."""

    netns: str
    key: str
    value: str


@dataclass(frozen=True)
class Bridge:
    netns: str
    name: str
    mtu: int = 1500
    mac: str | None = None


@dataclass(frozen=True)
class VethPair:
    """A veth pair created in ``netns`` whose peer is moved into ``peer_netns``.

    Both ends come up; ``master`` enslaves the local end to a bridge.
    """

    netns: str
    name: str
    peer_netns: str
    peer_name: str
    mtu: int = 1500
    master: str | None = None
    mac: str | None = None
    peer_mac: str | None = None
    hairpin: bool = False


@dataclass(frozen=True)
class Vxlan:
    """A VXLAN device: ``id <vni> local <local> dev <dev> dstport <port> [no]learning``."""

    netns: str
    name: str
    vni: int
    local: str
    dev: str
    port: int
    mtu: int
    mac: str
    learning: bool = False


@dataclass(frozen=True)
class Address:
    """An address on a device, as ``ip addr add <cidr> dev <dev>`` (``cidr`` like 10.244.1.1/24)."""

    netns: str
    dev: str
    cidr: str


@dataclass(frozen=True)
class Route:
    """A route in the main table.

    ``type`` is ``unicast`` or ``blackhole``; ``scope`` is ``universe`` or ``link``;
    ``onlink`` sets RTNH_F_ONLINK (the gateway need not be on a connected subnet); ``proto`` is
    the route's origin as ``ip route`` names it (``boot`` when unset; ``bird``, or ``80`` for
    routes Calico's Felix programs).
    """

    netns: str
    dst: str
    gateway: str | None = None
    dev: str | None = None
    onlink: bool = False
    scope: str = "universe"
    type: str = "unicast"
    src: str | None = None
    proto: str | None = None


@dataclass(frozen=True)
class Neighbour:
    """A permanent neighbour entry: ``ip neigh replace <ip> lladdr <mac> dev <dev> nud permanent``."""

    netns: str
    dev: str
    ip: str
    mac: str


@dataclass(frozen=True)
class FdbEntry:
    """A forwarding entry: ``bridge fdb append <mac> dev <dev> dst <dst> self permanent``."""

    netns: str
    dev: str
    mac: str
    dst: str


@dataclass(frozen=True)
class ProxyNeighbour:
    """A proxy neighbour entry: ``ip neigh add proxy <ip> dev <dev>``. The kernel answers ARP
    requests for ``ip`` arriving on ``dev`` with ``dev``'s MAC address, when forwarding is on and
    the route to ``ip`` leaves by another device (net/ipv4/arp.c, arp_process)."""

    netns: str
    dev: str
    ip: str


Step = Union[Netns, Sysctl, Bridge, VethPair, Vxlan, Address, Route, Neighbour, FdbEntry, ProxyNeighbour]
Plan = tuple[Step, ...]


def describe(step: Step) -> str:
    """One line per step, for golden files and ``--dry-run`` output: ``Route netns=… dst=…``
    (every field; ``words`` is the short form errors use)."""
    parts = []
    for field in fields(step):
        value = getattr(step, field.name)
        if value is None or value is False or (field.name in ("scope", "type") and value in ("universe", "unicast")):
            continue
        parts.append(f"{field.name}={value}")
    return f"{type(step).__name__} " + " ".join(parts)


def netns_of(step: Step) -> str:
    """The namespace a step acts in (a ``Netns`` step: the one it creates)."""
    return step.name if isinstance(step, Netns) else step.netns


def words(step: Step) -> str:
    """The step as a learner would type it (``route 10.244.2.0/24 via 10.244.2.0 dev flannel.1``)."""
    if isinstance(step, Netns):
        return "create namespace"
    if isinstance(step, Sysctl):
        return f"sysctl {step.key}={step.value}"
    if isinstance(step, Bridge):
        return f"bridge {step.name}"
    if isinstance(step, VethPair):
        master = f", master {step.master}" if step.master else ""
        return f'veth {step.name} (peer {step.peer_name} in netns "{step.peer_netns}"{master})'
    if isinstance(step, Vxlan):
        return (f"vxlan {step.name} id {step.vni} local {step.local} dev {step.dev} "
                f"dstport {step.port}")
    if isinstance(step, Address):
        return f"address {step.cidr} dev {step.dev}"
    if isinstance(step, Route):
        parts = ["route"]
        if step.type != "unicast":
            parts.append(step.type)
        parts.append(step.dst)
        if step.gateway:
            parts += ["via", step.gateway]
        if step.dev:
            parts += ["dev", step.dev]
        if step.scope != "universe":
            parts += ["scope", step.scope]
        if step.src:
            parts += ["src", step.src]
        if step.onlink:
            parts.append("onlink")
        return " ".join(parts)
    if isinstance(step, Neighbour):
        return f"neighbour {step.ip} lladdr {step.mac} dev {step.dev}"
    if isinstance(step, FdbEntry):
        return f"fdb {step.mac} dev {step.dev} dst {step.dst}"
    if isinstance(step, ProxyNeighbour):
        return f"neighbour proxy {step.ip} dev {step.dev}"
    return repr(step)


def namespaces(plan: Plan) -> list[str]:
    """The namespaces a plan creates, in creation order (what ownership records must name)."""
    return [step.name for step in plan if isinstance(step, Netns)]
