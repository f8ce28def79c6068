"""``overlaynet capture``: a pcap decoded layer by layer, for a learner to read (pure).

What this module owns: ``decode(pcap)``, which turns the bytes of a pcap file into one
``CapturedPacket`` per frame, each a one-line summary and its layers, outermost first, with the fields
that matter for pod networking: MAC and IP addresses, TTL, ports, TCP flags, ICMP type, ARP
questions and answers. A UDP datagram to or from port 8472 (Flannel's VXLAN port; IANA's
4789 too) is opened: its VXLAN header (the VNI) and the whole inner frame follow, marked
``inner``, so the outer node addresses and the inner pod addresses show one above the other.
``render`` prints packets as text.

What it never does: capture, read files, or print.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

VXLAN_PORTS = (8472, 4789)  # Flannel's (the Linux kernel's default) and IANA's
_TCP_FLAGS = (("S", "SYN"), ("A", "ACK"), ("F", "FIN"), ("R", "RST"), ("P", "PSH"))
_ICMP_TYPES = {0: "echo-reply", 3: "destination-unreachable", 8: "echo-request", 11: "time-exceeded"}
_FRAG_NEEDED = 4


@dataclass(frozen=True)
class Layer:
    name: str  # "Ethernet", "IPv4", "UDP", "VXLAN", "TCP", "ICMP", "ARP", ...
    fields: str
    inner: bool = False  # inside a VXLAN tunnel


@dataclass
class CapturedPacket:
    number: int
    time: float  # seconds since the first packet
    length: int
    layers: list[Layer] = field(default_factory=list)

    @property
    def encapsulated(self) -> bool:
        return any(layer.name == "VXLAN" for layer in self.layers)

    @property
    def summary(self) -> str:
        """What the innermost layers say: ``VXLAN VNI 1: ICMP echo-request 10.244.1.2 -> 10.244.2.3``."""
        layers = [layer for layer in self.layers if layer.inner] if self.encapsulated else self.layers
        ip = next((layer for layer in layers if layer.name == "IPv4"), None)
        top = layers[-1] if layers else None
        if top is None:
            text = "frame"
        elif top.name in ("TCP", "UDP", "ICMP") and ip:
            text = f"{top.name} {ip.fields.split('  ')[0]}  {top.fields}"
        else:
            text = f"{top.name} {top.fields}"
        if self.encapsulated:
            vxlan = next(layer for layer in self.layers if layer.name == "VXLAN")
            return f"VXLAN {vxlan.fields}: {text}"
        return text

    def as_dict(self) -> dict:
        return {"number": self.number, "time": round(self.time, 6), "length": self.length, "summary": self.summary,
                "layers": [{"name": la.name, "fields": la.fields, "inner": la.inner} for la in self.layers]}


def decode(pcap: bytes) -> list[CapturedPacket]:
    """Every frame of ``pcap`` (the bytes of a pcap file; Ethernet frames)."""
    import scapy.layers.inet
    import scapy.layers.inet6
    import scapy.layers.l2  # noqa: F401 - Ethernet as the pcap link type among them
    from scapy.utils import PcapReader

    if not pcap:
        return []
    packets, first = [], None
    with PcapReader(io.BytesIO(pcap)) as reader:  # type: ignore[arg-type]  # it takes a file object too
        for number, frame in enumerate(reader, 1):
            stamp = float(frame.time)
            first = stamp if first is None else first
            packet = CapturedPacket(number, stamp - first, len(frame))
            _layers(frame, packet.layers, inner=False)
            packets.append(packet)
    return packets


def _layers(frame, out: list[Layer], inner: bool) -> None:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Ether
    from scapy.layers.vxlan import VXLAN

    if frame.haslayer(Ether):
        ether = frame[Ether]
        out.append(Layer("Ethernet", f"{ether.src} → {ether.dst}", inner))
    if frame.haslayer(ARP):
        arp = frame[ARP]
        text = (f"who-has {arp.pdst} tell {arp.psrc}" if arp.op == 1 else f"{arp.psrc} is-at {arp.hwsrc}")
        out.append(Layer("ARP", text, inner))
        return
    if not frame.haslayer(IP):
        if frame.haslayer(IPv6):
            ip6 = frame[IPv6]
            out.append(Layer("IPv6", f"{ip6.src} → {ip6.dst}  hlim {ip6.hlim}", inner))
            out.append(Layer("payload", ip6.payload.name, inner))
        else:
            out.append(Layer("payload", frame.lastlayer().name, inner))
        return
    ip = frame[IP]
    out.append(Layer("IPv4", f"{ip.src} → {ip.dst}  ttl {ip.ttl}  len {ip.len}"
                     + ("  DF" if ip.flags.DF else ""), inner))
    if ip.haslayer(UDP):
        udp = ip[UDP]
        vxlan = not inner and (udp.dport in VXLAN_PORTS or udp.sport in VXLAN_PORTS)
        out.append(Layer("UDP", f"{udp.sport} → {udp.dport}" + (" (VXLAN)" if vxlan else f"  len {udp.len}"), inner))
        if vxlan:
            header = VXLAN(bytes(udp.payload))
            out.append(Layer("VXLAN", f"VNI {header.vni}", inner))
            _layers(header.payload, out, inner=True)
    elif ip.haslayer(TCP):
        tcp = ip[TCP]
        flags = ",".join(word for letter, word in _TCP_FLAGS if letter in str(tcp.flags))
        data = len(bytes(tcp.payload))
        out.append(Layer("TCP", f"{tcp.sport} → {tcp.dport}  [{flags}]  seq {tcp.seq}"
                         + (f"  {data} bytes" if data else ""), inner))
    elif ip.haslayer(ICMP):
        icmp = ip[ICMP]
        kind = _ICMP_TYPES.get(icmp.type, f"type {icmp.type}")
        if icmp.type in (0, 8):
            kind += f" id {icmp.id} seq {icmp.seq}"
        elif icmp.type == 3 and icmp.code == _FRAG_NEEDED:
            kind += f" (fragmentation needed, next-hop MTU {icmp.nexthopmtu})"
        out.append(Layer("ICMP", kind, inner))


def render(packets: list[CapturedPacket]) -> str:
    """Each packet as a summary line and its layers, outer and inner headers aligned."""
    lines = []
    for packet in packets:
        lines.append(f"#{packet.number:<3} {packet.time:9.6f}s  {packet.length:>5} bytes  {packet.summary}")
        for layer in packet.layers:
            where = "inner " if layer.inner else ("outer " if packet.encapsulated and layer.name != "VXLAN" else "")
            lines.append(f"      {where + layer.name:<15} {layer.fields}")
    return "\n".join(lines)
