"""Lab 05's check: the two pods run, node-1 learned node-2's IPAM block over BGP (a proto bird
route via node-2's address) on an Established session, and verify passes over the routed
network."""

import ipaddress
import re

from overlaynet.tools.labs import Item, LabState


def check(lab: LabState):
    pods = lab.pods()
    running = [name for name in ("client", "web") if pods.get(name, {}).get("status", {}).get("phase") == "Running"]
    yield Item(len(running) == 2,
               (f"pods running: {', '.join(running) or 'none'} (of client, web)",
                f"pods en Running: {', '.join(running) or 'ninguno'} (de client, web)"),
               ("apply them: overlaynet apply -f pods.yaml --name lab05", "aplícalos: overlaynet apply -f pods.yaml --name lab05"))
    if len(running) < 2:
        return
    sessions = lab.overlaynet("describe", "node", "node-1").stdout
    established = bool(re.search(r"Mesh_172_20_0_12\s+up\s+Established", sessions))
    routes = lab.exec("node/node-1", "ip", "route").stdout
    web = pods["web"]["status"]["podIP"]
    learned = [line for line in routes.splitlines() if "via 172.20.0.12 dev eth0 proto bird" in line]
    covers = any(ipaddress.ip_address(web) in ipaddress.ip_network(line.split()[0]) for line in learned)
    yield Item(established and covers,
               ("node-1 learned web's block over BGP (Mesh_172_20_0_12 Established, proto bird via 172.20.0.12)",
                "node-1 aprendió el bloque de web por BGP (Mesh_172_20_0_12 Established, proto bird via 172.20.0.12)"),
               ("read the sessions and routes: overlaynet describe node node-1 --name lab05",
                "lee las sesiones y las rutas: overlaynet describe node node-1 --name lab05"))
    verify = lab.overlaynet("verify")
    yield Item(verify.returncode == 0,
               ("verify passes over the routed network", "verify pasa sobre la red enrutada") if verify.returncode == 0
               else ("verify fails", "verify falla"),
               ("run overlaynet verify --name lab05 and read its failures",
                "ejecuta overlaynet verify --name lab05 y lee sus fallos"))
