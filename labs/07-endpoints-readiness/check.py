"""Lab 07's check: api-2's server is stopped, so its readiness probe fails; the EndpointSlice
keeps it as not ready while api-1 and api-3 stay ready, and node-1's kube-proxy rules send the
Service's traffic to api-1 and api-3 only."""

import re

from overlaynet.tools.labs import Item, LabState

STOPPED, SERVING = "api-2", ("api-1", "api-3")


def _ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def check(lab: LabState):
    pods = lab.pods()
    stopped = STOPPED in pods and not _ready(pods[STOPPED])
    yield Item(stopped,
               (f"{STOPPED} is not Ready: its readiness probe fails" if stopped else f"{STOPPED} is still Ready",
                f"{STOPPED} no está Ready: su readiness probe falla" if stopped else f"{STOPPED} sigue Ready"),
               (f"stop its server: overlaynet exec {STOPPED} --name lab07 -- overlaynet testserver stop",
                f"para su servidor: overlaynet exec {STOPPED} --name lab07 -- overlaynet testserver stop"))
    serving = [name for name in SERVING if name in pods and _ready(pods[name])]
    yield Item(len(serving) == len(SERVING),
               (f"Ready: {', '.join(serving) or 'none'} (of api-1, api-3)",
                f"Ready: {', '.join(serving) or 'ninguno'} (de api-1, api-3)"),
               ("start their servers again: overlaynet exec api-1 --name lab07 -- overlaynet testserver start",
                "vuelve a arrancar sus servidores: overlaynet exec api-1 --name lab07 -- overlaynet testserver start"))
    conditions = {endpoint["targetRef"]["name"]: endpoint["conditions"].get("ready")
                  for endpoint_slice in lab.get("endpointslices")
                  if endpoint_slice["metadata"]["labels"].get("kubernetes.io/service-name") == "api"
                  for endpoint in endpoint_slice["endpoints"]}
    follows = conditions == {"api-1": True, STOPPED: False, "api-3": True}
    listed_en = ", ".join(f"{name} {'ready' if ok else 'not ready'}" for name, ok in sorted(conditions.items()))
    listed_es = ", ".join(f"{name} {'listo' if ok else 'no listo'}" for name, ok in sorted(conditions.items()))
    yield Item(follows,
               ("the EndpointSlice of api: api-1 and api-3 ready, api-2 ready: false" if follows
                else f"the EndpointSlice of api: {listed_en or 'no endpoints'}",
                "el EndpointSlice de api: api-1 y api-3 listos, api-2 ready: false" if follows
                else f"el EndpointSlice de api: {listed_es or 'sin endpoints'}"),
               ("wait a second for the probe, then: overlaynet get endpointslices -o yaml --name lab07",
                "espera un segundo a la probe y luego: overlaynet get endpointslices -o yaml --name lab07"))
    targets = set(re.findall(r'--comment "default/api:http -> ([\d.]+):8080"', lab.rules("node-1")))
    wanted = {pods[name]["status"].get("podIP") for name in SERVING if name in pods}
    yield Item(targets == wanted,
               (f"node-1: KUBE-SVC of api:http jumps to {len(targets)} endpoints, api-1 and api-3" if targets == wanted
                else f"node-1: KUBE-SVC of api:http jumps to {', '.join(sorted(targets)) or 'nothing'}",
                f"node-1: el KUBE-SVC de api:http salta a {len(targets)} endpoints, api-1 y api-3" if targets == wanted
                else f"node-1: el KUBE-SVC de api:http salta a {', '.join(sorted(targets)) or 'nada'}"),
               ("read them: overlaynet rules node-1 --table nat --name lab07",
                "léelas: overlaynet rules node-1 --table nat --name lab07"))
