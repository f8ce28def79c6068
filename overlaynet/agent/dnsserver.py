"""The cluster DNS server: what a CoreDNS pod "runs", on the agent's event loop (dnspython).

This module owns:
- ``Zone``: the records the controller pushed (op ``dns_zone``; computed by
  ``overlaynet.control.dns_records``), checked and indexed by name;
- ``answer``: one query in wire format, its response out (pure, unit-tested without root),
  as CoreDNS's ``kubernetes`` plugin answers: authoritative (``aa``) for the cluster zone
  and ``in-addr.arpa``; NXDOMAIN with the zone's SOA in the authority section for a name
  that does not exist; NOERROR with no answer (and the SOA) for an existing name asked for
  another type (names that only have names below them, such as ``svc.cluster.local``,
  exist); REFUSED for a name outside both zones (there is no upstream resolver to forward
  to: overlaynet's pods have no internet); a UDP answer larger than the client takes (512
  bytes, or its EDNS size) comes back truncated (``tc``), and the client asks again over TCP;
- ``DnsResponder``: what a CoreDNS pod answers on its DNS ports (UDP datagrams and TCP
  streams); the pod's ``testserver.ServedKey`` opens those sockets beside its test server's,
  so ``unserve``, ``set_serving`` (``overlaynet testserver stop``) and liveness restarts apply.

What it never does: compute records (the controller does, from the store) or recurse.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from overlaynet.errors import AgentError

log = logging.getLogger("overlaynet.agent")

TTL = 5  # the kubernetes plugin's default; every record and the SOA's minimum (as control/dns_records: the
REVERSE_ZONE = "in-addr.arpa."  # agent never imports the controller, so the two constants are repeated here)
UDP_DEFAULT_SIZE = 512  # RFC 1035, a query without EDNS
UDP_MAX_SIZE = 1232  # what we answer over UDP at most, EDNS or not (the DNS flag day 2020 value)
TCP_IDLE_TIMEOUT = 10.0
MAX_RECORDS = 1_000_000


class Zone:
    """The cluster zone and the reverse zone: records by (name, type), and every existing name."""

    def __init__(self, domain: str, records: list, serial: int) -> None:
        try:
            self.origins = (dns.name.from_text(domain), dns.name.from_text(REVERSE_ZONE))
        except dns.exception.DNSException as exc:
            raise AgentError(f"dns_zone: domain {domain!r} is not a domain name: {exc}") from None
        self.serial = serial
        grouped: dict[tuple[dns.name.Name, int], list[str]] = {}
        for index, record in enumerate(records):
            if not isinstance(record, list) or len(record) != 3 or not all(isinstance(f, str) for f in record):
                raise AgentError(f"dns_zone: records[{index}] must be [name, type, data], not {record!r}")
            name_text, type_text, data = record
            try:
                name = dns.name.from_text(name_text)
                rdtype = dns.rdatatype.from_text(type_text)
            except dns.exception.DNSException as exc:
                raise AgentError(f"dns_zone: records[{index}] {name_text!r} {type_text!r}: {exc}") from None
            if not any(name.is_subdomain(origin) for origin in self.origins):
                raise AgentError(f"dns_zone: records[{index}] {name_text!r} is outside the zones {domain} and "
                                 f"{REVERSE_ZONE}")
            grouped.setdefault((name, rdtype), []).append(data)
        self.rrsets: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
        self.names: set[dns.name.Name] = set(self.origins)
        for (name, rdtype), texts in grouped.items():
            try:
                self.rrsets[(name, rdtype)] = dns.rrset.from_text_list(name, TTL, dns.rdataclass.IN, rdtype, texts)
            except dns.exception.DNSException as exc:
                raise AgentError(f"dns_zone: {name} {dns.rdatatype.to_text(rdtype)} {texts[0]!r}: {exc}") from None
            origin = self.origin_of(name)
            while name != origin and name not in self.names:  # the name and its empty non-terminals
                self.names.add(name)
                name = name.parent()
        self.soa = {origin: dns.rrset.from_text(
            origin, TTL, dns.rdataclass.IN, dns.rdatatype.SOA,
            f"ns.dns.{self.origins[0]} hostmaster.{self.origins[0]} {serial} 7200 1800 86400 {TTL}")
            for origin in self.origins}

    def origin_of(self, name: dns.name.Name) -> dns.name.Name | None:
        return next((origin for origin in self.origins if name.is_subdomain(origin)), None)

    def __len__(self) -> int:
        return len(self.rrsets)


def parse_zone(request: dict) -> Zone:
    """The ``dns_zone`` request's ``domain``, ``records`` and ``serial``, checked."""
    domain, records, serial = request.get("domain"), request.get("records"), request.get("serial")
    if not isinstance(domain, str) or not domain:
        raise AgentError(f"dns_zone: domain must be a non-empty string, not {domain!r}")
    if not isinstance(records, list) or len(records) > MAX_RECORDS:
        raise AgentError(f"dns_zone: records must be a list of at most {MAX_RECORDS} [name, type, data]")
    if isinstance(serial, bool) or not isinstance(serial, int) or not 0 <= serial < 2**32:
        raise AgentError(f"dns_zone: serial must be a whole number in 0-4294967295, not {serial!r}")
    return Zone(domain, records, serial)


