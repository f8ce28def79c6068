"""Golden files for kube-proxy's rendered rule sets, plus traces that prove each one behaves.

One scenario per file (``tests/golden/kube-proxy-<scenario>.txt``), each the exact
``iptables-restore`` payload for one node of a three-node lab. A change to what kube-proxy
renders shows as a diff; regenerate after an intended change with
``OVERLAYNET_UPDATE_GOLDEN=1 pytest tests/golden``.

The scenarios are also what tests/netns/test_iptables_load.py loads into real namespaces.
"""

from __future__ import annotations

import difflib
import os
import pathlib

import pytest
import yaml

from overlaynet.api.services import parse_service_document
from overlaynet.control.endpoints import build_endpoint_slices
from overlaynet.proxy.render import NodeConfig, Ruleset, render, sep_chain, svc_chain
from overlaynet.proxy.rules import parse_tables
from overlaynet.proxy.trace import Packet, Tracer, missing_targets

HERE = pathlib.Path(__file__).parent
NODE_IPS = {"node-1": "172.20.0.11", "node-2": "172.20.0.12", "node-3": "172.20.0.13"}
CLUSTER_CIDR = "10.244.0.0/16"
OUTSIDE = "172.20.0.100"  # a client on the node network that is not a node


def node_config(name: str = "node-1") -> NodeConfig:
    return NodeConfig(name, (NODE_IPS[name],), CLUSTER_CIDR)


def pod(name, ip, node, labels, ports=(("http", 8080, "TCP"),), namespace="default"):
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                {"name": n, "containerPort": p, "protocol": proto} for n, p, proto in ports]}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}


SERVICES = {
    "clusterip": """
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
""",
    "nodeport": """
kind: Service
metadata: {name: web-np}
spec:
  type: NodePort
  clusterIP: 10.96.0.11
  selector: {app: np}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
""",
    "nodeport-local": """
kind: Service
metadata: {name: web-local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  clusterIP: 10.96.0.12
  selector: {app: local}
  ports: [{port: 80, targetPort: 8080, nodePort: 30081}]
""",
    "affinity": """
kind: Service
metadata: {name: sticky}
spec:
  clusterIP: 10.96.0.13
  selector: {app: sticky}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports: [{name: http, port: 80, targetPort: 8080}]
""",
    "no-endpoints": """
kind: Service
metadata: {name: empty}
spec:
  type: NodePort
  clusterIP: 10.96.0.14
  selector: {app: nothing}
  ports: [{port: 80, targetPort: 8080, nodePort: 30082}]
""",
    "headless": """
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 5432}]
""",
    "multiport": """
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.53
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: dns-tcp}
""",
}

DNS_PORTS = (("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"))
PODS = [
    pod("web-1", "10.244.0.5", "node-1", {"app": "web"}),
    pod("web-2", "10.244.1.7", "node-2", {"app": "web"}),
    pod("web-3", "10.244.2.9", "node-3", {"app": "web"}),
    pod("np-1", "10.244.0.6", "node-1", {"app": "np"}),
    pod("np-2", "10.244.1.8", "node-2", {"app": "np"}),
    pod("local-1", "10.244.0.7", "node-1", {"app": "local"}),
    pod("local-2", "10.244.1.9", "node-2", {"app": "local"}),
    pod("sticky-1", "10.244.0.8", "node-1", {"app": "sticky"}),
    pod("sticky-2", "10.244.2.10", "node-3", {"app": "sticky"}),
    pod("db-1", "10.244.1.20", "node-2", {"app": "db"}),
    pod("coredns-1", "10.244.0.3", "node-1", {"k8s-app": "kube-dns"}, DNS_PORTS, "kube-system"),
    pod("coredns-2", "10.244.1.3", "node-2", {"k8s-app": "kube-dns"}, DNS_PORTS, "kube-system"),
]

# scenario -> (services, node it is rendered for)
SCENARIOS = {
    "clusterip": (["clusterip"], "node-1"),
    "nodeport": (["nodeport"], "node-1"),
    "nodeport-local": (["nodeport-local"], "node-1"),
    "nodeport-local-remote": (["nodeport-local"], "node-3"),
    "affinity": (["affinity"], "node-1"),
    "no-endpoints": (["no-endpoints"], "node-1"),
    "headless": (["headless"], "node-1"),
    "multiport": (["multiport"], "node-1"),
}


