"""Lab 04's check: /tmp/lab04-vxlan.pcap, written since the lab's cluster came up, holds the
ping's VXLAN packets as the kernel sent them: outer node-1 -> node-2 on UDP 8472, VNI 1, inner
client -> web; and the VXLAN device says the same (VNI 1, port 8472, MTU 1450)."""

import calendar
import os
import re
import time

from overlaynet.tools.labs import Item, LabState

PCAP = "/tmp/lab04-vxlan.pcap"


def _tunnelled(path: str) -> list[tuple[str, str, int, int, str, str]]:
    """(outer src, outer dst, UDP dport, VNI, inner src, inner dst) of each VXLAN packet."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.vxlan import VXLAN
    from scapy.utils import rdpcap

    return [(p[IP].src, p[IP].dst, p[UDP].dport, p[VXLAN].vni, p[VXLAN][IP].src, p[VXLAN][IP].dst)
            for p in rdpcap(path) if p.haslayer(VXLAN) and p[VXLAN].haslayer(IP)]


def check(lab: LabState):
    nodes = {node["metadata"]["name"]: node for node in lab.get("nodes")}
    created = calendar.timegm(time.strptime(nodes["node-1"]["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ"))
    fresh = os.path.exists(PCAP) and os.path.getmtime(PCAP) >= created
    yield Item(fresh,
               (f"{PCAP} was written by a capture on this cluster" if fresh else f"no capture of this cluster in {PCAP}",
                f"{PCAP} lo escribió una captura de este clúster" if fresh else f"no hay una captura de este clúster en {PCAP}"),
               ("run step 2: overlaynet capture node/node-1 ... -w /tmp/lab04-vxlan.pcap, and ping while it runs",
                "ejecuta el paso 2: overlaynet capture node/node-1 ... -w /tmp/lab04-vxlan.pcap, y haz ping mientras corre"))
    if not fresh:
        return
    pods = lab.pods()
    client, web = (pods.get(name, {}).get("status", {}).get("podIP") for name in ("client", "web"))
    wanted = ("172.20.0.11", "172.20.0.12", 8472, 1, client, web)
    seen = wanted in _tunnelled(PCAP)
    yield Item(seen,
               (f"the capture holds client -> web inside VXLAN VNI 1, 172.20.0.11 -> 172.20.0.12:8472" if seen
                else "the capture holds no VXLAN packet from client to web",
                f"la captura contiene client -> web dentro de VXLAN VNI 1, 172.20.0.11 -> 172.20.0.12:8472" if seen
                else "la captura no contiene ningún paquete VXLAN de client a web"),
               ("capture again and ping web from client while it runs (step 2)",
                "captura otra vez y haz ping de client a web mientras corre (paso 2)"))
    device = lab.exec("node/node-1", "ip", "-d", "link", "show", "flannel.1").stdout
    as_flannel = bool(re.search(r" mtu 1450 ", device) and re.search(r"vxlan id 1 .*dstport 8472 nolearning", device))
    yield Item(as_flannel,
               ("node-1's flannel.1: vxlan id 1, dstport 8472, nolearning, mtu 1450",
                "la flannel.1 de node-1: vxlan id 1, dstport 8472, nolearning, mtu 1450"),
               ("read it: overlaynet exec node/node-1 --name lab04 -- ip -d link show flannel.1",
                "léela: overlaynet exec node/node-1 --name lab04 -- ip -d link show flannel.1"))
