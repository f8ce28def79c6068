"""The built-in test server: what every pod and node "runs", in the spirit of ``agnhost netexec``.

This module owns:
- the wire protocol, as pure functions (no sockets, unit-tested without root):
  ``parse_request`` / ``route`` / ``render_response`` for HTTP over TCP, ``udp_reply`` for UDP,
  ``parse_dial`` / ``dial_response`` for ``/dial``;
- ``ServedKey``: the listening sockets of one served key (a pod or a node) in one netns,
  opened, replaced, paused and closed on the agent's event loop; for a CoreDNS pod, some of
  its ports answer DNS instead (``agent.dnsserver.DnsResponder``); for a node, kube-proxy's
  service health checks have ports of their own (``agent.healthcheck``), apart from the
  declared ones and never paused.

``serve_in_foreground`` runs one ``ServedKey`` on its own event loop until SIGINT or SIGTERM:
the test server for a namespace a learner made by hand (``overlaynet testserver serve``).

What it never does: create or delete namespaces or addresses (kubelet and CNI do), or spawn a
thread or process per pod. Each listening socket is created with the thread inside the pod's
netns (``netns.inside``) and handed to the event loop (TCP: ``loop.create_server``; UDP: a
reader callback, because answers must leave from the address they were sent to, which
asyncio's datagram transport cannot do); the socket stays in that netns, so one event loop
serves every pod. A socket keeps its netns alive: ``close()`` releases all of them, so
the pod's netns really goes away when it is deleted afterwards.

HTTP (TCP), one request per connection, always ``Connection: close``:

    GET /            -> hostname          GET /clientip  -> "ip:port" of the peer as seen here
    GET /hostname    -> hostname          GET /echo?msg=X -> X
    GET /healthz     -> "ok"              GET /dial?host=H&port=P&protocol=http|udp&request=R&tries=N
                                              -> {"responses": [...], "errors": [...]}, dialled
                                                 from inside this pod's netns

UDP, one datagram in, one out: ``hostname``, ``clientip``, ``echo <msg>``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote

from overlaynet.agent import reachability  # the client side of /dial lives with the probes
from overlaynet.errors import AgentError, KernelError
from overlaynet.kernel import netns

if TYPE_CHECKING:
    from overlaynet.agent.dnsserver import DnsResponder
    from overlaynet.agent.healthcheck import HealthCheck

log = logging.getLogger("overlaynet.agent")

MAX_HEAD = 8192  # bytes of request line + headers we accept before answering 431
REQUEST_TIMEOUT = 30.0  # seconds a connection may take to send its request head
MAX_DATAGRAM = 65535
UDP_BATCH = 64  # datagrams read per wake-up of one UDP socket
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; the constant is missing before 3.12
_PKTINFO_SPACE = socket.CMSG_SPACE(12)  # sizeof(struct in_pktinfo)
LISTEN_BACKLOG = 1024
DIAL_MAX_TRIES = 50
DIAL_DEFAULT_TIMEOUT = 2.0
DIAL_MAX_TIMEOUT = 10.0
PROTOCOLS = ("TCP", "UDP")

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
}
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


# ---------------------------------------------------------------------------------------------
# The protocol, as pure functions


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str                   # percent-decoded, without the query
    params: dict[str, str]      # query parameters, decoded; the first value of a repeated name


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()  # more header fields, in order


@dataclass(frozen=True, slots=True)
class Dial:
    """A validated ``/dial`` request: what to send, where, how often."""

    host: str
    port: int
    protocol: str               # "http" | "udp"
    request: str
    tries: int
    timeout: float

    @property
    def path(self) -> str:
        """The path an HTTP dial requests: agnhost's ``request=hostname`` means ``GET /hostname``."""
        return self.request if self.request.startswith("/") else "/" + self.request


def format_addr(addr: tuple) -> str:
    """``("10.0.0.1", 4711)`` -> ``10.0.0.1:4711`` (IPv6 in brackets)."""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def text(status: int, message: str) -> Response:
    return Response(status, message.encode())


