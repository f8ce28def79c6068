"""Lab 09's check: a node labelled disktype=ssd exists, and the pod fast, Pending without one,
was placed on it; the pods with no selector or a zone selector run where they may."""

from overlaynet.tools.labs import Item, LabState


def _labels(node: dict) -> dict:
    return node["metadata"].get("labels", {})


def check(lab: LabState):
    nodes = {node["metadata"]["name"]: node for node in lab.get("nodes")}
    ssd = sorted(name for name, node in nodes.items() if _labels(node).get("disktype") == "ssd")
    yield Item(bool(ssd),
               (f"a node with disktype=ssd: {', '.join(ssd)}" if ssd else "no node has the label disktype=ssd",
                f"un nodo con disktype=ssd: {', '.join(ssd)}" if ssd else "ningún nodo tiene la etiqueta disktype=ssd"),
               ("add one: overlaynet add node node-3 --label disktype=ssd --name lab09",
                "añade uno: overlaynet add node node-3 --label disktype=ssd --name lab09"))
    pods = lab.pods()
    fast = pods.get("fast", {})
    where = fast.get("spec", {}).get("nodeName")
    placed = fast.get("status", {}).get("phase") == "Running" and where in ssd
    yield Item(placed,
               (f"pod fast runs on {where}" if placed else f"pod fast is {fast.get('status', {}).get('phase', 'missing')}",
                f"el pod fast corre en {where}" if placed else f"el pod fast está {fast.get('status', {}).get('phase', 'ausente')}"),
               ("read why: overlaynet describe pod fast --name lab09", "lee por qué: overlaynet describe pod fast --name lab09"))
    zone_b = pods.get("in-zone-b", {}).get("spec", {}).get("nodeName")
    yield Item(zone_b in nodes and _labels(nodes[zone_b]).get("zone") == "b",
               (f"pod in-zone-b runs on {zone_b}, a node with zone=b", f"el pod in-zone-b corre en {zone_b}, un nodo con zone=b"),
               ("apply the pods again: overlaynet apply -f pods.yaml --name lab09",
                "vuelve a aplicar los pods: overlaynet apply -f pods.yaml --name lab09"))