def services(names=None):
    return [parse_service_document(yaml.safe_load(SERVICES[n]), f"{n}.yaml") for n in (names or SERVICES)]


def slices_for(service_list, pods=PODS):
    return [s for svc in service_list for s in build_endpoint_slices(svc, pods).slices]


def render_scenario(name: str) -> Ruleset:
    names, node = SCENARIOS[name]
    service_list = services(names)
    return render(node_config(node), service_list, slices_for(service_list))


def render_all(node: str = "node-1", pods=PODS, previous=None, **kwargs) -> Ruleset:
    service_list = services()
    return render(node_config(node), service_list, slices_for(service_list, pods), previous, **kwargs)


def tracer(ruleset: Ruleset) -> Tracer:
    return Tracer(ruleset.payload, ruleset.jumps, ruleset.node.ips)


def compare(name: str, actual: str) -> None:
    path = HERE / name
    if os.environ.get("OVERLAYNET_UPDATE_GOLDEN"):
        path.write_text(actual)
    expected = path.read_text() if path.exists() else ""
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            f"{name} (golden)", f"{name} (rendered)"))
        pytest.fail(f"rendered rules differ from {name}:\n{diff}")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_golden(scenario):
    ruleset = render_scenario(scenario)
    compare(f"kube-proxy-{scenario}.txt", ruleset.payload)
    assert missing_targets(ruleset.payload, ruleset.jumps) == []
    parse_tables(ruleset.payload)  # every line readable


def test_golden_jumps():
    ruleset = render_scenario("clusterip")
    compare("kube-proxy-jumps.txt", "".join(f"{j.table} {j.rule}\n" for j in ruleset.jumps))


# --------------------------------------------------------------------------- behaviour


def approx(distribution):
    return {k: pytest.approx(v, abs=1e-9) for k, v in distribution.items()}


def test_clusterip_balances_evenly_without_snat_for_pods():
    result = tracer(render_scenario("clusterip")).trace(Packet("10.244.0.20", "10.96.0.10", 80))
    assert result.destinations == approx({"10.244.0.5:8080": 1 / 3, "10.244.1.7:8080": 1 / 3, "10.244.2.9:8080": 1 / 3})
    assert result.masqueraded is False
    svc = svc_chain("default/web:http", "tcp")
    assert {o.service_chains for o in result.outcomes} == {
        ("KUBE-SERVICES", svc, sep_chain("default/web:http", "tcp", endpoint)) for endpoint in result.destinations}


def test_clusterip_from_outside_the_pod_network_is_masqueraded():
    ruleset = render_scenario("clusterip")
    assert tracer(ruleset).trace(Packet(OUTSIDE, "10.96.0.10", 80, origin="external")).masqueraded is True
    assert tracer(ruleset).trace(Packet("172.20.0.11", "10.96.0.10", 80, origin="node")).masqueraded is True


def test_hairpin_is_masqueraded_only_when_the_endpoint_is_the_client():
    result = tracer(render_scenario("clusterip")).trace(Packet("10.244.0.5", "10.96.0.10", 80))
    masq = {o.destination: o.masquerade for o in result.outcomes}
    assert masq == {"10.244.0.5:8080": True, "10.244.1.7:8080": False, "10.244.2.9:8080": False}


def test_wrong_port_or_protocol_is_not_a_service():
    ruleset = render_scenario("clusterip")
    assert tracer(ruleset).trace(Packet("10.244.0.20", "10.96.0.10", 81)).only().verdict == "ACCEPT"
    assert tracer(ruleset).trace(Packet("10.244.0.20", "10.96.0.10", 80, proto="udp")).only().destination is None


def test_nodeport_reaches_every_endpoint_and_masquerades():
    result = tracer(render_scenario("nodeport")).trace(Packet(OUTSIDE, "172.20.0.11", 30080, origin="external"))
    assert result.destinations == approx({"10.244.0.6:8080": 0.5, "10.244.1.8:8080": 0.5})
    assert result.masqueraded is True
    assert all(o.service_chains[:3] == ("KUBE-SERVICES", "KUBE-NODEPORTS", o.service_chains[2])
               and o.service_chains[2].startswith("KUBE-EXT-") for o in result.outcomes)
    # a NodePort answers on the node's own addresses only
    assert tracer(render_scenario("nodeport")).trace(
        Packet(OUTSIDE, "172.20.0.12", 30080, origin="external")).only().verdict == "ACCEPT"


