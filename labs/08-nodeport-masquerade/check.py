"""Lab 08's check: the Service web-local is a NodePort with externalTrafficPolicy: Local; from
the client outside the cluster, node-2 (which has the endpoint) answers on it with the client's
address kept, node-1 (which has none) drops it, and the Cluster-policy NodePort is masqueraded."""

from overlaynet.tools.labs import Item, LabState

CLIENT, NODE_1, NODE_2 = "172.20.0.2", "172.20.0.11", "172.20.0.12"


def _client_ip(lab: LabState, node_ip: str, port: int) -> str:
    """The client address the pod reported, or "" when nothing answered."""
    answer = lab.exec("external", "curl", "-s", "-m", "2", f"http://{node_ip}:{port}/clientip")
    return answer.stdout.rsplit(":", 1)[0] if answer.returncode == 0 else ""


def check(lab: LabState):
    services = lab.get("svc", "web-local")
    spec = services[0]["spec"] if services else {}
    local = spec.get("externalTrafficPolicy") == "Local" and [p.get("nodePort") for p in spec.get("ports", [])] == [30081]
    yield Item(local,
               ("Service web-local: NodePort 30081, externalTrafficPolicy: Local" if local
                else "no NodePort Service web-local on 30081 with externalTrafficPolicy: Local",
                "Service web-local: NodePort 30081, externalTrafficPolicy: Local" if local
                else "no hay un Service NodePort web-local en el 30081 con externalTrafficPolicy: Local"),
               ("apply it: overlaynet apply -f service-local.yaml --name lab08",
                "aplícalo: overlaynet apply -f service-local.yaml --name lab08"))
    if not local:
        return
    kept = _client_ip(lab, NODE_2, 30081)
    yield Item(kept == CLIENT,
               (f"external -> node-2:30081: the pod saw {kept or 'nothing'} (the client's own address)",
                f"external -> node-2:30081: el pod vio {kept or 'nada'} (la dirección propia del cliente)"),
               (f"try it: overlaynet exec external --name lab08 -- curl -s http://{NODE_2}:30081/clientip",
                f"pruébalo: overlaynet exec external --name lab08 -- curl -s http://{NODE_2}:30081/clientip"))
    dropped = _client_ip(lab, NODE_1, 30081)
    yield Item(not dropped,
               ("external -> node-1:30081: dropped, node-1 has no local endpoint" if not dropped
                else f"external -> node-1:30081 answered ({dropped})",
                "external -> node-1:30081: descartado, node-1 no tiene endpoint local" if not dropped
                else f"external -> node-1:30081 contestó ({dropped})"),
               ("read node-1's filter rules: overlaynet rules node-1 --table filter --name lab08",
                "lee las reglas filter de node-1: overlaynet rules node-1 --table filter --name lab08"))
    masqueraded = _client_ip(lab, NODE_1, 30080)
    yield Item(bool(masqueraded) and masqueraded != CLIENT,
               (f"external -> node-1:30080 (policy Cluster): the pod saw {masqueraded or 'nothing'}, masqueraded",
                f"external -> node-1:30080 (política Cluster): el pod vio {masqueraded or 'nada'}, con masquerade"),
               ("is the Service web there? overlaynet get svc --name lab08",
                "¿está el Service web? overlaynet get svc --name lab08"))