def head_end(buf: bytes | bytearray) -> int:
    """Index just past the blank line that ends the request head, or -1 if it is not there yet."""
    i = buf.find(b"\r\n\r\n")
    j = buf.find(b"\n\n")
    ends = [k + 4 for k in (i,) if k >= 0] + [k + 2 for k in (j,) if k >= 0]
    return min(ends) if ends else -1


def parse_request(head: bytes | bytearray) -> Request | Response:
    """Parse a request head; a ``Response`` (4xx/5xx) means the request is refused."""
    line = bytes(head).split(b"\n", 1)[0].rstrip(b"\r")
    try:
        request_line = line.decode("ascii")
    except UnicodeDecodeError:
        return text(400, "request line is not ASCII\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not all(parts):
        return text(400, "malformed request line\n")
    method, target, version = parts
    if not version.startswith("HTTP/"):
        return text(400, "malformed request line\n")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        return text(505, f"{version} is not supported\n")
    if method not in ("GET", "HEAD"):
        return text(405, f"method {method} is not allowed; use GET\n")
    if target.startswith(("http://", "https://")):  # absolute form, as sent to a proxy
        rest = target.split("://", 1)[1]
        target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    if not target.startswith("/"):
        return text(400, f"request target {target!r} must start with /\n")
    raw_path, _, query = target.partition("?")
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(name, value)
    return Request(method, unquote(raw_path), params)


def render_response(resp: Response, head_only: bool = False) -> bytes:
    reason = _REASONS.get(resp.status, "")
    head = (
        f"HTTP/1.1 {resp.status} {reason}\r\n"
        f"Content-Type: {resp.content_type}\r\n"
        f"Content-Length: {len(resp.body)}\r\n"
        "Connection: close\r\n"
    )
    if resp.status == 405:
        head += "Allow: GET, HEAD\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in resp.headers)
    data = (head + "\r\n").encode("ascii")
    return data if head_only else data + resp.body


def route(req: Request, hostname: str, peer: tuple) -> Response | Dial:
    """Answer one request; ``/dial`` comes back as a ``Dial`` for the caller to carry out."""
    path = req.path
    if path in ("/", "/hostname"):
        return text(200, hostname)
    if path == "/clientip":
        return text(200, format_addr(peer))
    if path == "/echo":
        return text(200, req.params.get("msg", ""))
    if path == "/healthz":
        return text(200, "ok")
    if path == "/dial":
        return parse_dial(req.params)
    return text(404, f"no handler for {path}; try /hostname, /clientip, /echo?msg=, /dial, /healthz\n")


def parse_dial(params: dict[str, str]) -> Dial | Response:
    """Validate ``/dial`` parameters (agnhost names: host, port, protocol, request, tries)."""
    host = params.get("host", "")
    if not host:
        return text(400, "dial: parameter host is required\n")
    try:
        port = int(params.get("port", ""))
    except ValueError:
        return text(400, f"dial: port {params.get('port', '')!r} is not a number\n")
    if not 1 <= port <= 65535:
        return text(400, f"dial: port {port} is out of range 1-65535\n")
    protocol = params.get("protocol", "http").lower()
    if protocol not in ("http", "udp"):
        return text(400, f"dial: protocol {protocol!r} is not one of http, udp\n")
    request = params.get("request", "hostname")
    try:
        tries = int(params.get("tries", "1"))
    except ValueError:
        return text(400, f"dial: tries {params.get('tries')!r} is not a number\n")
    if not 1 <= tries <= DIAL_MAX_TRIES:
        return text(400, f"dial: tries {tries} is out of range 1-{DIAL_MAX_TRIES}\n")
    try:
        timeout = float(params.get("timeout", DIAL_DEFAULT_TIMEOUT))
    except ValueError:
        return text(400, f"dial: timeout {params.get('timeout')!r} is not a number\n")
    if not 0 < timeout <= DIAL_MAX_TIMEOUT:
        return text(400, f"dial: timeout {timeout} is out of range (0, {DIAL_MAX_TIMEOUT:g}] seconds\n")
    return Dial(host, port, protocol, request, tries, timeout)


def dial_response(responses: list[str], errors: list[str]) -> Response:
    body = json.dumps({"responses": responses, "errors": errors}) + "\n"
    return Response(200, body.encode(), JSON)


def udp_reply(data: bytes, hostname: str, peer: tuple) -> bytes | None:
    """The answer to one UDP datagram, or None to stay silent (an empty datagram)."""
    command = data.decode("utf-8", "replace").rstrip("\r\n")
    if not command.strip():
        return None
    verb, _, arg = command.partition(" ")
    if verb == "hostname":
        return hostname.encode()
    if verb == "clientip":
        return format_addr(peer).encode()
    if verb == "echo":
        return arg.encode()
    return f"unknown command {verb!r}; try hostname, clientip, echo <msg>".encode()


def check_ports(key: str, ports: object, field: str = "ports") -> tuple[tuple[int, str], ...]:
    """Validate a ``serve`` port list ``[[8080, "TCP"], ...]``; sorted, duplicates dropped."""
    if not isinstance(ports, (list, tuple)):
        raise AgentError(f'key "{key}": {field} must be a list of [port, protocol] pairs')
    out: set[tuple[int, str]] = set()
    for i, item in enumerate(ports):
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise AgentError(f'key "{key}": {field}[{i}] must be a [port, protocol] pair, not {item!r}')
        port, protocol = item
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise AgentError(f'key "{key}": {field}[{i}]: port {port!r} is out of range 1-65535')
        if protocol not in PROTOCOLS:
            raise AgentError(f'key "{key}": {field}[{i}]: protocol {protocol!r} is not one of TCP, UDP')
        out.add((port, protocol))
    return tuple(sorted(out))


# ---------------------------------------------------------------------------------------------
# Sockets on the event loop


class _HttpProtocol(asyncio.Protocol):
    """One accepted connection: read the head, answer, close."""

    __slots__ = ("_served", "_check_port", "_transport", "_buf", "_answered", "_timer")

    def __init__(self, served: ServedKey, check_port: int | None = None) -> None:
        self._served = served
        self._check_port = check_port  # a health check's port: kube-proxy's answer, not the test server's
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._answered = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._served.connections.add(transport)
        self._timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT, self._too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._served.connections.discard(self._transport)

    def _too_slow(self) -> None:
        if not self._answered:
            self._answer(text(408, f"no complete request within {REQUEST_TIMEOUT:g} s\n"), False)

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return
        self._buf += data
        end = head_end(self._buf)
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                self._answer(text(431, "request head too large\n"), False)
            return
        parsed = parse_request(self._buf[:end])
        if isinstance(parsed, Response):
            self._answer(parsed, False)
            return
        if self._check_port is not None:
            from overlaynet.agent import healthcheck

            self._answer(healthcheck.response(self._served.health_checks[self._check_port]), parsed.method == "HEAD")
            return
        peer = self._transport.get_extra_info("peername")  # type: ignore[union-attr]
        result = route(parsed, self._served.hostname, peer)
        if isinstance(result, Dial):
            self._answered = True
            self._served.spawn(self._dial(result, parsed.method == "HEAD"))
        else:
            self._answer(result, parsed.method == "HEAD")

    def eof_received(self) -> bool:
        if not self._answered:
            self._answer(text(400, "connection closed before the request was complete\n"), False)
        return True  # keep our side open until the answer is written

    def _answer(self, resp: Response, head_only: bool) -> None:
        self._answered = True
        if self._timer is not None:
            self._timer.cancel()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(render_response(resp, head_only))
            transport.close()

    async def _dial(self, dial: Dial, head_only: bool) -> None:
        responses, errors = await reachability.dial(self._served.netns, dial)
        self._answer(dial_response(responses, errors), head_only)


class UdpServer:
    """One UDP port: answer each datagram *from the address it was sent to* (``reply(data, peer)``
    gives the answer, or None for none; the DNS server uses it too).

    Not ``loop.create_datagram_endpoint``: its transport cannot read or set ``IP_PKTINFO``,
    and without it a reply leaves with whatever source address the route back picks. A node
    has several (``eth0``, ``cni0``, ``flannel.1``): a pod asking the node's ``eth0`` address
    would get its answer from ``cni0``'s, which its connected socket rightly drops.
    """

    __slots__ = ("_fd", "_loop", "_reply", "sock")

    def __init__(self, sock: socket.socket, reply: Callable[[bytes, tuple], bytes | None]) -> None:
        self._reply = reply
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        self._loop = asyncio.get_running_loop()
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, self._on_readable)

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        self.sock.close()

    def _on_readable(self) -> None:
        for _ in range(UDP_BATCH):  # then let others run; epoll reports the rest again
            try:
                data, ancillary, _flags, peer = self.sock.recvmsg(MAX_DATAGRAM, _PKTINFO_SPACE)
            except BlockingIOError:
                return
            except OSError:
                continue  # an error queued for an earlier reply; the next datagram may be fine
            reply = self._reply(data, peer)
            if reply is None:
                continue
            pktinfo = [(level, kind, value) for level, kind, value in ancillary
                       if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(value) >= 12]
            source = []
            if pktinfo:
                spec_dst = pktinfo[0][2][4:8]  # struct in_pktinfo {ifindex; spec_dst; addr}
                source = [(socket.IPPROTO_IP, _IP_PKTINFO, struct.pack("=i4s4s", 0, spec_dst, bytes(4)))]
            try:
                self.sock.sendmsg([reply], source, 0, peer)
            except OSError:
                pass  # UDP: a reply that cannot go now is lost, as on the wire