def test_local_policy_keeps_client_ip_and_uses_local_endpoints():
    t = tracer(render_scenario("nodeport-local"))
    external = t.trace(Packet(OUTSIDE, "172.20.0.11", 30081, origin="external"))
    assert external.destinations == approx({"10.244.0.7:8080": 1.0}) and external.masqueraded is False
    from_pod = t.trace(Packet("10.244.0.30", "172.20.0.11", 30081))  # short-circuited to all endpoints
    assert from_pod.destinations == approx({"10.244.0.7:8080": 0.5, "10.244.1.9:8080": 0.5})
    from_node = t.trace(Packet("172.20.0.11", "172.20.0.11", 30081, origin="node"))
    assert from_node.masqueraded is True and len(from_node.destinations) == 2


def test_local_policy_on_a_node_without_local_endpoints_drops_external_traffic():
    t = tracer(render_scenario("nodeport-local-remote"))
    assert t.trace(Packet(OUTSIDE, "172.20.0.13", 30081, origin="external")).only().verdict == "DROP"
    from_pod = t.trace(Packet("10.244.2.30", "172.20.0.13", 30081))
    assert set(from_pod.destinations) == {"10.244.0.7:8080", "10.244.1.9:8080"}
    assert t.trace(Packet("10.244.2.30", "10.96.0.12", 80)).verdicts == approx({"DNAT": 1.0})  # ClusterIP: Cluster


def test_client_ip_affinity_records_and_then_sticks():
    ruleset = render_scenario("affinity")
    first = tracer(ruleset).trace(Packet("10.244.0.40", "10.96.0.13", 80))
    assert first.destinations == approx({"10.244.0.8:8080": 0.5, "10.244.2.10:8080": 0.5})
    chosen = {o.destination: o.recent_set for o in first.outcomes}
    assert all(len(lists) == 1 and lists[0].startswith("KUBE-SEP-") for lists in chosen.values())
    recent = {chosen["10.244.2.10:8080"][0]: {"10.244.0.40"}}
    again = tracer(ruleset).trace(Packet("10.244.0.40", "10.96.0.13", 80), recent=recent)
    assert again.destinations == approx({"10.244.2.10:8080": 1.0})
    other_client = tracer(ruleset).trace(Packet("10.244.0.41", "10.96.0.13", 80), recent=recent)
    assert len(other_client.destinations) == 2


def test_service_without_endpoints_rejects_at_once():
    t = tracer(render_scenario("no-endpoints"))
    assert t.trace(Packet("10.244.0.20", "10.96.0.14", 80)).only().verdict == "REJECT"
    assert t.trace(Packet("172.20.0.11", "10.96.0.14", 80, origin="node")).only().verdict == "REJECT"
    assert t.trace(Packet(OUTSIDE, "172.20.0.11", 30082, origin="external")).only().verdict == "REJECT"


def test_headless_service_has_no_rules():
    ruleset = render_scenario("headless")
    assert "default/db" not in ruleset.payload and not ruleset.chain_owners()


def test_multiport_udp_and_tcp():
    ruleset = render_scenario("multiport")
    assert "KUBE-SVC-TCOU7JCQXEZGVUNU" in ruleset.chain_owners()  # kube-system/kube-dns:dns + udp, as in real dumps
    t = tracer(ruleset)
    udp = t.trace(Packet("10.244.0.20", "10.96.0.53", 53, proto="udp"))
    tcp = t.trace(Packet("10.244.0.20", "10.96.0.53", 53, proto="tcp"))
    assert udp.destinations == approx({"10.244.0.3:53": 0.5, "10.244.1.3:53": 0.5})
    assert tcp.destinations == approx({"10.244.0.3:53": 0.5, "10.244.1.3:53": 0.5})
    assert {o.service_chains[1] for o in udp.outcomes} != {o.service_chains[1] for o in tcp.outcomes}
