"""``overlaynet trace --live``: one real packet, and the rules the kernel says it matched.

What this module owns: the nftables trace of one packet in a node's namespace. It starts
``xtables-monitor --trace`` there, inserts one ``TRACE`` rule in the raw table (which sets
``meta nftrace`` for the packets it matches: iptables-nft, ``iptables-extensions(8)`` TRACE),
sends the packet from the source's namespace (a TCP SYN, a UDP datagram or an ICMP echo request,
from a socket opened inside it), and returns what the monitor printed. The trace rule is always
removed afterwards, in a ``finally``, and any rule carrying its comment that a killed earlier
run left behind is removed before a new one goes in.

What it never does: read the monitor's text (``tools.trace.parse_monitor`` does), or trace on
the legacy backend (its TRACE target writes to the kernel log, not to a monitor): that is a
``HostError`` naming the backend.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from collections.abc import Callable

from overlaynet.errors import HostError
from overlaynet.kernel import iptables, netns

LIVE_COMMENT = "overlaynet trace --live"
MONITOR_START = 0.3  # seconds for xtables-monitor to subscribe before the packet goes
TRACE_WAIT = 0.5  # seconds for the packet's trace events to arrive


def _our_rules(ns: str, backend: str) -> list[str]:
    return [line for line in iptables.save(ns, backend, "raw").splitlines()
            if line.startswith("-A ") and f'"{LIVE_COMMENT}"' in line]


def delete_trace_rules(ns: str, backend: str) -> None:
    """Remove every trace rule of ours from ``ns`` (none is fine)."""
    rules = _our_rules(ns, backend)
    if rules:
        iptables.restore(ns, "*raw\n" + "".join(f"-D{rule[2:]}\n" for rule in rules) + "COMMIT\n", backend)


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def send_probe(source_ns: str, dst: str, port: int, proto: str) -> None:
    """One packet from ``source_ns``: a TCP connection attempt, a UDP datagram or an ICMP echo."""
    with netns.inside(source_ns):
        if proto == "tcp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        elif proto == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        sock.settimeout(0.5)  # under TCP's first SYN retransmission (1 s): one packet only
        if proto == "tcp":
            try:
                sock.connect((dst, port))
            except OSError:
                pass  # refused or unanswered: the first packet went out, which is all a trace needs
        elif proto == "udp":
            sock.sendto(b"overlaynet trace\n", (dst, port))
        else:
            header = struct.pack("!BBHHH", 8, 0, 0, 0x6f6e, 1)
            payload = b"overlaynet trace"
            packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), 0x6f6e, 1) + payload
            sock.sendto(packet, (dst, 0))
    finally:
        sock.close()


def trace_one_packet(node_ns: str, rule: str, send: Callable[[], None], backend: str) -> str:
    """Insert ``rule`` (``-A PREROUTING|OUTPUT ... -j TRACE`` for the raw table), run ``send``,
    and return what ``xtables-monitor --trace`` printed in ``node_ns`` meanwhile."""
    if backend != "nf_tables":
        raise HostError(f"trace --live needs the nf_tables iptables backend (this node uses {backend}): "
                        "the legacy TRACE target logs to the kernel log, not to a monitor")
    netns.require(node_ns)
    monitor_path = iptables.command("xtables-monitor", backend)
    delete_trace_rules(node_ns, backend)
    # Line-buffered: a monitor stopped by SIGTERM would lose what its stdio buffer holds.
    monitor = subprocess.Popen(["ip", "netns", "exec", node_ns, "stdbuf", "-oL", monitor_path, "--trace"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(MONITOR_START)
        iptables.restore(node_ns, f"*raw\n{rule}\nCOMMIT\n", backend)
        send()
        time.sleep(TRACE_WAIT)
    finally:
        try:
            delete_trace_rules(node_ns, backend)
        finally:
            monitor.terminate()
            output, _ = monitor.communicate(timeout=5)
    return output
