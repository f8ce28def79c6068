"""The vocabulary between planning and the kernel: one frozen dataclass per kernel object.

A plan is an ordered tuple of ``Step`` values. Planning code (``topology``, ``modes``) builds
plans without touching anything; ``overlaynet.kernel.apply`` makes each step true in the
kernel (idempotently, in order) and ``overlaynet.kernel.remove`` undoes steps (in reverse order,
succeeding when an object is already gone). Steps are plain data, so a plan can be printed,
compared against a golden file, or diffed between two CNI modes.

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


Step = Union[Netns, Sysctl, Bridge, VethPair, Vxlan, Address, Route, Neighbour, FdbEntry]
Plan = tuple[Step, ...]


def describe(step: Step) -> str:
    """One line per step, for golden files and ``--dry-run`` output: ``Route netns=… dst=…``."""
    parts = []
    for field in fields(step):
        value = getattr(step, field.name)
        if value is None or value is False or (field.name in ("scope", "type") and value in ("universe", "unicast")):
            continue
        parts.append(f"{field.name}={value}")
    return f"{type(step).__name__} " + " ".join(parts)


def namespaces(plan: Plan) -> list[str]:
    """The namespaces a plan creates, in creation order (what ownership records must name)."""
    return [step.name for step in plan if isinstance(step, Netns)]
