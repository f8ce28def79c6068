"""Lab 13's check: CoreDNS runs in kube-system behind the kube-dns Service at 10.96.0.10 with
ready endpoints, and from the client the Service web resolves to its ClusterIP, the headless
Service db to the addresses of both db pods, and a name that does not exist to NXDOMAIN."""

import json
import re

from overlaynet.tools.labs import Item, LabState

DNS_IP = "10.96.0.10"
REPAIR = ("repair it: overlaynet apply -f coredns.yaml --name lab13",
          "repáralo: overlaynet apply -f coredns.yaml --name lab13")


def _kube_system(lab: LabState, resource: str) -> list[dict]:
    result = lab.overlaynet("get", resource, "-n", "kube-system", "-o", "json")
    return json.loads(result.stdout)["items"] if result.returncode == 0 else []


def check(lab: LabState):
    coredns = [p for p in _kube_system(lab, "pods") if p["metadata"]["name"].startswith("coredns-")
               and p["status"].get("phase") == "Running"]
    yield Item(len(coredns) == 2,
               (f"{len(coredns)} of 2 CoreDNS pods Running in kube-system",
                f"{len(coredns)} de 2 pods de CoreDNS en Running en kube-system"),
               REPAIR)
    ready = sorted(address for endpoint_slice in _kube_system(lab, "endpointslices")
                   if endpoint_slice["metadata"]["labels"].get("kubernetes.io/service-name") == "kube-dns"
                   and any(port.get("protocol") == "UDP" for port in endpoint_slice.get("ports") or [])
                   for endpoint in endpoint_slice["endpoints"] if endpoint["conditions"].get("ready")
                   for address in endpoint["addresses"])
    yield Item(bool(ready),
               (f"kube-dns ({DNS_IP}) has {len(ready)} ready endpoints: {', '.join(ready) or 'none'}",
                f"kube-dns ({DNS_IP}) tiene {len(ready)} endpoints listos: {', '.join(ready) or 'ninguno'}"),
               REPAIR)
    services = lab.get("svc", "web")
    web_ip = services[0]["spec"].get("clusterIP") if services else None
    hosts = lab.exec("client", "getent", "hosts", "web").stdout.split()
    yield Item(bool(web_ip) and hosts[:1] == [web_ip],
               (f"client: getent hosts web -> {hosts[0] if hosts else 'not found'} (web's ClusterIP is {web_ip})",
                f"client: getent hosts web -> {hosts[0] if hosts else 'no encontrado'} (la ClusterIP de web es {web_ip})"),
               ("try it: overlaynet exec client --name lab13 -- getent hosts web",
                "pruébalo: overlaynet exec client --name lab13 -- getent hosts web"))
    pods = lab.pods()
    db = sorted(pods[name]["status"].get("podIP") or "" for name in ("db-0", "db-1") if name in pods)
    answer = sorted(re.findall(r"^\d+\.\d+\.\d+\.\d+$", lab.exec(
        "client", "dig", "+short", "+time=2", "+tries=1", "db.default.svc.cluster.local").stdout, re.MULTILINE))
    yield Item(len(db) == 2 and answer == db,
               (f"client: db.default.svc.cluster.local -> {', '.join(answer) or 'nothing'} (the db pods)",
                f"client: db.default.svc.cluster.local -> {', '.join(answer) or 'nada'} (los pods db)"),
               ("try it: overlaynet exec client --name lab13 -- dig +short db.default.svc.cluster.local",
                "pruébalo: overlaynet exec client --name lab13 -- dig +short db.default.svc.cluster.local"))
    missing = lab.exec("client", "dig", "+time=2", "+tries=1", "nothere.default.svc.cluster.local").stdout
    status = re.search(r"status: (\w+)", missing)
    found = status.group(1) if status else None
    yield Item(found == "NXDOMAIN",
               (f"client: nothere.default.svc.cluster.local -> {found or 'no answer'} (NXDOMAIN expected)",
                f"client: nothere.default.svc.cluster.local -> {found or 'sin respuesta'} (se espera NXDOMAIN)"),
               ("try it: overlaynet exec client --name lab13 -- dig nothere.default.svc.cluster.local",
                "pruébalo: overlaynet exec client --name lab13 -- dig nothere.default.svc.cluster.local"))
