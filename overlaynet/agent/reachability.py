"""Probes: the agent's client side, for ``overlaynet verify`` and the test server's ``/dial``.

This module owns sending one TCP, UDP, ICMP or DNS probe from inside a source netns and judging
the answer; and running thousands of them at bounded concurrency on the agent's one event
loop, every probe ending (ok, or with an error) within its timeout. What it never does:
change kernel state, or keep a socket (and with it a namespace) alive after a batch ends.

A probe's verdict carries two addresses: ``local``, the source address the sender's socket
used, and ``seen``, the client address the receiver reported (``GET /clientip`` over TCP,
``clientip`` over UDP) or the source of the ICMP echo reply. ``local == seen`` is what
"no NAT between pods" means.

Costs, and what they are paid for:
- TCP: a socket per probe, necessarily created inside the source netns (``netns.inside``:
  two setns calls, ~15 us).
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
import ipaddress
import os
import random
import socket
import struct
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
        try:
            address = ipaddress.ip_address(dst)  # type: ignore[arg-type]
        except ValueError:
            raise InvalidInput(f"probe {i}: dst {dst!r} is not an IP address") from None
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
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
        probes.append(Probe(item.get("id"), source, str(address), port if protocol != "icmp" else 0, protocol, family,
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


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


async def _connect(loop: asyncio.AbstractEventLoop, sock: socket.socket, address: tuple) -> None:
    """Non-blocking connect, waiting for writability directly (cheaper than ``loop.sock_connect``)."""
    err = sock.connect_ex(address)
    if err == errno.EINPROGRESS:
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


async def http_get(netns_name: str, host: str, port: int, path: str, on_connect: Callable[[str], None] | None = None) -> tuple[int, bytes]:
    """``GET path`` from inside ``netns_name`` -> ``(status, body)``; status 0: not HTTP.

    Socket errors propagate as OSError; the caller bounds the time (``asyncio.timeout``).
    ``on_connect`` is told the local address as soon as the connection stands.
    """
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = _new_socket(netns_name, family, socket.SOCK_STREAM)
    try:
        await _connect(loop, sock, (host, port))
        if on_connect is not None:
            on_connect(sock.getsockname()[0])
        request = http_request(path, host, port)
        sent = sock.send(request)  # a fresh connection's send buffer takes it whole, normally
        if sent < len(request):
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


async def udp_exchange(netns_name: str, host: str, port: int, payload: bytes, on_connect: Callable[[str], None] | None = None) -> bytes:
    """Send ``payload`` from inside ``netns_name`` until an answer comes (caller bounds the time)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = _new_socket(netns_name, family, socket.SOCK_DGRAM)
    try:
        sock.connect((host, port))  # a route lookup only; fails at once without a route
        if on_connect is not None:
            on_connect(sock.getsockname()[0])
        return await _Datagram(loop, sock, payload).run()
    finally:
        sock.close()


class _IcmpSocket:
    """A raw ICMP socket in one source netns, shared by every echo sent from there in a batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop, netns_name: str) -> None:
        self.loop = loop
        self.sock = _new_socket(netns_name, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
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

    def __init__(self, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.icmp: dict[str, _IcmpSocket] = {}
        self.route: dict[str, socket.socket] = {}

    def close(self) -> None:
        for icmp in self.icmp.values():
            icmp.close()
        for sock in self.route.values():
            sock.close()
        self.icmp.clear()
        self.route.clear()

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
        status, body = await http_get(probe.netns, probe.dst, probe.port, f"/{probe.request}", self._set_local(result))
        if status != 200:
            result["error"] = f"http {status}" if status else "not an HTTP answer"
            return
        self._answer(probe, result, body)

    async def _udp(self, probe: Probe, result: dict) -> None:
        body = await udp_exchange(probe.netns, probe.dst, probe.port, probe.request.encode(), self._set_local(result))
        self._answer(probe, result, body)

    async def _dns(self, probe: Probe, result: dict) -> None:
        import dns.exception  # dnspython: loaded by the first DNS probe only
        import dns.message
        import dns.rcode
        import dns.rdatatype

        query = dns.message.make_query(probe.name, dns.rdatatype.A)
        wire = await udp_exchange(probe.netns, probe.dst, probe.port, query.to_wire(), self._set_local(result))
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
            route = self.route[probe.netns] = _new_socket(probe.netns, socket.AF_INET, socket.SOCK_DGRAM)
        route.connect((probe.dst, 9))  # picks the source address; sends nothing
        result["local"] = route.getsockname()[0]
        icmp = self.icmp.get(probe.netns)
        if icmp is None:
            icmp = self.icmp[probe.netns] = _IcmpSocket(self.loop, probe.netns)
        source, error = await icmp.echo(probe.dst)
        result["seen"] = source if error is None else None
        result["error"] = error


async def run_probes(probes: list[Probe], timeout: float, concurrency: int = PROBE_CONCURRENCY) -> list[dict]:
    """Run ``probes`` with at most ``concurrency`` in flight; results in the same order."""
    batch = _Batch(timeout)
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
