"""Read-only views of kernel state, shaped for ``describe`` and for tests.

What this module owns: reading links, addresses, routes, neighbours, FDB entries and sysctls
of one named namespace (through a netlink socket opened while the calling thread is inside
it), and the host's own networks, and turning them into plain dicts and lists with the
words ``ip`` and ``bridge`` use (``PERMANENT``, ``onlink``, ``scope link``, ``self``), so a
learner can compare them with what they type. ``format_routes`` renders routes as
``ip route`` lines.

What it never does: change anything. Every function opens its own socket and closes it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterator
from typing import Any

from overlaynet.errors import KernelError
from overlaynet.kernel import netns
from overlaynet.kernel.apply import NTF_SELF, NUD_NOARP, NUD_PERMANENT, RT_TABLE_MAIN, RTNH_F_ONLINK, off_event_loop

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
RTNH_F_LINKDOWN = 0x10
AF_BRIDGE = 7
NTF_MASTER = 0x04
NTF_ROUTER = 0x80
NTF_EXT_LEARNED = 0x10
NTF_OFFLOADED = 0x20

_NUD = [  # (bit, name) in the order `ip neigh` prints them
    (0x01, "INCOMPLETE"), (0x02, "REACHABLE"), (0x04, "STALE"), (0x08, "DELAY"),
    (0x10, "PROBE"), (0x20, "FAILED"), (0x40, "NOARP"), (0x80, "PERMANENT"),
]
_SCOPE = {0: "universe", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
_TYPE = {0: "unspec", 1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast",
         6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat"}
_PROTO = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated",
          9: "ra", 11: "zebra", 12: "bird", 16: "dhcp", 186: "bgp", 188: "ospf"}


@contextlib.contextmanager
def _socket(ns: str | None) -> Iterator[Any]:
    from pyroute2 import IPRoute  # lazy: ~0.1 s

    if ns is None:
        ipr = IPRoute(groups=0)
    else:
        netns.require(ns)
        with netns.inside(ns):
            ipr = IPRoute(groups=0)
    try:
        yield ipr
    finally:
        ipr.close()


def _names(ipr: Any) -> dict[int, str]:
    return {link["index"]: link.get("ifname") for link in ipr.get_links()}


def _link_dict(link: Any, names: dict[int, str]) -> dict:
    kind = link.get(("linkinfo", "kind"))
    if kind is None and link["flags"] & IFF_LOOPBACK:
        kind = "loopback"
    master = link.get("master")
    out = {
        "name": link.get("ifname"),
        "index": link["index"],
        "kind": kind,
        "mtu": link.get("mtu"),
        "mac": link.get("address"),
        "state": link.get("operstate"),
        "up": bool(link["flags"] & IFF_UP),
        "master": names.get(master) if master else None,
    }
    if kind == "vxlan":
        data = ("linkinfo", "data")
        dev = link.get(data + ("vxlan_link",))
        out.update({
            "vni": link.get(data + ("vxlan_id",)),
            "local": link.get(data + ("vxlan_local",)),
            "dev": names.get(dev) if dev else None,
            "port": link.get(data + ("vxlan_port",)),
            "learning": bool(link.get(data + ("vxlan_learning",))),
        })
    return out


@off_event_loop
def observe_links(ns: str) -> list[dict]:
    """Links of ``ns``: name, index, kind, mtu, mac, state (operstate), up, master; a vxlan
    link adds vni, local, dev, port and learning."""
    with _socket(ns) as ipr:
        links = list(ipr.get_links())
        names = {link["index"]: link.get("ifname") for link in links}
        return [_link_dict(link, names) for link in links]


@off_event_loop
def observe_addresses(ns: str) -> list[dict]:
    """IPv4 addresses of ``ns``: ``{"dev": "cni0", "cidr": "10.244.1.1/24"}``."""
    with _socket(ns) as ipr:
        names = _names(ipr)
        return [
            {"dev": names.get(msg["index"]), "cidr": f"{msg.get('address')}/{msg['prefixlen']}"}
            for msg in ipr.get_addr(family=socket.AF_INET)
        ]


def _route_dict(msg: Any, names: dict[int, str]) -> dict:
    dst = msg.get("dst") or "0.0.0.0"
    oif = msg.get("oif")
    flags = msg["flags"]
    return {
        "dst": f"{dst}/{msg['dst_len']}",
        "gateway": msg.get("gateway"),
        "dev": names.get(oif) if oif else None,
        "onlink": bool(flags & RTNH_F_ONLINK),
        "scope": _SCOPE.get(msg["scope"], str(msg["scope"])),
        "type": _TYPE.get(msg["type"], str(msg["type"])),
        "proto": _PROTO.get(msg["proto"], str(msg["proto"])),
        "src": msg.get("prefsrc"),
        "metric": msg.get("priority"),
        "linkdown": bool(flags & RTNH_F_LINKDOWN),
    }


@off_event_loop
def observe_routes(ns: str) -> list[dict]:
    """IPv4 routes of the main table: dst (always a CIDR), gateway, dev, onlink, scope,
    type, proto, src (and metric, linkdown), in the kernel's order (as ``ip route``)."""
    with _socket(ns) as ipr:
        names = _names(ipr)
        return [
            _route_dict(msg, names)
            for msg in ipr.route("dump", family=socket.AF_INET)
            if msg.get("table") == RT_TABLE_MAIN
        ]


