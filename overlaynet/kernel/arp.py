"""Gratuitous ARP: how a layer-2 speaker tells the node network that an address moved.

What this module owns: building and sending one broadcast ARP announcement (RFC 5227 §3:
an ARP request whose sender and target address are both the announced one) from a device in
a namespace, through an AF_PACKET socket opened inside it. MetalLB's speaker sends the same
when it starts answering for an address, so neighbours drop the old node's MAC at once instead
of after their entry goes stale. What it never does: answer ARP requests (the kernel does that
for a proxy neighbour entry) or keep any state.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from overlaynet.kernel import netns

_ETH_P_ARP = 0x0806
_BROADCAST = b"\xff" * 6


def announcement_frame(mac: bytes, ip: str) -> bytes:
    """The Ethernet frame of a gratuitous ARP request for ``ip`` from ``mac`` (pure)."""
    address = ipaddress.IPv4Address(ip).packed
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + address + b"\x00" * 6 + address
    return _BROADCAST + mac + struct.pack("!H", _ETH_P_ARP) + arp


def send_announcement(netns_name: str, dev: str, ip: str) -> None:
    """Broadcast a gratuitous ARP for ``ip`` with ``dev``'s MAC address, from ``netns_name``."""
    with netns.inside(netns_name):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ARP))
    with sock:
        sock.bind((dev, _ETH_P_ARP))
        mac = sock.getsockname()[4]
        sock.send(announcement_frame(mac, ip))
