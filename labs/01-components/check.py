"""Lab 01's check: the Deployment's controller made its pods, the scheduler placed them, node IPAM
and the CNI plugin addressed them from their node's pod CIDR, and the kubelet gave each a sandbox."""

import ipaddress

from overlaynet.tools.labs import Item, LabState

REPLICAS = 3


def check(lab: LabState):
    deployments = lab.get("deployments", "web")
    ready = deployments[0].get("status", {}).get("readyReplicas", 0) if deployments else 0
    yield Item(ready == REPLICAS,
               (f"Deployment web: {ready}/{REPLICAS} replicas ready" if deployments else "Deployment web does not exist",
                f"Deployment web: {ready}/{REPLICAS} réplicas listas" if deployments else "el Deployment web no existe"),
               ("apply it: overlaynet apply -f web.yaml --name lab01", "aplícalo: overlaynet apply -f web.yaml --name lab01"))
    if not deployments:
        return
    owned = [pod for pod in lab.pods().values()
             if any(ref.get("kind") == "Deployment" and ref.get("name") == "web"
                    for ref in pod["metadata"].get("ownerReferences", []))]
    placed = [pod for pod in owned if pod["spec"].get("nodeName")]
    yield Item(len(placed) == REPLICAS,
               (f"{len(placed)} pods of web placed on a node by the scheduler",
                f"{len(placed)} pods de web colocados en un nodo por el scheduler"),
               ("look for Pending pods: overlaynet get pods -o wide --name lab01",
                "busca pods en Pending: overlaynet get pods -o wide --name lab01"))
    cidrs = {node["metadata"]["name"]: ipaddress.ip_network(node["spec"]["podCIDR"]) for node in lab.get("nodes")}
    addressed = [pod for pod in placed if pod.get("status", {}).get("podIP")
                 and ipaddress.ip_address(pod["status"]["podIP"]) in cidrs.get(pod["spec"]["nodeName"], ())]
    yield Item(len(addressed) == len(placed) > 0,
               (f"{len(addressed)} pods have an IP from their node's podCIDR",
                f"{len(addressed)} pods tienen una IP del podCIDR de su nodo"),
               ("describe a pod without an IP: overlaynet describe pod NAME --name lab01",
                "describe un pod sin IP: overlaynet describe pod NOMBRE --name lab01"))
    sandboxed = [pod for pod in placed if pod["metadata"].get("annotations", {}).get("overlaynet.dev/container-id")]
    yield Item(len(sandboxed) == len(placed) > 0,
               (f"{len(sandboxed)} pods have a sandbox the kubelet wired with a CNI ADD",
                f"{len(sandboxed)} pods tienen un sandbox que el kubelet conectó con un CNI ADD"),
               ("read the CNI result: overlaynet describe pod NAME --name lab01",
                "lee el resultado CNI: overlaynet describe pod NOMBRE --name lab01"))
