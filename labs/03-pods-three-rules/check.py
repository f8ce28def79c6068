"""Lab 03's check: the three pods run where pods.yaml puts them, and verify proves the three rules."""

from overlaynet.tools.labs import Item, LabState

PLACEMENT = {"client": "node-1", "web-1": "node-1", "web-2": "node-2"}


def check(lab: LabState):
    pods = lab.pods()
    running = [name for name in PLACEMENT if pods.get(name, {}).get("status", {}).get("phase") == "Running"]
    yield Item(len(running) == len(PLACEMENT),
               (f"pods running: {', '.join(running) or 'none'} (of client, web-1, web-2)",
                f"pods en Running: {', '.join(running) or 'ninguno'} (de client, web-1, web-2)"),
               ("apply them: overlaynet apply -f pods.yaml --name lab03",
                "aplícalos: overlaynet apply -f pods.yaml --name lab03"))
    if len(running) < len(PLACEMENT):
        return
    misplaced = [name for name, node in PLACEMENT.items() if pods[name]["spec"].get("nodeName") != node]
    yield Item(not misplaced,
               ("client and web-1 share node-1, web-2 is on node-2" if not misplaced
                else f"pods on the wrong node: {', '.join(misplaced)}",
                "client y web-1 comparten node-1, web-2 está en node-2" if not misplaced
                else f"pods en el nodo equivocado: {', '.join(misplaced)}"),
               ("delete them and apply pods.yaml again", "bórralos y vuelve a aplicar pods.yaml"))
    verify = lab.overlaynet("verify")
    yield Item(verify.returncode == 0,
               ("verify passes: pod to pod, node to pod and a pod's own IP, all without NAT",
                "verify pasa: pod a pod, nodo a pod y la IP propia del pod, todo sin NAT")
               if verify.returncode == 0 else
               ("verify fails", "verify falla"),
               ("run overlaynet verify --name lab03 and read its failures",
                "ejecuta overlaynet verify --name lab03 y lee sus fallos"))