def open_socket(netns_name: str, port: int, protocol: str) -> socket.socket:
    """A socket bound to 0.0.0.0:port inside ``netns_name`` (listening, for TCP)."""
    kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
    with netns.inside(netns_name):
        sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        sock.bind(("0.0.0.0", port))
    except OSError as exc:
        sock.close()
        raise KernelError(f'netns "{netns_name}": cannot bind {protocol} port {port}: {exc.strerror}') from exc
    return sock


def netns_identity(name: str) -> tuple[int, int] | None:
    """Which namespace the name ``name`` stands for right now (None: no such name).

    A pod deleted without ``unserve`` and created again under the same name is a new
    namespace; the sockets of the old one must not be taken for it.
    """
    try:
        st = os.stat(netns.path(name))
    except OSError:
        return None
    return st.st_dev, st.st_ino


class ServedKey:
    """The test server of one key (a pod or a node): its sockets in one netns.

    ``open_ports`` makes the set of open sockets equal the declared ports (unless paused);
    ``close`` releases every socket, accepted connection and running dial of the key.
    """

    def __init__(self, key: str, netns_name: str, hostname: str, dns: DnsResponder | None = None) -> None:
        self.key = key
        self.dns = dns  # a CoreDNS pod: these ports answer DNS (agent.dnsserver.DnsResponder)
        self.netns = netns_name
        self.identity = netns_identity(netns_name)
        self.hostname = hostname
        self.ports: tuple[tuple[int, str], ...] = ()
        self.serving = True
        self.connections: set[asyncio.BaseTransport] = set()
        self._tcp: dict[int, asyncio.AbstractServer] = {}
        self._udp: dict[int, UdpServer] = {}
        self.health_checks: dict[int, HealthCheck] = {}  # port -> kube-proxy's check (a node)
        self._checks: dict[int, asyncio.AbstractServer] = {}
        self._tasks: set[asyncio.Task] = set()

    def describe(self) -> dict:
        return {
            "key": self.key,
            "netns": self.netns,
            "hostname": self.hostname,
            "ports": [[port, protocol] for port, protocol in self.ports],
            "serving": self.serving,
            **({"dns": sorted([port, protocol] for port, protocol in self.dns.ports)} if self.dns else {}),
            **({"healthChecks": [[c.port, f"{c.namespace}/{c.name}", c.local_endpoints]
                                 for c in sorted(self.health_checks.values(), key=lambda c: c.port)]}
               if self.health_checks else {}),
            "open": sorted([[p, "TCP"] for p in self._tcp] + [[p, "UDP"] for p in self._udp]),
        }

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def set_ports(self, ports: tuple[tuple[int, str], ...]) -> None:
        """Declare ``ports``; open what is new (if serving), close what is gone.

        All-or-nothing for the new sockets: if one cannot be opened, those opened by this
        call are closed again and the previous declaration stays.
        """
        wanted = set(ports)
        if self.serving:
            await self._open(wanted)
        await self._close({pp for pp in self._open_set() if pp not in wanted})
        self.ports = ports

    async def set_serving(self, serving: bool) -> None:
        if serving and not self.serving:
            await self._open(set(self.ports))
        elif not serving and self.serving:
            await self._close(self._open_set())
        self.serving = serving

    async def set_health_checks(self, checks: dict[int, HealthCheck]) -> None:
        """Listen on exactly the ports of ``checks`` (TCP), answering with their counts; all or
        nothing for the new ports, as ``set_ports``."""
        loop = asyncio.get_running_loop()
        opened: list[int] = []
        try:
            for port in sorted(set(checks) - set(self._checks)):
                if port in self._tcp:
                    raise AgentError(f'key "{self.key}": port {port}/TCP is a test server port, not free for a '
                                     "health check")
                try:
                    sock = open_socket(self.netns, port, "TCP")
                except (OSError, KernelError) as exc:
                    raise AgentError(f'key "{self.key}": health check port {port}: {exc}') from exc
                try:
                    self._checks[port] = await loop.create_server(functools.partial(_HttpProtocol, self, port),
                                                                  sock=sock, backlog=LISTEN_BACKLOG)
                except BaseException:
                    sock.close()
                    raise
                opened.append(port)
        except BaseException:
            for port in opened:
                self._checks.pop(port).close()
            raise
        for port in set(self._checks) - set(checks):
            self._checks.pop(port).close()
        self.health_checks = dict(checks)

    async def close(self) -> None:
        for server in self._checks.values():
            server.close()
        self._checks.clear()
        await self._close(self._open_set())
        for transport in list(self.connections):
            transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let aborted transports release their sockets

    def _open_set(self) -> set[tuple[int, str]]:
        return {(p, "TCP") for p in self._tcp} | {(p, "UDP") for p in self._udp}

    async def _open(self, wanted: set[tuple[int, str]]) -> None:
        new = sorted(wanted - self._open_set())
        opened: list[tuple[int, str]] = []
        loop = asyncio.get_running_loop()
        try:
            for port, protocol in new:
                sock = open_socket(self.netns, port, protocol)
                dns = self.dns if self.dns is not None and (port, protocol) in self.dns.ports else None
                try:
                    if protocol == "TCP":
                        self._tcp[port] = await loop.create_server(
                            functools.partial(dns.tcp_protocol, self.connections) if dns else (lambda: _HttpProtocol(self)),
                            sock=sock, backlog=LISTEN_BACKLOG)
                    else:
                        self._udp[port] = UdpServer(sock, dns.reply if dns else (
                            lambda data, peer: udp_reply(data, self.hostname, peer)))
                except BaseException:
                    sock.close()
                    raise
                opened.append((port, protocol))
        except (OSError, KernelError) as exc:
            await self._close(set(opened))
            if isinstance(exc, KernelError):
                raise AgentError(f'key "{self.key}": {exc}') from exc
            raise AgentError(f'key "{self.key}": netns "{self.netns}": {exc}') from exc

    async def _close(self, which: set[tuple[int, str]]) -> None:
        for port, protocol in which:
            if protocol == "TCP":
                server = self._tcp.pop(port, None)
                if server is not None:
                    server.close()  # closes the listening socket now: new connections are refused
            else:
                udp = self._udp.pop(port, None)
                if udp is not None:
                    udp.close()  # now: a datagram that arrives next gets a port unreachable


def serve_in_foreground(netns_name: str, hostname: str, ports: tuple[tuple[int, str], ...],
                        on_ready=None) -> None:
    """Serve ``ports`` inside ``netns_name`` until SIGINT or SIGTERM; ``on_ready()`` once they listen."""

    async def main() -> None:
        served = ServedKey(f"netns/{netns_name}", netns_name, hostname)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await served.set_ports(ports)
            if on_ready is not None:
                on_ready()
            await stop.wait()
        finally:
            await served.close()

    asyncio.run(main())
