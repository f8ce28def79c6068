"""The agent's wire protocols as pure functions: HTTP and UDP test server, probe parsing.

No root, no sockets: what the test server answers to a given request, and how the prober
reads what comes back.
"""

from __future__ import annotations

import errno
import json
import socket
import struct

import pytest

from overlaynet.agent import reachability, testserver
from overlaynet.agent.testserver import Dial, Request, Response
from overlaynet.errors import AgentError, InvalidInput

PEER = ("10.244.1.7", 40312)


def get(target: str, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    return f"{method} {target} {version}\r\nHost: x\r\nUser-Agent: curl/7.88\r\nAccept: */*\r\n\r\n".encode()


def answer(target: str, hostname: str = "web-1") -> Response | Dial:
    req = testserver.parse_request(get(target))
    assert isinstance(req, Request)
    return testserver.route(req, hostname, PEER)


# -- request heads --------------------------------------------------------------------------


def test_head_end_waits_for_the_blank_line():
    assert testserver.head_end(b"GET / HTTP/1.1\r\nHost: x\r\n") == -1
    data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    assert testserver.head_end(data) == len(data)
    assert testserver.head_end(data + b"body") == len(data)


def test_head_end_accepts_bare_newlines():
    assert testserver.head_end(b"GET / HTTP/1.0\n\n") == len(b"GET / HTTP/1.0\n\n")


def test_parse_request_splits_path_and_decodes_query():
    req = testserver.parse_request(get("/echo?msg=hello%20world&msg=second&x=a+b"))
    assert req == Request("GET", "/echo", {"msg": "hello world", "x": "a b"})


def test_parse_request_decodes_the_path():
    req = testserver.parse_request(get("/host%6eame"))
    assert isinstance(req, Request) and req.path == "/hostname"


def test_parse_request_accepts_absolute_form():
    req = testserver.parse_request(get("http://10.0.0.1:8080/clientip?a=1"))
    assert req == Request("GET", "/clientip", {"a": "1"})
    req = testserver.parse_request(get("http://10.0.0.1:8080"))
    assert isinstance(req, Request) and req.path == "/"


@pytest.mark.parametrize(
    "head, status",
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\n\r\n", 400),
        (b"GET / FTP/1.0\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"POST / HTTP/1.1\r\n\r\n", 405),
        (b"GET nopath HTTP/1.1\r\n\r\n", 400),
        ("GET /\u00e9 HTTP/1.1\r\n\r\n".encode(), 400),
    ],
)
def test_parse_request_refuses_malformed_heads(head, status):
    resp = testserver.parse_request(head)
    assert isinstance(resp, Response)
    assert resp.status == status


def test_head_requests_are_accepted():
    assert isinstance(testserver.parse_request(get("/", method="HEAD")), Request)


def test_http_1_0_is_accepted():
    assert isinstance(testserver.parse_request(get("/", version="HTTP/1.0")), Request)


# -- routes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/hostname"])
def test_hostname(path):
    assert answer(path) == Response(200, b"web-1")


def test_clientip_reports_the_peer_as_seen():
    assert answer("/clientip") == Response(200, b"10.244.1.7:40312")


def test_clientip_brackets_ipv6():
    req = testserver.parse_request(get("/clientip"))
    assert testserver.route(req, "h", ("fd00::7", 5, 0, 0)).body == b"[fd00::7]:5"


def test_echo():
    assert answer("/echo?msg=a%26b%3Dc").body == b"a&b=c"
    assert answer("/echo").body == b""


def test_healthz():
    assert answer("/healthz") == Response(200, b"ok")


def test_unknown_path_is_404():
    resp = answer("/nope")
    assert isinstance(resp, Response) and resp.status == 404
    assert b"/nope" in resp.body


# -- /dial ----------------------------------------------------------------------------------


def test_dial_defaults_like_agnhost():
    assert answer("/dial?host=10.244.2.3&port=8080") == Dial("10.244.2.3", 8080, "http", "hostname", 1, 2.0)


def test_dial_full():
    dial = answer("/dial?host=10.244.2.3&port=53&protocol=UDP&request=echo%20hi&tries=3&timeout=0.5")
    assert dial == Dial("10.244.2.3", 53, "udp", "echo hi", 3, 0.5)


def test_dial_path_prefixes_a_slash():
    assert Dial("h", 1, "http", "hostname", 1, 1.0).path == "/hostname"
    assert Dial("h", 1, "http", "/echo?msg=x", 1, 1.0).path == "/echo?msg=x"


@pytest.mark.parametrize(
    "query, fragment",
    [
        ("port=80", b"host is required"),
        ("host=h&port=x", b"not a number"),
        ("host=h&port=0", b"out of range 1-65535"),
        ("host=h&port=65536", b"out of range 1-65535"),
        ("host=h&port=80&protocol=sctp", b"not one of http, udp"),
        ("host=h&port=80&tries=0", b"tries 0 is out of range"),
        ("host=h&port=80&tries=1000", b"tries 1000 is out of range"),
        ("host=h&port=80&tries=two", b"not a number"),
        ("host=h&port=80&timeout=0", b"out of range"),
        ("host=h&port=80&timeout=x", b"not a number"),
    ],
)
def test_dial_refuses_bad_parameters(query, fragment):
    resp = answer(f"/dial?{query}")
    assert isinstance(resp, Response) and resp.status == 400
    assert fragment in resp.body


def test_dial_response_is_agnhost_shaped_json():
    resp = testserver.dial_response(["web-2"], ["http 10.0.0.1:80: timeout"])
    assert resp.status == 200 and resp.content_type == "application/json"
    assert json.loads(resp.body) == {"responses": ["web-2"], "errors": ["http 10.0.0.1:80: timeout"]}


# -- responses ------------------------------------------------------------------------------


def test_render_response_is_curl_compatible():
    data = testserver.render_response(Response(200, b"web-1"))
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"Content-Type: text/plain; charset=utf-8" in lines
    assert b"Content-Length: 5" in lines
    assert b"Connection: close" in lines
    assert body == b"web-1"


def test_render_response_head_only_keeps_the_length():
    data = testserver.render_response(Response(200, b"web-1"), head_only=True)
    assert data.endswith(b"\r\n\r\n") and b"Content-Length: 5" in data


def test_render_405_names_the_allowed_methods():
    assert b"Allow: GET, HEAD" in testserver.render_response(Response(405, b""))


def test_prober_reads_what_the_server_renders():
    data = testserver.render_response(Response(404, b"missing"))
    assert reachability.parse_http_response(data) == (404, b"missing")


# -- UDP ------------------------------------------------------------------------------------


def test_udp_commands():
    assert testserver.udp_reply(b"hostname", "web-1", PEER) == b"web-1"
    assert testserver.udp_reply(b"hostname\n", "web-1", PEER) == b"web-1"
    assert testserver.udp_reply(b"clientip", "web-1", PEER) == b"10.244.1.7:40312"
    assert testserver.udp_reply(b"echo hello world", "web-1", PEER) == b"hello world"
    assert testserver.udp_reply(b"echo", "web-1", PEER) == b""


def test_udp_unknown_command_says_so():
    assert b"unknown command" in testserver.udp_reply(b"reboot", "web-1", PEER)


def test_udp_empty_datagram_gets_no_answer():
    assert testserver.udp_reply(b"", "web-1", PEER) is None
    assert testserver.udp_reply(b"\n", "web-1", PEER) is None


# -- serve's port list ----------------------------------------------------------------------


def test_check_ports_sorts_and_deduplicates():
    assert testserver.check_ports("k", [[8080, "UDP"], (80, "TCP"), [8080, "UDP"]]) == ((80, "TCP"), (8080, "UDP"))


@pytest.mark.parametrize(
    "ports, fragment",
    [
        ("8080", "must be a list"),
        ([8080], "must be a [port, protocol] pair"),
        ([[0, "TCP"]], "port 0 is out of range 1-65535"),
        ([[70000, "TCP"]], "port 70000 is out of range"),
        ([[True, "TCP"]], "out of range"),
        ([[80, "SCTP"]], "protocol 'SCTP' is not one of TCP, UDP"),
        ([[80, "tcp"]], "is not one of TCP, UDP"),
    ],
)
def test_check_ports_names_the_key_and_the_field(ports, fragment):
    with pytest.raises(AgentError) as info:
        testserver.check_ports("pod-a", ports)
    assert 'key "pod-a"' in str(info.value) and fragment in str(info.value)


# -- probes: requests and answers -----------------------------------------------------------


def test_parse_probes():
    probes, timeout = reachability.parse_probes(
        [
            {"id": [1, 2], "netns": "c.pod.default.a", "dst": "10.244.1.2", "port": 8080, "protocol": "tcp"},
            {"id": "x", "netns": "c.pod.default.a", "dst": "10.244.1.2", "protocol": "icmp"},
            {"id": None, "netns": "n", "dst": "fd00::1", "port": 53, "protocol": "udp"},
        ],
        1.5,
    )
    assert timeout == 1.5
    assert probes[0] == reachability.Probe([1, 2], "c.pod.default.a", "10.244.1.2", 8080, "tcp", socket.AF_INET)
    assert probes[1].port == 0 and probes[1].protocol == "icmp"
    assert probes[2].family == socket.AF_INET6


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("x", "probe 0: must be an object"),
        ({"netns": "n", "dst": "10.0.0.1", "port": 1, "protocol": "sctp"}, "protocol 'sctp' is not one of"),
        ({"netns": "", "dst": "10.0.0.1", "port": 1, "protocol": "tcp"}, "is not a namespace name"),
        ({"netns": "../x", "dst": "10.0.0.1", "port": 1, "protocol": "tcp"}, "is not a namespace name"),
        ({"netns": "n", "dst": "web", "port": 1, "protocol": "tcp"}, "dst 'web' is not an IP address"),
        ({"netns": "n", "dst": "10.0.0.1", "port": 0, "protocol": "udp"}, "port 0 is out of range"),
        ({"netns": "n", "dst": "10.0.0.1", "protocol": "tcp"}, "port 0 is out of range"),
        ({"netns": "n", "dst": "fd00::1", "protocol": "icmp"}, "icmp probes are IPv4 only"),
    ],
)
def test_parse_probes_names_the_probe(item, fragment):
    with pytest.raises(InvalidInput) as info:
        reachability.parse_probes([item], 2.0)
    assert fragment in str(info.value)


