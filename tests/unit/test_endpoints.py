"""overlaynet.control.endpoints: the EndpointSlice controller over plain Pod dicts."""

import yaml

from overlaynet.api.services import parse_endpointslice_document, parse_service_document
from overlaynet.control.endpoints import MAX_ENDPOINTS_PER_SLICE, build_endpoint_slices, resolve_target_port


def service(ports="[{name: http, port: 80, targetPort: http}]", extra="", selector="{app: web}"):
    text = f"kind: Service\nmetadata: {{name: web}}\nspec:\n  selector: {selector}\n  ports: {ports}\n{extra}"
    return parse_service_document(yaml.safe_load(text), "web.yaml")


def pod(name, ip="10.244.1.2", node="node-1", ready=True, labels=None, ports=None, phase="Running",
        terminating=False, namespace="default"):
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": "web"},
                     **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if terminating else {})},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports if ports is not None else
                                                   [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": phase, **({"podIP": ip} if ip else {}),
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def conditions(result):
    return {e.target_ref.name: (e.conditions.ready, e.conditions.serving, e.conditions.terminating)
            for s in result.slices for e in s.endpoints}


def test_conditions_follow_readiness_and_termination():
    result = build_endpoint_slices(service(), [
        pod("a", "10.244.1.2"), pod("b", "10.244.2.2", ready=False),
        pod("c", "10.244.3.2", terminating=True), pod("d", "10.244.3.3", terminating=True, ready=False)])
    assert conditions(result) == {"a": (True, True, False), "b": (False, False, False),
                                  "c": (False, True, True), "d": (False, False, True)}
    (only,) = result.slices
    assert only.service_name == "web" and only.managed_by == "endpointslice-controller.k8s.io"
    assert [(p.name, p.port, p.protocol) for p in only.ports] == [("http", 8080, "TCP")]
    first = only.endpoints[0]
    assert first.addresses == ("10.244.1.2",) and first.node_name == "node-1"
    assert (first.target_ref.kind, first.target_ref.namespace, first.target_ref.name) == ("Pod", "default", "a")


def test_publish_not_ready_addresses_makes_every_endpoint_ready():
    result = build_endpoint_slices(service(extra="  publishNotReadyAddresses: true"),
                                   [pod("b", ready=False), pod("c", "10.244.1.3", terminating=True)])
    assert conditions(result) == {"b": (True, True, False), "c": (True, True, True)}


def test_which_pods_appear():
    result = build_endpoint_slices(service(), [
        pod("a"), pod("pending", ip=None, phase="Pending"), pod("done", "10.244.1.9", phase="Succeeded"),
        pod("other-label", "10.244.1.4", labels={"app": "db"}), pod("other-ns", "10.244.1.5", namespace="shop")])
    assert set(conditions(result)) == {"a"}
    assert result.matched == 3
    assert result.describe() == ['pod "done": the pod has finished (phase Succeeded)',
                                 'pod "pending": the pod has no IP yet (phase Pending)']


def test_named_target_port_resolves_per_pod_and_omits_pods_without_it():
    pods = [pod("a", "10.244.1.2"),
            pod("b", "10.244.1.3", ports=[{"name": "http", "containerPort": 9000}]),
            pod("c", "10.244.1.4", ports=[{"name": "metrics", "containerPort": 9100}]),
            pod("d", "10.244.1.5", ports=[{"name": "http", "containerPort": 8080, "protocol": "UDP"}])]
    result = build_endpoint_slices(service(), pods)
    by_port = {tuple((p.name, p.port) for p in s.ports): sorted(e.target_ref.name for e in s.endpoints)
               for s in result.slices}
    assert by_port == {(("http", 8080),): ["a"], (("http", 9000),): ["b"], (): ["c", "d"]}
    assert [(o.pod, o.port) for o in result.omitted] == [("c", "http"), ("d", "http")]
    assert result.omitted[0].reason == ('no container port named "http" with protocol TCP (declared: metrics/TCP); '
                                        "the pod is not an endpoint of this port")
    assert result.describe()[1].startswith('pod "d" port http: no container port named "http" with protocol TCP '
                                           "(declared: http/UDP)")


def test_numeric_target_port_needs_no_declaration():
    svc = service(ports="[{port: 80, targetPort: 8080}]")
    assert resolve_target_port(svc.ports[0], pod("a", ports=[])) == 8080
    (only,) = build_endpoint_slices(svc, [pod("a", ports=[])]).slices
    assert [(p.name, p.port) for p in only.ports] == [("", 8080)]


def test_no_selector_and_no_match_are_explained():
    text = "kind: Service\nmetadata: {name: ext}\nspec: {ports: [{port: 1}]}"
    hand_written = parse_service_document(yaml.safe_load(text), "x.yaml")
    assert build_endpoint_slices(hand_written, [pod("a")]).slices == ()
    assert "no selector" in build_endpoint_slices(hand_written, []).describe()[0]
    nothing = build_endpoint_slices(service(selector="{app: nothing}"), [pod("a")])
    assert nothing.slices == () and nothing.describe() == [
        "selector app=nothing matches no pods in namespace default: no endpoints (connections are refused)"]


def test_slices_hold_at_most_100_endpoints_and_names_are_stable():
    pods = [pod(f"p{i:03d}", f"10.244.{i // 200}.{i % 200 + 2}") for i in range(MAX_ENDPOINTS_PER_SLICE + 5)]
    result = build_endpoint_slices(service(), pods)
    assert [len(s.endpoints) for s in result.slices] == [100, 5]
    assert len({s.name for s in result.slices}) == 2 and all(s.name.startswith("web-") for s in result.slices)
    again = build_endpoint_slices(service(), pods[:50])
    assert again.slices[0].name == result.slices[0].name  # same port set, same first chunk: same name


def test_slices_round_trip_through_documents():
    for endpoint_slice in build_endpoint_slices(service(), [pod("a"), pod("b", "10.244.1.3", terminating=True)]).slices:
        assert parse_endpointslice_document(endpoint_slice.to_document(), "store") == endpoint_slice


def test_headless_service_gets_slices_without_ports():
    headless = parse_service_document(yaml.safe_load("kind: Service\nmetadata: {name: db}\nspec: {clusterIP: None, "
                                                     "selector: {app: web}}"), "db.yaml")
    (only,) = build_endpoint_slices(headless, [pod("a")]).slices
    assert only.ports == () and only.endpoints[0].addresses == ("10.244.1.2",)
