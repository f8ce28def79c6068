"""overlaynet.tools.capture decodes a pcap written by scapy here; kernel.capture counts the
records of a growing pcap stream. No root."""

from __future__ import annotations

import io

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import PcapWriter

from overlaynet.kernel.capture import count_records
from overlaynet.tools import capture

NODE_1, NODE_2 = "172.20.0.11", "172.20.0.12"
POD_A, POD_B = "10.244.0.4", "10.244.1.2"


def pcap_of(*frames) -> bytes:
    buffer = io.BytesIO()
    writer = PcapWriter(buffer, linktype=1, sync=True)
    for stamp, frame in enumerate(frames):
        frame.time = 1000.0 + stamp * 0.5
        writer.write(frame)
    data = buffer.getvalue()
    return data


def vxlan_frame(inner) -> Ether:
    return (Ether(src="02:00:00:00:00:11", dst="02:00:00:00:00:12") / IP(src=NODE_1, dst=NODE_2, ttl=64)
            / UDP(sport=40000, dport=8472) / VXLAN(vni=1, flags=0x08)
            / Ether(src="fe:00:00:00:00:01", dst="fe:00:00:00:00:02") / inner)


def test_a_vxlan_packet_shows_outer_headers_the_vni_and_the_inner_pod_addresses():
    [packet] = capture.decode(pcap_of(vxlan_frame(IP(src=POD_A, dst=POD_B, ttl=63) / ICMP(type=8, id=7, seq=1))))
    layers = [(layer.name, layer.inner) for layer in packet.layers]
    assert layers == [("Ethernet", False), ("IPv4", False), ("UDP", False), ("VXLAN", False),
                      ("Ethernet", True), ("IPv4", True), ("ICMP", True)]
    fields = {(layer.name, layer.inner): layer.fields for layer in packet.layers}
    assert fields[("IPv4", False)].startswith(f"{NODE_1} → {NODE_2}  ttl 64")
    assert fields[("UDP", False)] == "40000 → 8472 (VXLAN)"
    assert fields[("VXLAN", False)] == "VNI 1"
    assert fields[("IPv4", True)].startswith(f"{POD_A} → {POD_B}  ttl 63")
    assert packet.summary == f"VXLAN VNI 1: ICMP {POD_A} → {POD_B}  echo-request id 7 seq 1"
    text = capture.render([packet])
    assert "      outer IPv4      172.20.0.11 → 172.20.0.12" in text
    assert "      inner ICMP      echo-request id 7 seq 1" in text


def test_tcp_inside_vxlan_shows_ports_and_flags():
    [packet] = capture.decode(pcap_of(vxlan_frame(IP(src=POD_A, dst=POD_B) / TCP(sport=51000, dport=8080,
                                                                                 flags="S", seq=100))))
    assert packet.summary == f"VXLAN VNI 1: TCP {POD_A} → {POD_B}  51000 → 8080  [SYN]  seq 100"


def test_routed_traffic_is_plain_ip_with_the_pod_addresses():
    frames = (Ether() / IP(src=POD_A, dst=POD_B, ttl=63) / UDP(sport=5000, dport=8081) / b"hello",
              Ether() / IP(src=POD_B, dst=POD_A) / ICMP(type=3, code=4, nexthopmtu=1450))
    udp, icmp = capture.decode(pcap_of(*frames))
    assert not udp.encapsulated and [layer.name for layer in udp.layers] == ["Ethernet", "IPv4", "UDP"]
    assert udp.summary == f"UDP {POD_A} → {POD_B}  5000 → 8081  len 13"
    assert "fragmentation needed, next-hop MTU 1450" in icmp.summary
    assert (udp.time, icmp.time) == (0.0, 0.5)


def test_arp_is_shown_as_a_question_and_an_answer():
    who, answer = capture.decode(pcap_of(Ether() / ARP(op=1, psrc=POD_A, pdst="10.244.0.1"),
                                         Ether() / ARP(op=2, psrc="10.244.0.1", hwsrc="02:00:00:00:00:01")))
    assert who.summary == f"ARP who-has 10.244.0.1 tell {POD_A}"
    assert answer.summary == "ARP 10.244.0.1 is-at 02:00:00:00:00:01"


def test_an_empty_capture_decodes_to_nothing():
    assert capture.decode(b"") == []
    assert capture.decode(pcap_of()) == []


def test_records_are_counted_only_when_whole():
    data = pcap_of(Ether() / IP() / ICMP(), Ether() / IP() / ICMP())
    assert count_records(data) == 2
    assert count_records(data[:-1]) == 1
    assert count_records(data[:24]) == 0 and count_records(b"") == 0


def test_as_dict_carries_every_layer_for_scripts():
    [packet] = capture.decode(pcap_of(vxlan_frame(IP(src=POD_A, dst=POD_B) / ICMP())))
    document = packet.as_dict()
    assert document["number"] == 1 and document["summary"].startswith("VXLAN VNI 1")
    assert {"name": "VXLAN", "fields": "VNI 1", "inner": False} in document["layers"]


def test_ipv6_frames_name_their_addresses_and_payload():
    from scapy.layers.inet6 import ICMPv6ND_RS, IPv6

    [packet] = capture.decode(pcap_of(Ether() / IPv6(src="fe80::1", dst="ff02::2", hlim=255) / ICMPv6ND_RS()))
    assert [(layer.name, layer.fields) for layer in packet.layers][1:] == [
        ("IPv6", "fe80::1 → ff02::2  hlim 255"), ("payload", "ICMPv6 Neighbor Discovery - Router Solicitation")]
