"""Probes: the agent's client side, for ``overlaynet verify`` and the test server's ``/dial``.

This module owns sending one TCP, UDP, ICMP or DNS probe from inside a source netns and judging
the answer; and running thousands of them at bounded concurrency, every probe ending (ok, or
with an error) within its timeout. What it never does: change kernel state, or keep a socket
(and with it a namespace) alive after a batch ends.

Where a batch runs: a small one on the agent's event loop. A large one (``verify`` of 100 pods
is 33,000 probes) is shared among probe worker processes, one per CPU (``plan_workers``), each
a fresh ``python -m overlaynet.agent.reachability`` that reads its shard as JSON on stdin,
runs it on an event loop of its own, writes the results on stdout and exits; the agent's loop
meanwhile only answers, as every pod's test server. Sending a probe costs more than answering
it (the kernel's whole path to the receiver, veths, bridges, VXLAN and iptables, runs in the
sender's syscall), so this is what lets verify use every CPU instead of one. Shards keep each
source netns's probes together (``plan_shards``); a worker dies with the agent (PDEATHSIG).

A probe's verdict carries two addresses: ``local``, the source address the sender's socket
used, and ``seen``, the client address the receiver reported (``GET /clientip`` over TCP,
``clientip`` over UDP) or the source of the ICMP echo reply. ``local == seen`` is what
"no NAT between pods" means.

Costs, and what they are paid for:
- TCP: a socket per probe, necessarily created inside the source netns: one setns there and
  one back (``_Namespaces``: each namespace opened once a batch; a worker does not go back,
  so a run of probes from one source costs one setns). Over veths the handshake is complete
  when ``connect()`` returns, so the request is sent at once, without a wait for writability.
- UDP: a *connected* socket per probe as well, not one shared socket per netns: a connected
  socket is told about an ICMP port-unreachable (so a closed port is "connection refused"
  at once instead of a timeout), gives ``local`` from getsockname, and needs no
  demultiplexing of replies. Lost datagrams are resent with backoff until the timeout.
- DNS: an A query over a connected UDP socket, as UDP (dnspython builds and reads it):
  ``rcode`` and the sorted addresses in ``answer``.
- ICMP: one raw socket per source netns per batch (``ICMP_FILTER`` keeps out everything but
  echo replies and errors), replies demultiplexed by (id, seq); ``local`` comes from one
  connected UDP socket per source netns, re-connected per destination, which sends nothing.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import ipaddress
import json
import logging
import os
import random
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from overlaynet.errors import InvalidInput, KernelError
from overlaynet.kernel import netns

PROTOCOLS = ("tcp", "udp", "icmp", "dns")  # dns: an A query for ``name`` over UDP (verify's DNS check)
PROBE_CONCURRENCY = 256       # probes in flight at once, per probe() request
MAX_PROBES = 200_000          # per request
MAX_TIMEOUT = 60.0
RESEND_FIRST = 0.1            # seconds before the first UDP/ICMP resend; doubles, capped
RESEND_MAX = 0.5
MAX_REPLY = 65536
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("overlaynet.agent")

_SOL_RAW = 255
_ICMP_FILTER = 1
_ICMP_ECHO_REPLY, _ICMP_UNREACH, _ICMP_ECHO, _ICMP_TIME_EXCEEDED = 0, 3, 8, 11
_UNREACH_CODES = {
    0: "network unreachable",
    1: "host unreachable",
    2: "protocol unreachable",
    3: "port unreachable",
    4: "fragmentation needed",
    6: "network unknown",
    7: "host unknown",
    9: "network prohibited",
    10: "host prohibited",
    13: "administratively prohibited",
}
_ERRNO_TEXT = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "timeout",
    errno.EPERM: "operation not permitted",  # e.g. an iptables DROP/REJECT on the output path
    errno.EACCES: "permission denied",
}


# ---------------------------------------------------------------------------------------------
# Pure parts


@dataclass(frozen=True, slots=True)
class Probe:
    id: Any
    netns: str
    dst: str
    port: int
    protocol: str
    family: int
    request: str = "clientip"  # what to ask the test server: "clientip" (-> seen) or "hostname" (-> answer)
    name: str = ""  # dns: the name to ask for (-> rcode, and answer: the addresses, sorted, comma-joined)


REQUESTS = ("clientip", "hostname")


def parse_probes(raw: object, timeout: object) -> tuple[list[Probe], float]:
    """Validate a ``probe`` request; errors name the probe by its index."""
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= MAX_TIMEOUT:
        raise InvalidInput(f"probe: timeout {timeout!r} must be a number of seconds in (0, {MAX_TIMEOUT:g}]")
    if not isinstance(raw, list):
        raise InvalidInput("probe: probes must be a list")
    if len(raw) > MAX_PROBES:
        raise InvalidInput(f"probe: {len(raw)} probes in one request; at most {MAX_PROBES}")
    probes = []
    addresses: dict[str, tuple[int, str]] = {}  # dst -> (family, address): a batch has few destinations
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidInput(f"probe {i}: must be an object, not {type(item).__name__}")
        protocol = item.get("protocol")
        if protocol not in PROTOCOLS:
            raise InvalidInput(f"probe {i}: protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
        source = item.get("netns")
        if not isinstance(source, str) or not source or "/" in source or source in (".", ".."):
            raise InvalidInput(f"probe {i}: netns {source!r} is not a namespace name")
        dst = item.get("dst")
        known = addresses.get(dst) if isinstance(dst, str) else None
        if known is None:
            try:
                address = ipaddress.ip_address(dst)  # type: ignore[arg-type]
            except ValueError:
                raise InvalidInput(f"probe {i}: dst {dst!r} is not an IP address") from None
            known = (socket.AF_INET if address.version == 4 else socket.AF_INET6, str(address))
            if isinstance(dst, str):
                addresses[dst] = known
        family, dst_address = known
        if protocol == "icmp" and family != socket.AF_INET:
            raise InvalidInput(f"probe {i}: dst {dst}: icmp probes are IPv4 only")
        port = item.get("port", 0)
        if protocol != "icmp" and (not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535):
            raise InvalidInput(f"probe {i}: port {port!r} is out of range 1-65535")
        request = item.get("request", "clientip")
        if request not in REQUESTS:
            raise InvalidInput(f"probe {i}: request {request!r} is not one of {', '.join(REQUESTS)}")
        name = item.get("name", "")
        if protocol == "dns" and (not isinstance(name, str) or not 0 < len(name) <= 253 or not name.isascii()):
            raise InvalidInput(f"probe {i}: name {name!r} must be a domain name (dns probes)")
        probes.append(Probe(item.get("id"), source, dst_address, port if protocol != "icmp" else 0, protocol, family,
                            request, name if protocol == "dns" else ""))
    return probes, float(timeout)


def error_text(exc: BaseException) -> str:
    """A short, stable name for why a probe failed."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno in _ERRNO_TEXT:
        return _ERRNO_TEXT[exc.errno]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def http_request(path: str, host: str, port: int) -> bytes:
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return (
        f"GET {path} HTTP/1.1\r\nHost: {hostport}\r\nUser-Agent: overlaynet-agent\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


def parse_http_response(data: bytes) -> tuple[int, bytes] | None:
    """``(status, body)`` of a complete ``Connection: close`` response, None if malformed."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    status_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        return None
    try:
        status = int(status_line[1])
    except ValueError:
        return None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                body = body[: int(value.strip())]
            except ValueError:
                return None
    return status, body


def parse_addr(text: str) -> str | None:
    """The IP of an ``ip:port`` (or ``[ip6]:port``) the server reported, None if malformed."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:  # IPv4 the cheap way (inet_pton is as strict: four decimal octets, no leading zeros)
        return socket.inet_ntoa(socket.inet_pton(socket.AF_INET, host))
    except (OSError, ValueError):
        pass
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_echo(ident: int, seq: int, payload: bytes = b"overlaynet-probe") -> bytes:
    header = struct.pack("!BBHHH", _ICMP_ECHO, 0, 0, ident, seq)
    csum = icmp_checksum(header + payload)
    return struct.pack("!BBHHH", _ICMP_ECHO, 0, csum, ident, seq) + payload


def parse_icmp(packet: bytes) -> tuple[int, int, str, str | None] | None:
    """An IPv4 packet from a raw ICMP socket -> ``(ident, seq, source, error)`` or None.

    ``error`` is None for an echo reply; for an unreachable / time-exceeded message about
    one of our echo requests (the original header is quoted inside) it names the reason.
    """
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8:
        return None
    source = socket.inet_ntoa(packet[12:16])
    icmp_type, code = packet[ihl], packet[ihl + 1]
    if icmp_type == _ICMP_ECHO_REPLY:
        ident, seq = struct.unpack_from("!HH", packet, ihl + 4)
        return ident, seq, source, None
    if icmp_type in (_ICMP_UNREACH, _ICMP_TIME_EXCEEDED):
        inner = ihl + 8
        if len(packet) < inner + 20:
            return None
        inner_ihl = (packet[inner] & 0x0F) * 4
        quoted = inner + inner_ihl
        if len(packet) < quoted + 8 or packet[inner + 9] != socket.IPPROTO_ICMP or packet[quoted] != _ICMP_ECHO:
            return None
        ident, seq = struct.unpack_from("!HH", packet, quoted + 4)
        if icmp_type == _ICMP_TIME_EXCEEDED:
            reason = "ttl exceeded"
        else:
            reason = _UNREACH_CODES.get(code, f"destination unreachable (code {code})")
        return ident, seq, source, f"{reason} (from {source})"
    return None


# ---------------------------------------------------------------------------------------------
# Sockets


def _new_socket(netns_name: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    with netns.inside(netns_name):
        sock = socket.socket(family, kind | socket.SOCK_NONBLOCK, proto)
    return sock


NewSocket = Callable[[str, int, int], socket.socket]  # (netns, family, kind) -> a non-blocking socket there


class _Namespaces:
    """Where one batch makes its sockets: each source netns opened once (not twice a probe),
    the thread switched into it only to create a socket.

    ``stay``: a probe worker process (``run_in_workers``), whose thread does nothing but make
    probe sockets, stays in the last namespace it entered, so that a run of probes from one
    source costs one setns in all; ``close()`` takes it home. Otherwise (the agent's loop, which
    serves too) the thread is back home before ``socket()`` returns, as ``netns.inside`` does.
    """

    def __init__(self, stay: bool = False) -> None:
        self.stay = stay
        self.fds: dict[str, int] = {}
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.current: str | None = None  # stay: the namespace the thread is in (None: home)

    def socket(self, netns_name: str, family: int, kind: int, proto: int = 0) -> socket.socket:
        if netns_name != self.current:
            fd = self.fds.get(netns_name)
            if fd is None:
                try:
                    fd = self.fds[netns_name] = os.open(netns.path(netns_name), os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise KernelError(f'netns "{netns_name}": does not exist') from None
            netns._setns(fd, netns_name)
            self.current = netns_name
        try:
            return socket.socket(family, kind | socket.SOCK_NONBLOCK, proto)
        finally:
            if not self.stay:
                netns._setns(self.home, "(original)")
                self.current = None

    def close(self) -> None:
        if self.current is not None:
            netns._setns(self.home, "(original)")
            self.current = None
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        os.close(self.home)


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


async def _connect(loop: asyncio.AbstractEventLoop, sock: socket.socket, address: tuple) -> None:
    """Non-blocking connect, waiting for writability directly (cheaper than ``loop.sock_connect``)."""
    err = sock.connect_ex(address)
    if err == errno.EINPROGRESS:
        await _connected(loop, sock)
    elif err:
        raise OSError(err, os.strerror(err))


async def _connected(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Wait until a connect under way ends; its error as OSError."""
    fd = sock.fileno()
    future = loop.create_future()
    loop.add_writer(fd, _wake, future)
    try:
        await future
    finally:
        loop.remove_writer(fd)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


class _ReadToEof:
    """Read a socket until the peer closes it (or ``MAX_REPLY`` bytes), in one reader callback."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.sock = sock
        self.chunks: list[bytes] = []
        self.size = 0
        self.future: asyncio.Future[bytes] = loop.create_future()

    def on_readable(self) -> None:
        while not self.future.done():
            try:
                chunk = self.sock.recv(16384)
            except BlockingIOError:
                return
            except OSError as exc:
                self.future.set_exception(exc)
                return
            self.chunks.append(chunk)
            self.size += len(chunk)
            if not chunk or self.size > MAX_REPLY:
                self.future.set_result(b"".join(self.chunks))


async def _read_to_eof(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    reader = _ReadToEof(loop, sock)
    reader.on_readable()  # the answer is often there already
    if reader.future.done():
        return reader.future.result()
    fd = sock.fileno()
    loop.add_reader(fd, reader.on_readable)
    try:
        return await reader.future
    finally:
        loop.remove_reader(fd)


async def http_get(netns_name: str, host: str, port: int, path: str, on_connect: Callable[[str], None] | None = None,
                   new_socket: NewSocket = _new_socket) -> tuple[int, bytes]:
    """``GET path`` from inside ``netns_name`` -> ``(status, body)``; status 0: not HTTP.

    Socket errors propagate as OSError; the caller bounds the time (``asyncio.timeout``).
    ``on_connect`` is told the local address as soon as the connection stands. ``new_socket``
    makes the socket inside the netns (a batch's ``_Namespaces.socket``: no per-probe opens).
    """
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = new_socket(netns_name, family, socket.SOCK_STREAM)
    try:
        request = http_request(path, host, port)
        err = sock.connect_ex((host, port))
        sent = -1
        if err == errno.EINPROGRESS:
            # Over veths the whole handshake runs inside connect() (the SYN, SYN-ACK and ACK are
            # processed in its softirq), so try sending at once: no wait for writability. A
            # handshake still under way says EAGAIN; a refused or unreachable one, its error.
            try:
                sent = sock.send(request)
            except BlockingIOError:
                await _connected(loop, sock)
        elif err:
            raise OSError(err, os.strerror(err))
        if on_connect is not None:
            on_connect(sock.getsockname()[0])
        if sent < 0:
            sent = sock.send(request)
        if sent < len(request):  # a fresh connection's send buffer takes it whole, normally
            await loop.sock_sendall(sock, request[sent:])
        data = await _read_to_eof(loop, sock)
    finally:
        sock.close()
    parsed = parse_http_response(data)
    if parsed is None:
        return 0, data[:200]
    return parsed


class _Datagram:
    """One request/answer exchange on a connected datagram socket, resent with backoff."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, payload: bytes) -> None:
        self.loop = loop
        self.sock = sock
        self.payload = payload
        self.future: asyncio.Future[bytes] = loop.create_future()
        self.interval = RESEND_FIRST
        self.handle: asyncio.TimerHandle | None = None

    async def run(self) -> bytes:
        fd = self.sock.fileno()
        self.loop.add_reader(fd, self._on_readable)
        try:
            self._send()
            return await self.future
        finally:
            self.loop.remove_reader(fd)
            if self.handle is not None:
                self.handle.cancel()

    def _fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)

    def _send(self) -> None:
        if self.future.done():
            return
        try:
            self.sock.send(self.payload)
        except BlockingIOError:
            pass  # the send buffer is full; the resend will try again
        except OSError as exc:
            self._fail(exc)
            return
        self.handle = self.loop.call_later(self.interval, self._send)
        self.interval = min(self.interval * 2, RESEND_MAX)

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(MAX_REPLY)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(exc)
            return
        if not self.future.done():
            self.future.set_result(data)


async def udp_exchange(netns_name: str, host: str, port: int, payload: bytes, on_connect: Callable[[str], None] | None = None,
                       new_socket: NewSocket = _new_socket) -> bytes:
    """Send ``payload`` from inside ``netns_name`` until an answer comes (caller bounds the time)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = new_socket(netns_name, family, socket.SOCK_DGRAM)
    try:
        sock.connect((host, port))  # a route lookup only; fails at once without a route
        if on_connect is not None:
            on_connect(sock.getsockname()[0])
        return await _Datagram(loop, sock, payload).run()
    finally:
        sock.close()


class _IcmpSocket:
    """A raw ICMP socket in one source netns, shared by every echo sent from there in a batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop, netns_name: str, new_socket: NewSocket = _new_socket) -> None:
        self.loop = loop
        self.sock = new_socket(netns_name, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        wanted = (1 << _ICMP_ECHO_REPLY) | (1 << _ICMP_UNREACH) | (1 << _ICMP_TIME_EXCEEDED)
        try:
            self.sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", ~wanted & 0xFFFFFFFF))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        except OSError:
            pass  # an optimisation only
        self.ident = random.randrange(1, 0x10000)
        self.next_seq = random.randrange(0x10000)
        self.waiting: dict[int, asyncio.Future[tuple[str, str | None]]] = {}
        self.fd = self.sock.fileno()
        loop.add_reader(self.fd, self._on_readable)

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        self.sock.close()
        for fut in self.waiting.values():
            if not fut.done():
                fut.cancel()

    async def echo(self, dst: str) -> tuple[str, str | None]:
        """Ping ``dst`` (resending with backoff) -> ``(source of the answer, error or None)``."""
        seq = self.next_seq
        while seq in self.waiting:
            seq = (seq + 1) & 0xFFFF
        self.next_seq = (seq + 1) & 0xFFFF
        future = self.loop.create_future()
        self.waiting[seq] = future
        packet = icmp_echo(self.ident, seq)
        interval = RESEND_FIRST
        handle: asyncio.TimerHandle | None = None

        def send() -> None:
            nonlocal interval, handle
            if future.done():
                return
            try:
                self.sock.sendto(packet, (dst, 0))
            except BlockingIOError:
                pass
            except OSError as exc:
                future.set_exception(exc)
                return
            handle = self.loop.call_later(interval, send)
            interval = min(interval * 2, RESEND_MAX)

        try:
            send()
            return await future
        finally:
            self.waiting.pop(seq, None)
            if handle is not None:
                handle.cancel()

    def _on_readable(self) -> None:
        for _ in range(256):  # then let others run; epoll reports the rest again
            try:
                packet = self.sock.recv(MAX_REPLY)
            except BlockingIOError:
                return
            except OSError:
                return  # an error queued on the socket; the echo's own timeout covers it
            parsed = parse_icmp(packet)
            if parsed is None:
                continue
            ident, seq, source, error = parsed
            if ident != self.ident:
                continue
            future = self.waiting.get(seq)
            if future is not None and not future.done():
                future.set_result((source, error))


class _Batch:
    """The sockets shared by the probes of one ``probe`` request, closed when it ends."""

    def __init__(self, timeout: float, stay: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.namespaces = _Namespaces(stay)
        self.new_socket = self.namespaces.socket
        self.icmp: dict[str, _IcmpSocket] = {}
        self.route: dict[str, socket.socket] = {}

    def close(self) -> None:
        for icmp in self.icmp.values():
            icmp.close()
        for sock in self.route.values():
            sock.close()
        self.icmp.clear()
        self.route.clear()
        self.namespaces.close()

    async def run(self, probe: Probe) -> dict:
        result: dict[str, Any] = {"id": probe.id, "ok": False, "local": None, "seen": None, "error": None}
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                if probe.protocol == "tcp":
                    await self._tcp(probe, result)
                elif probe.protocol == "udp":
                    await self._udp(probe, result)
                elif probe.protocol == "dns":
                    await self._dns(probe, result)
                else:
                    await self._icmp(probe, result)
        except TimeoutError:
            result["error"] = "timeout"
        except OSError as exc:
            result["error"] = error_text(exc)
        except KernelError as exc:
            result["error"] = str(exc)
        result["ok"] = result["error"] is None
        result["rtt_ms"] = round((time.perf_counter() - start) * 1000, 3)
        return result

    def _set_local(self, result: dict) -> Callable[[str], None]:
        def set_local(address: str) -> None:
            result["local"] = address
        return set_local

    async def _tcp(self, probe: Probe, result: dict) -> None:
        status, body = await http_get(probe.netns, probe.dst, probe.port, f"/{probe.request}", self._set_local(result),
                                      self.new_socket)
        if status != 200:
            result["error"] = f"http {status}" if status else "not an HTTP answer"
            return
        self._answer(probe, result, body)

    async def _udp(self, probe: Probe, result: dict) -> None:
        body = await udp_exchange(probe.netns, probe.dst, probe.port, probe.request.encode(), self._set_local(result),
                                  self.new_socket)
        self._answer(probe, result, body)

    async def _dns(self, probe: Probe, result: dict) -> None:
        import dns.exception  # dnspython: loaded by the first DNS probe only
        import dns.message
        import dns.rcode
        import dns.rdatatype

        query = dns.message.make_query(probe.name, dns.rdatatype.A)
        wire = await udp_exchange(probe.netns, probe.dst, probe.port, query.to_wire(), self._set_local(result),
                                  self.new_socket)
        try:
            response = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            result["error"] = f"not a DNS answer: {wire[:40]!r}"
            return
        if response.id != query.id:
            result["error"] = f"answer to another query (id {response.id}, not {query.id})"
            return
        result["rcode"] = dns.rcode.to_text(response.rcode())
        result["answer"] = ",".join(sorted(rdata.to_text() for rrset in response.answer
                                           if rrset.rdtype == dns.rdatatype.A for rdata in rrset))

    def _answer(self, probe: Probe, result: dict, body: bytes) -> None:
        """``clientip`` answers fill ``seen``; any other request's answer is ``answer``."""
        if probe.request == "clientip":
            self._seen(result, body)
        else:
            result["answer"] = body.decode("utf-8", "replace").strip()

    def _seen(self, result: dict, body: bytes) -> None:
        seen = parse_addr(body.decode("utf-8", "replace"))
        if seen is None:
            result["error"] = f"unexpected answer {body[:80]!r}"
        result["seen"] = seen

    async def _icmp(self, probe: Probe, result: dict) -> None:
        route = self.route.get(probe.netns)
        if route is None:
            route = self.route[probe.netns] = self.new_socket(probe.netns, socket.AF_INET, socket.SOCK_DGRAM)
        route.connect((probe.dst, 9))  # picks the source address; sends nothing
        result["local"] = route.getsockname()[0]
        icmp = self.icmp.get(probe.netns)
        if icmp is None:
            icmp = self.icmp[probe.netns] = _IcmpSocket(self.loop, probe.netns, self.new_socket)
        source, error = await icmp.echo(probe.dst)
        result["seen"] = source if error is None else None
        result["error"] = error


async def run_probes(probes: list[Probe], timeout: float, concurrency: int = PROBE_CONCURRENCY,
                     workers: int | None = None) -> list[dict]:
    """Run ``probes`` with at most ``concurrency`` in flight; results in the same order.

    A large batch is shared among ``workers`` probe worker processes (default: one per CPU,
    ``plan_workers``), so that the senders' side, sockets and the kernel's send path included,
    runs beside this loop, which answers as the test servers meanwhile; a small one runs here.
    """
    workers = plan_workers(len(probes), len({p.netns for p in probes})) if workers is None else workers
    started = time.perf_counter()
    if workers > 1:
        try:
            results = await _run_in_workers(probes, timeout, concurrency, workers)
        except _NoWorkers as exc:
            log.warning("probe: cannot start probe workers (%s); probing in the agent", exc)
            workers = 1
    if workers <= 1:
        results = await _run_here(probes, timeout, concurrency)
    if len(probes) >= PARALLEL_MIN:
        log.info("probe: %d probes in %.2fs (%s)", len(probes), time.perf_counter() - started,
                 f"{workers} workers" if workers > 1 else "in the agent")
    return results


async def _run_here(probes: list[Probe], timeout: float, concurrency: int, stay: bool = False) -> list[dict]:
    """Run ``probes`` on this event loop (see ``_Namespaces`` for ``stay``)."""
    batch = _Batch(timeout, stay)
    results: list[dict] = [{}] * len(probes)
    work = iter(enumerate(probes))

    async def worker() -> None:
        for i, probe in work:
            results[i] = await batch.run(probe)

    try:
        async with asyncio.TaskGroup() as group:  # a bug in one worker cancels the others
            for _ in range(min(concurrency, len(probes))):
                group.create_task(worker())
    finally:
        batch.close()
    return results


# ---------------------------------------------------------------------------------------------
# Probe workers: a large batch shared among processes


PARALLEL_MIN = 2000  # probes in one request before it is shared among worker processes
WORKERS_ENV = "OVERLAYNET_PROBE_WORKERS"  # worker processes for a large batch (default: one per CPU; 1: none)


def plan_workers(probes: int, sources: int, cpus: int | None = None) -> int:
    """How many worker processes share a batch: one per CPU (or ``$OVERLAYNET_PROBE_WORKERS``)
    for a large batch, none for a small one (a worker costs ~0.1 s to start), never more than
    there are source namespaces. 1 means: probe on the agent's own loop."""
    if cpus is None:
        wanted = os.environ.get(WORKERS_ENV, "")
        cpus = int(wanted) if wanted.isdigit() else len(os.sched_getaffinity(0))
    if probes < PARALLEL_MIN or cpus < 2:
        return 1
    return max(1, min(cpus, sources))


def plan_shards(probes: list[Probe], workers: int) -> list[list[int]]:
    """Split ``probes`` (by index) into at most ``workers`` shards of about equal size, keeping
    all probes from one source netns together and in order: a run of them costs one setns in
    a worker, and requests that must meet the same kube-proxy state (ClientIP affinity: the
    repeated requests of one client) still go out from one event loop as without workers."""
    groups: dict[str, list[int]] = {}
    for i, probe in enumerate(probes):
        groups.setdefault(probe.netns, []).append(i)
    shards: list[list[int]] = []
    left = len(probes)  # not yet in a closed shard
    current: list[int] = []
    for group in groups.values():
        # Close the shard before a group whose middle lies past this shard's fair share.
        if current and len(shards) < workers - 1 and len(current) + len(group) / 2 > left / (workers - len(shards)):
            shards.append(current)
            left -= len(current)
            current = []
        current.extend(group)
    if current:
        shards.append(current)
    return shards


class _NoWorkers(Exception):
    """A probe worker process could not be started (the batch then runs in the agent)."""


async def _run_in_workers(probes: list[Probe], timeout: float, concurrency: int, workers: int) -> list[dict]:
    """Run ``probes`` in worker processes (``python -m overlaynet.agent.reachability``), one shard
    each: the shard's probes as JSON on stdin, their results as JSON on stdout. A worker that
    fails is an error of the whole request; all are ended before this returns."""
    shards = plan_shards(probes, workers)
    per_worker = max(1, -(-concurrency // len(shards)))
    procs: list[asyncio.subprocess.Process] = []
    try:
        for _ in shards:
            try:
                procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "overlaynet.agent.reachability", "--parent", str(os.getpid()),
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE))
            except OSError as exc:
                raise _NoWorkers(error_text(exc)) from exc
        requests = [json.dumps({"timeout": timeout, "concurrency": per_worker,
                                "probes": [[p.netns, p.dst, p.port, p.protocol, p.family, p.request, p.name]
                                           for p in (probes[i] for i in shard)]}, separators=(",", ":")).encode()
                    for shard in shards]
        outputs = await asyncio.gather(*(proc.communicate(request) for proc, request in zip(procs, requests)))
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    results: list[dict] = [{}] * len(probes)
    for proc, shard, (stdout, stderr) in zip(procs, shards, outputs):
        try:
            answers = json.loads(stdout) if proc.returncode == 0 else None
        except ValueError:
            answers = None
        if not isinstance(answers, list) or len(answers) != len(shard):
            why = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            raise KernelError(f"probe: worker process {proc.pid} failed (exit code {proc.returncode}): {why[0]}")
        for i, answer in zip(shard, answers):
            answer["id"] = probes[i].id
            results[i] = answer
    return results


def _worker_main(argv: list[str]) -> int:
    """A probe worker: a shard from stdin, its results to stdout (``_run_in_workers``)."""
    if len(argv) != 2 or argv[0] != "--parent" or not argv[1].isdigit():
        print("usage: python -m overlaynet.agent.reachability --parent PID (the agent starts it)", file=sys.stderr)
        return 2
    import ctypes

    # Die with the agent: a worker holds sockets, and with them namespaces, only while it is needed.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(argv[1]):
        return 1
    gc.disable()  # a short-lived process: reference counting frees what it makes, and no pauses
    request = json.load(sys.stdin.buffer)
    probes = [Probe(i, *fields) for i, fields in enumerate(request["probes"])]
    results = asyncio.run(_run_here(probes, float(request["timeout"]), int(request["concurrency"]), stay=True))
    sys.stdout.write(json.dumps(results, separators=(",", ":")))
    return 0


# ---------------------------------------------------------------------------------------------
# /dial


async def _resolve(netns_name: str, host: str) -> str:
    """``host`` as an address: literal, or resolved by a worker thread inside the netns."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass

    def lookup() -> str:
        with netns.inside(netns_name):
            infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
        return infos[0][4][0]

    try:
        return await asyncio.get_running_loop().run_in_executor(None, lookup)
    except socket.gaierror as exc:
        raise OSError(errno.ENOENT, f"cannot resolve {host}: {exc.strerror}") from exc


async def dial(netns_name: str, request) -> tuple[list[str], list[str]]:
    """Carry out a ``/dial`` (a ``testserver.Dial``) from inside ``netns_name``."""
    responses: list[str] = []
    errors: list[str] = []
    for _ in range(request.tries):
        try:
            async with asyncio.timeout(request.timeout):
                host = await _resolve(netns_name, request.host)
                if request.protocol == "http":
                    status, body = await http_get(netns_name, host, request.port, request.path)
                    if status == 200:
                        responses.append(body.decode("utf-8", "replace"))
                    else:
                        errors.append(f"http {status}: {body.decode('utf-8', 'replace').strip()}")
                else:
                    body = await udp_exchange(netns_name, host, request.port, request.request.encode())
                    responses.append(body.decode("utf-8", "replace"))
        except TimeoutError:
            errors.append(f"{request.protocol} {request.host}:{request.port}: timeout")
        except OSError as exc:
            errors.append(f"{request.protocol} {request.host}:{request.port}: {error_text(exc)}")
        except KernelError as exc:
            errors.append(str(exc))
    return responses, errors


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