@pytest.mark.parametrize("timeout", [0, -1, 61, "2", True, None])
def test_parse_probes_bounds_the_timeout(timeout):
    with pytest.raises(InvalidInput, match="timeout"):
        reachability.parse_probes([], timeout)


def test_parse_http_response_honours_content_length():
    assert reachability.parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA") == (200, b"ok")
    assert reachability.parse_http_response(b"HTTP/1.1 200 OK\r\n\r\nall") == (200, b"all")


@pytest.mark.parametrize("data", [b"", b"hello", b"SSH-2.0-x\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n"])
def test_parse_http_response_refuses_non_http(data):
    assert reachability.parse_http_response(data) is None


@pytest.mark.parametrize(
    "text, ip",
    [("10.244.1.2:4711", "10.244.1.2"), ("[fd00::2]:53\n", "fd00::2"), ("10.244.1.2", None), ("web:80", None), ("", None)],
)
def test_parse_addr(text, ip):
    assert reachability.parse_addr(text) == ip


def test_error_text():
    assert reachability.error_text(TimeoutError()) == "timeout"
    assert reachability.error_text(ConnectionRefusedError(errno.ECONNREFUSED, "x")) == "connection refused"
    assert reachability.error_text(OSError(errno.EHOSTUNREACH, "x")) == "host unreachable"
    assert reachability.error_text(OSError(errno.ENETUNREACH, "x")) == "network unreachable"
    assert reachability.error_text(OSError(errno.EIO, "Input/output error")) == "input/output error"


