"""Lab 10's check: node-2's flannel.1 has the MTU of the rest of the path again (1450, like the
pods and node-1's tunnel), and a full-size packet with DF set crosses the tunnel both ways."""

import re

from overlaynet.tools.labs import Item, LabState

POD_MTU, LARGEST_PAYLOAD = 1450, 1422  # 1422 + 8 (ICMP) + 20 (IP) = 1450


def _mtu(lab: LabState, node: str) -> int:
    shown = lab.exec(f"node/{node}", "ip", "-o", "link", "show", "flannel.1").stdout
    found = re.search(r" mtu (\d+) ", shown)
    return int(found.group(1)) if found else 0


def _full_size_ping(lab: LabState, source: str, destination: str) -> bool:
    return lab.exec(source, "ping", "-c1", "-W1", "-M", "do", "-s", str(LARGEST_PAYLOAD), destination).returncode == 0


def check(lab: LabState):
    mtus = {node: _mtu(lab, node) for node in ("node-1", "node-2")}
    even = all(mtu == POD_MTU for mtu in mtus.values())
    yield Item(even,
               (f"every node's flannel.1 has the pods' MTU, {POD_MTU}" if even
                else f"a node's flannel.1 MTU differs from the pods' ({POD_MTU})",
                f"la flannel.1 de cada nodo tiene la MTU de los pods, {POD_MTU}" if even
                else f"la MTU de la flannel.1 de algún nodo no es la de los pods ({POD_MTU})"),
               ("compare the MTU of every interface on the path: overlaynet exec node/node-2 --name lab10 -- ip link",
                "compara la MTU de cada interfaz del camino: overlaynet exec node/node-2 --name lab10 -- ip link"))
    pods = lab.pods()
    addresses = {name: pods.get(name, {}).get("status", {}).get("podIP", "") for name in ("client", "web")}
    for source, destination in (("web", "client"), ("client", "web")):
        passed = _full_size_ping(lab, source, addresses[destination])
        yield Item(passed,
                   (f"{source} -> {destination}: a {POD_MTU}-byte packet with DF set crosses the tunnel",
                    f"{source} -> {destination}: un paquete de {POD_MTU} bytes con DF cruza el túnel"),
                   (f"still too long? the sender may remember an old path MTU: overlaynet exec {source} --name lab10 -- ip route get {addresses[destination]}",
                    f"¿sigue siendo demasiado largo? el emisor puede recordar una MTU de camino vieja: overlaynet exec {source} --name lab10 -- ip route get {addresses[destination]}"))
