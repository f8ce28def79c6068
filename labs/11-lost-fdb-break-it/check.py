"""Lab 11's check: every node's flannel.1 forwards each peer's VTEP MAC to that peer's address
again (the FDB entries Flannel programs, compared with the nodes' backend-data annotations),
and verify passes: every pod reaches every pod across the tunnels."""

import json
import re

from overlaynet.tools.labs import Item, LabState


def check(lab: LabState):
    nodes = lab.get("nodes")
    vteps = {node["metadata"]["name"]: (json.loads(node["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-data"])["VtepMAC"],
                                       node["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"])
             for node in nodes}
    missing = []
    for node in vteps:
        fdb = lab.exec(f"node/{node}", "bridge", "fdb", "show", "dev", "flannel.1").stdout
        for peer, (mac, address) in vteps.items():
            if peer != node and not re.search(rf"^{re.escape(mac)} dst {re.escape(address)} self permanent$", fdb, re.M):
                missing.append(f"{node} -> {peer}")
    yield Item(not missing,
               ("every node's flannel.1 FDB sends each peer's VTEP MAC to that peer" if not missing
                else f"{len(missing)} FDB entry missing on a node's flannel.1" if len(missing) == 1
                else f"{len(missing)} FDB entries missing on the nodes' flannel.1",
                "la FDB de flannel.1 de cada nodo envía la VTEP MAC de cada vecino a ese vecino" if not missing
                else f"falta {len(missing)} entrada FDB en la flannel.1 de un nodo" if len(missing) == 1
                else f"faltan {len(missing)} entradas FDB en las flannel.1 de los nodos"),
               ("compare the nodes: overlaynet exec node/node-2 --name lab11 -- bridge fdb show dev flannel.1",
                "compara los nodos: overlaynet exec node/node-2 --name lab11 -- bridge fdb show dev flannel.1"))
    verify = lab.overlaynet("verify")
    yield Item(verify.returncode == 0,
               ("verify passes: every pod reaches every pod", "verify pasa: todo pod llega a todo pod")
               if verify.returncode == 0 else ("verify fails", "verify falla"),
               ("its matrix shows which pairs fail: overlaynet verify --name lab11",
                "su matriz muestra qué parejas fallan: overlaynet verify --name lab11"))
