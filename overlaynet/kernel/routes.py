"""The kernel's own route lookup in one namespace: ``ip route get`` semantics over netlink.

What this module owns: ``observe_route_get(netns, dst, src, iif)``, one RTM_GETROUTE request
(pyroute2, from a socket opened while the calling thread is inside ``netns``) asked twice:
once as ``ip route get`` asks (the resolved result: type, output device, gateway, preferred
source) and once with RTM_F_FIB_MATCH, as ``ip route get fibmatch`` asks (the routing-table
entry that matched, with its prefix and its protocol, e.g. ``proto bird``). With ``iif`` the
lookup is the one a *forwarded* packet gets (``ip route get DST from SRC iif DEV``), which is
what a packet arriving from a pod or from the node network meets; without it, the lookup of a
packet the node itself sends.

What it never does: change anything, or spawn ``ip``. A lookup the kernel refuses (no route:
"Network is unreachable") is an answer, not an error: it comes back with ``type`` ``"error"``
and the kernel's reason, because "the packet is dropped here" is what a trace must show.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from overlaynet.kernel import netns
from overlaynet.kernel.apply import off_event_loop

RTM_F_FIB_MATCH = 0x2000  # linux/rtnetlink.h: return the full FIB entry that matched
RTNH_F_ONLINK = 0x4
_TYPE = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast", 6: "blackhole",
         7: "unreachable", 8: "prohibit", 9: "throw"}
_PROTO = {2: "kernel", 3: "boot", 4: "static", 12: "bird", 186: "bgp"}


def _fib_entry(msg: Any, links: dict[int, str]) -> dict:
    prefix = msg.get("dst")
    oif = msg.get("oif")
    return {
        "dst": f"{prefix}/{msg['dst_len']}" if prefix else "0.0.0.0/0",
        "type": _TYPE.get(msg["type"], str(msg["type"])),
        "gateway": msg.get("gateway"),
        "dev": links.get(oif) if oif else None,
        "proto": _PROTO.get(msg["proto"], str(msg["proto"])),
        "onlink": bool(msg["flags"] & RTNH_F_ONLINK),
    }


@off_event_loop
def observe_route_get(ns: str, dst: str, src: str | None = None, iif: str | None = None) -> dict:
    """The kernel's route for ``dst`` in ``ns``: ``{"dst", "type", "dev", "gateway", "prefsrc",
    "route": <the FIB entry: dst prefix, type, gateway, dev, proto, onlink>}``; on a
    refusal ``{"dst", "type": "error", "error": "Network is unreachable"}``. ``src`` and
    ``iif`` (a device name) ask for a forwarded packet's lookup."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    netns.require(ns)
    with netns.inside(ns):
        ipr = IPRoute(groups=0)
    try:
        links = {link["index"]: link.get("ifname") for link in ipr.get_links()}
        request: dict[str, Any] = {"dst": dst, "family": socket.AF_INET}
        if src:
            request["src"] = src
        if iif:
            index = next((i for i, name in links.items() if name == iif), None)
            if index is None:
                return {"dst": dst, "type": "error", "error": f"no device {iif} to arrive on"}
            request["iif"] = index
        try:
            resolved = ipr.route("get", **request)[0]
            matched = ipr.route("get", flags=RTM_F_FIB_MATCH, **request)[0]
        except NetlinkError as exc:
            return {"dst": dst, "type": "error", "error": os.strerror(exc.code)}
        oif = resolved.get("oif")
        return {
            "dst": dst,
            "type": _TYPE.get(resolved["type"], str(resolved["type"])),
            "dev": links.get(oif) if oif else None,
            "gateway": resolved.get("gateway"),
            "prefsrc": resolved.get("prefsrc"),
            "route": _fib_entry(matched, links),
        }
    finally:
        ipr.close()
