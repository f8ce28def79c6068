"""Lab 06's check: the Service web has its ClusterIP, its EndpointSlice lists the three pods,
node-1's kube-proxy rules lead 10.96.0.10:80 through KUBE-SVC to a DNAT per pod, and a real
request from the client to the ClusterIP is answered by one of them."""

import re

from overlaynet.tools.labs import Item, LabState

CLUSTER_IP, SERVERS = "10.96.0.10", ("web-1", "web-2", "web-3")


def check(lab: LabState):
    services = lab.get("svc", "web")
    has_ip = bool(services) and services[0]["spec"].get("clusterIP") == CLUSTER_IP
    yield Item(has_ip,
               (f"Service web has the ClusterIP {CLUSTER_IP}" if has_ip else "Service web does not exist",
                f"el Service web tiene la ClusterIP {CLUSTER_IP}" if has_ip else "el Service web no existe"),
               ("apply it: overlaynet apply -f service.yaml --name lab06",
                "aplícalo: overlaynet apply -f service.yaml --name lab06"))
    if not has_ip:
        return
    pods = lab.pods()
    addresses = {pods[name]["status"].get("podIP") for name in SERVERS if name in pods}
    ready = {address for endpoint_slice in lab.get("endpointslices")
             if endpoint_slice["metadata"]["labels"].get("kubernetes.io/service-name") == "web"
             for endpoint in endpoint_slice["endpoints"] if endpoint["conditions"].get("ready")
             for address in endpoint["addresses"]}
    yield Item(ready == addresses and len(ready) == len(SERVERS),
               (f"the EndpointSlice of web lists {len(ready)} ready endpoints (of web-1, web-2, web-3)",
                f"el EndpointSlice de web lista {len(ready)} endpoints listos (de web-1, web-2, web-3)"),
               ("are the pods Running? overlaynet get pods -o wide --name lab06",
                "¿están los pods en Running? overlaynet get pods -o wide --name lab06"))
    rules = lab.rules("node-1")
    chain = re.search(rf"-A KUBE-SERVICES -d {re.escape(CLUSTER_IP)}/32 -p tcp .*--dport 80 -j (KUBE-SVC-\w+)", rules)
    seps = re.findall(rf"-A {chain.group(1)} .*-j (KUBE-SEP-\w+)", rules) if chain else []
    dnats = {target for sep in seps
             for target in re.findall(rf"-A {sep} .*-j DNAT --to-destination ([\d.]+):8080", rules)}
    yield Item(bool(chain) and dnats == addresses,
               (f"node-1: KUBE-SERVICES -> {chain.group(1) if chain else 'KUBE-SVC-?'} -> {len(seps)} KUBE-SEP chains, "
                f"DNAT to {len(dnats)} pods",
                f"node-1: KUBE-SERVICES -> {chain.group(1) if chain else 'KUBE-SVC-?'} -> {len(seps)} cadenas KUBE-SEP, "
                f"DNAT a {len(dnats)} pods"),
               ("read the rules: overlaynet rules node-1 --table nat --name lab06",
                "lee las reglas: overlaynet rules node-1 --table nat --name lab06"))
    answer = lab.exec("client", "curl", "-s", "-m", "2", f"http://{CLUSTER_IP}/hostname")
    yield Item(answer.returncode == 0 and answer.stdout in SERVERS,
               (f"client -> {CLUSTER_IP}:80 answered by {answer.stdout or 'nobody'}",
                f"client -> {CLUSTER_IP}:80 contestado por {answer.stdout or 'nadie'}"),
               (f"try it: overlaynet exec client --name lab06 -- curl -s http://{CLUSTER_IP}/hostname",
                f"pruébalo: overlaynet exec client --name lab06 -- curl -s http://{CLUSTER_IP}/hostname"))