def answer(zone: Zone | None, wire: bytes, max_size: int | None = None) -> bytes | None:
    """The response to the query ``wire`` (None: not a DNS message, nothing to answer).

    ``max_size``: the transport's limit (TCP: 65535); None means UDP, the client's limit.
    """
    try:
        query = dns.message.from_wire(wire)
    except dns.message.ShortHeader:
        return None
    except dns.exception.DNSException:
        return _error_from_header(wire, dns.rcode.FORMERR)
    if query.flags & dns.flags.QR:
        return None  # a response: never answer one (no loops)
    response = dns.message.make_response(query, our_payload=UDP_MAX_SIZE)
    if max_size is None:
        max_size = min(UDP_MAX_SIZE, max(UDP_DEFAULT_SIZE, query.payload)) if query.edns >= 0 else UDP_DEFAULT_SIZE
    if query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
    elif len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
    elif zone is None:
        response.set_rcode(dns.rcode.SERVFAIL)  # no records pushed yet
    else:
        _resolve(zone, query.question[0], response)
    try:
        return response.to_wire(max_size=max_size)
    except dns.exception.TooBig:
        truncated = dns.message.make_response(query, our_payload=UDP_MAX_SIZE)
        truncated.flags |= dns.flags.TC | (response.flags & dns.flags.AA)
        return truncated.to_wire(max_size=max_size)


def _resolve(zone: Zone, question: dns.rrset.RRset, response: dns.message.Message) -> None:
    name, rdtype = question.name, question.rdtype
    origin = zone.origin_of(name)
    if origin is None or question.rdclass != dns.rdataclass.IN:
        response.set_rcode(dns.rcode.REFUSED)  # not ours, and no upstream to forward to
        return
    response.flags |= dns.flags.AA
    if name not in zone.names:
        response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(zone.soa[origin])
        return
    if name == origin and rdtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
        response.answer.append(zone.soa[origin])
    types = [t for (n, t) in zone.rrsets if n == name] if rdtype == dns.rdatatype.ANY else [rdtype]
    for found in types:
        rrset = zone.rrsets.get((name, found))
        if rrset is not None:
            answer_set = dns.rrset.RRset(name, rrset.rdclass, rrset.rdtype)  # the name as the client wrote it
            answer_set.update(rrset)
            response.answer.append(answer_set)
    if not response.answer:
        response.authority.append(zone.soa[origin])


def _error_from_header(wire: bytes, rcode: int) -> bytes | None:
    """A bare error response for a message too broken to parse past its header."""
    if len(wire) < 12 or wire[2] & 0x80:
        return None
    flags = 0x8000 | (wire[2] & 0x79) << 8 | rcode  # QR, the opcode and RD kept
    return wire[:2] + flags.to_bytes(2, "big") + bytes(8)


class DnsResponder:
    """What a DNS pod's server answers with, on the ports in ``ports``: handed to its test
    server's ``ServedKey``, which opens those ports for DNS (UDP datagrams, TCP streams) and
    every other port for the test server, as a CoreDNS pod serves DNS and its health port."""

    def __init__(self, ports: frozenset[tuple[int, str]], zone: Callable[[], Zone | None]) -> None:
        self.ports = ports
        self.zone = zone

    def reply(self, data: bytes, _peer: tuple) -> bytes | None:
        return answer(self.zone(), data)

    def tcp_protocol(self, connections: set[asyncio.BaseTransport]) -> asyncio.Protocol:
        return _TcpDns(self, connections)


class _TcpDns(asyncio.Protocol):
    """One DNS-over-TCP connection: length-prefixed queries, answered in order."""

    def __init__(self, responder: DnsResponder, connections: set[asyncio.BaseTransport]) -> None:
        self._responder = responder
        self._connections = connections  # the served key's, so that closing it aborts this one
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._connections.add(transport)
        self._rearm()

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        transport = self._transport
        if transport is not None:
            self._timer = asyncio.get_running_loop().call_later(TCP_IDLE_TIMEOUT, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._connections.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._rearm()
        while len(self._buf) >= 2:
            length = int.from_bytes(self._buf[:2], "big")
            if len(self._buf) < 2 + length:
                return
            message = bytes(self._buf[2:2 + length])
            del self._buf[:2 + length]
            reply = answer(self._responder.zone(), message, 65535)
            if reply is None:
                self._transport.close()  # type: ignore[union-attr]
                return
            self._transport.write(len(reply).to_bytes(2, "big") + reply)  # type: ignore[union-attr]