def _nud_names(state: int) -> str:
    return " ".join(name for bit, name in _NUD if state & bit) or "NONE"


@off_event_loop
def observe_neighbours(ns: str, dev: str | None = None) -> list[dict]:
    """IPv4 neighbours of ``ns`` (on ``dev`` only if given), as ``ip neigh`` lists them
    (NOARP-only entries left out): ip, mac, dev, state (``PERMANENT``, ``REACHABLE``...)."""
    with _socket(ns) as ipr:
        names = _names(ipr)
        out = []
        for msg in ipr.get_neighbours(family=socket.AF_INET):
            name = names.get(msg["ifindex"])
            if dev is not None and name != dev:
                continue
            if msg["state"] == NUD_NOARP:
                continue
            out.append({"ip": msg.get("NDA_DST"), "mac": msg.get("NDA_LLADDR"), "dev": name,
                        "state": _nud_names(msg["state"])})
        return out


def _fdb_flags(msg: Any) -> list[str]:
    flags, state = msg["flags"], msg["state"]
    words = []
    for bit, word in ((NTF_SELF, "self"), (NTF_ROUTER, "router"),
                      (NTF_EXT_LEARNED, "extern_learn"), (NTF_OFFLOADED, "offload"),
                      (NTF_MASTER, "master")):
        if flags & bit:
            words.append(word)
    if state & NUD_PERMANENT:
        words.append("permanent")
    elif state & NUD_NOARP:
        words.append("static")
    return words


@off_event_loop
def observe_fdb(ns: str, dev: str) -> list[dict]:
    """Forwarding entries of device ``dev`` in ``ns`` (``bridge fdb show dev <dev>``):
    mac, dst (the remote VTEP for a vxlan device, else None), flags (``self``, ``permanent``...)."""
    with _socket(ns) as ipr:
        names = _names(ipr)
        wanted = [i for i, name in names.items() if name == dev]
        if not wanted:
            raise KernelError(f'netns "{ns}": fdb dev {dev}: No such device')
        out = []
        for msg in ipr.fdb("dump"):
            if msg["ifindex"] != wanted[0]:
                continue
            out.append({"mac": msg.get("NDA_LLADDR"), "dst": msg.get("NDA_DST"),
                        "flags": _fdb_flags(msg)})
        return out


def observe_sysctl(ns: str, key: str) -> str:
    """The value of sysctl ``key`` (``net.ipv4.ip_forward`` or ``net/ipv6/conf/flannel.1/...``)
    as seen inside ``ns``."""
    rel = key if "/" in key else key.replace(".", "/")
    if any(part in ("", ".", "..") for part in rel.strip("/").split("/")):
        raise KernelError(f'netns "{ns}": sysctl {key}: not a sysctl key')
    netns.require(ns)
    with netns.inside(ns):
        try:
            with open("/proc/sys/" + rel.strip("/")) as fh:
                return fh.read().strip()
        except OSError as exc:
            raise KernelError(f'netns "{ns}": sysctl {key}: {os.strerror(exc.errno)}') from exc


@off_event_loop
def host_networks() -> list[ipaddress.IPv4Network]:
    """Networks of the IPv4 addresses on this host's interfaces (the namespace overlaynet
    itself runs in), loopback excluded: what a cluster's ranges must not overlap."""
    with _socket(None) as ipr:
        loopbacks = {link["index"] for link in ipr.get_links() if link["flags"] & IFF_LOOPBACK}
        nets = set()
        for msg in ipr.get_addr(family=socket.AF_INET):
            if msg["index"] in loopbacks:
                continue
            address = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
            iface = ipaddress.IPv4Interface(f"{address}/{msg['prefixlen']}")
            if iface.ip.is_loopback:
                continue
            nets.add(iface.network)
    return sorted(nets)


def format_route(route: dict) -> str:
    """One route as ``ip route`` prints it."""
    dst = route["dst"]
    if dst == "0.0.0.0/0":
        dst = "default"
    elif dst.endswith("/32"):
        dst = dst[:-3]
    parts = []
    if route.get("type", "unicast") != "unicast":
        parts.append(route["type"])
    parts.append(dst)
    if route.get("gateway"):
        parts += ["via", route["gateway"]]
    if route.get("dev"):
        parts += ["dev", route["dev"]]
    if route.get("proto") not in (None, "boot"):
        parts += ["proto", route["proto"]]
    if route.get("scope") not in (None, "universe"):
        parts += ["scope", route["scope"]]
    if route.get("src"):
        parts += ["src", route["src"]]
    if route.get("metric"):
        parts += ["metric", str(route["metric"])]
    if route.get("onlink"):
        parts.append("onlink")
    if route.get("linkdown"):
        parts.append("linkdown")
    return " ".join(parts)


def format_routes(routes: list[dict]) -> str:
    """Routes as ``ip route`` lines, e.g. ``10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink``."""
    return "\n".join(format_route(route) for route in routes)