def test_icmp_echo_has_a_valid_checksum():
    packet = reachability.icmp_echo(0x1234, 7)
    assert packet[0] == 8 and struct.unpack("!HH", packet[4:8]) == (0x1234, 7)
    assert reachability.icmp_checksum(packet) == 0  # a correct checksum sums to zero
    assert reachability.icmp_checksum(reachability.icmp_echo(1, 2, b"odd")) == 0


def _ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + payload


def test_parse_icmp_echo_reply():
    reply = bytearray(reachability.icmp_echo(0x1234, 7))
    reply[0] = 0
    assert reachability.parse_icmp(_ipv4("10.244.2.3", "10.244.1.2", 1, bytes(reply))) == (0x1234, 7, "10.244.2.3", None)


def test_parse_icmp_unreachable_quotes_our_echo():
    original = _ipv4("10.244.1.2", "10.244.9.9", 1, reachability.icmp_echo(0x1234, 8))
    error = struct.pack("!BBHI", 3, 1, 0, 0) + original[:28]
    parsed = reachability.parse_icmp(_ipv4("10.244.1.1", "10.244.1.2", 1, error))
    assert parsed == (0x1234, 8, "10.244.1.1", "host unreachable (from 10.244.1.1)")


def test_parse_icmp_ignores_others():
    request = reachability.icmp_echo(1, 1)  # someone pinging us
    assert reachability.parse_icmp(_ipv4("10.0.0.1", "10.0.0.2", 1, request)) is None
    assert reachability.parse_icmp(b"\x45\x00") is None
    udp_in_unreach = struct.pack("!BBHI", 3, 3, 0, 0) + _ipv4("10.0.0.2", "10.0.0.1", 17, b"\0" * 8)
    assert reachability.parse_icmp(_ipv4("10.0.0.1", "10.0.0.2", 1, udp_in_unreach)) is None


# -- the process stays light ----------------------------------------------------------------


def test_the_agent_process_imports_neither_pyroute2_nor_scapy():
    import subprocess
    import sys

    code = ("import sys, overlaynet.agent.__main__, overlaynet.agent.server; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pyroute2', 'scapy', 'yaml', 'click'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
