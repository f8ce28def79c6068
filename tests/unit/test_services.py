"""overlaynet.api.services: Service and EndpointSlice parsing, validation messages, allocation."""

import ipaddress

import pytest
import yaml

from overlaynet.api.services import (
    DEFAULT_AFFINITY_TIMEOUT,
    HEADLESS,
    Service,
    ServicePort,
    allocate,
    carry_over,
    parse_endpointslice_document,
    parse_service_document,
    reserved_addresses,
)
from overlaynet.errors import CapacityError, InvalidInput

CIDR = ipaddress.IPv4Network("10.96.0.0/12")


def svc(text: str, namespace=None, source="web.yaml") -> Service:
    return parse_service_document(yaml.safe_load(text), source, namespace)


def fails(text: str, message: str, namespace=None) -> None:
    with pytest.raises(InvalidInput) as caught:
        svc(text, namespace)
    assert str(caught.value) == message


WEB = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: metrics, port: 9090, targetPort: 9090, protocol: UDP}
"""


def test_service_defaults_and_named_ports():
    service = svc(WEB)
    assert (service.namespace, service.name, service.type) == ("default", "web", "ClusterIP")
    assert service.cluster_ip is None and not service.headless
    assert service.selector == (("app", "web"),)
    assert service.ports == (ServicePort("http", 80, "http", "TCP"), ServicePort("metrics", 9090, 9090, "UDP"))
    assert service.session_affinity == "None" and service.affinity_timeout == DEFAULT_AFFINITY_TIMEOUT
    assert service.external_traffic_policy == "Cluster" and service.internal_traffic_policy == "Cluster"
    assert service.port_name_string(service.ports[0]) == "default/web:http"


def test_single_unnamed_port_defaults_target_port_and_name_string():
    service = svc("kind: Service\nmetadata: {name: db, namespace: shop}\nspec: {ports: [{port: 5432}]}")
    assert service.ports == (ServicePort("", 5432, 5432, "TCP"),)
    assert service.selector is None  # hand-written EndpointSlices
    assert service.port_name_string(service.ports[0]) == "shop/db"


def test_port_out_of_range_names_file_object_and_field():
    fails(WEB.replace("port: 9090, targetPort", "port: 70000, targetPort"),
          'web.yaml: Service "web": spec.ports[1].port 70000 is out of range 1-65535')


def test_port_errors():
    fails(WEB.replace("name: metrics, ", ""), 'web.yaml: Service "web": spec.ports[1].name is required when a service '
                                               "has more than one port")
    fails(WEB.replace("name: metrics", "name: http"),
          'web.yaml: Service "web": spec.ports[1].name "http" is a duplicate of spec.ports[0].name')
    fails(WEB.replace("targetPort: 9090", "targetPort: 0"),
          'web.yaml: Service "web": spec.ports[1].targetPort 0 is out of range 1-65535')
    fails(WEB.replace("targetPort: http", "targetPort: Http_Port"),
          'web.yaml: Service "web": spec.ports[0].targetPort "Http_Port" must be a port number or a container port '
          "name (an IANA service name: at most 15 lower case alphanumerics or '-', with a letter)")
    fails(WEB.replace("protocol: UDP", "protocol: SCTP"),
          'web.yaml: Service "web": spec.ports[1].protocol "SCTP" is not supported (supported: TCP, UDP)')
    fails(WEB.replace("port: 9090, targetPort: 9090, protocol: UDP", "port: 80"),
          'web.yaml: Service "web": spec.ports[1]: port 80/TCP is a duplicate of spec.ports[0]')
    fails("kind: Service\nmetadata: {name: web}\nspec: {ports: []}",
          'web.yaml: Service "web": spec.ports must list at least one port (only a headless service may have none)')
    fails("kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: '80'}]}",
          "web.yaml: Service \"web\": spec.ports[0].port '80' is not a number")


def test_same_port_number_over_tcp_and_udp_is_fine():
    service = svc("kind: Service\nmetadata: {name: dns}\nspec:\n  ports:\n  - {name: dns, port: 53, protocol: UDP}\n"
                  "  - {name: dns-tcp, port: 53}")
    assert [(p.port, p.protocol) for p in service.ports] == [(53, "UDP"), (53, "TCP")]


def test_types():
    assert svc(WEB.replace("spec:", "spec:\n  type: LoadBalancer")).type == "LoadBalancer"
    fails(WEB.replace("spec:", "spec:\n  type: Weird"),
          'web.yaml: Service "web": spec.type "Weird" is not supported (supported: ClusterIP, NodePort, LoadBalancer)')
    fails(WEB.replace("spec:", "spec:\n  externalIPs: [1.2.3]"),
          'web.yaml: Service "web": spec.externalIPs[0] "1.2.3" is not an IPv4 address')
    node_port = svc(WEB.replace("spec:", "spec:\n  type: NodePort\n  externalTrafficPolicy: Local")
                    .replace("targetPort: http}", "targetPort: http, nodePort: 30080}"))
    assert node_port.type == "NodePort" and node_port.ports[0].node_port == 30080
    assert node_port.external_traffic_policy == "Local"
    fails(WEB.replace("targetPort: http}", "targetPort: http, nodePort: 30080}"),
          'web.yaml: Service "web": spec.ports[0].nodePort may not be set when spec.type is ClusterIP')
    fails(WEB.replace("spec:", "spec:\n  externalTrafficPolicy: Local"),
          'web.yaml: Service "web": spec.externalTrafficPolicy may only be set when spec.type is NodePort '
          "or LoadBalancer, or with spec.externalIPs (a ClusterIP service has no external traffic)")


def test_headless():
    service = svc("kind: Service\nmetadata: {name: db}\nspec: {clusterIP: None, selector: {app: db}}")
    assert service.headless and service.cluster_ip == HEADLESS and service.ports == ()
    fails("kind: Service\nmetadata: {name: db}\nspec: {type: NodePort, clusterIP: None, ports: [{port: 1}]}",
          'web.yaml: Service "db": spec.clusterIP may not be "None" (headless) when spec.type is NodePort')


def test_cluster_ip_forms():
    assert svc(WEB.replace("spec:", "spec:\n  clusterIP: 10.96.0.20")).cluster_ip == "10.96.0.20"
    assert svc(WEB.replace("spec:", "spec:\n  clusterIP: ''")).cluster_ip is None
    assert svc(WEB.replace("spec:", "spec:\n  clusterIPs: [10.96.0.21]")).cluster_ip == "10.96.0.21"
    fails(WEB.replace("spec:", "spec:\n  clusterIP: ten"),
          'web.yaml: Service "web": spec.clusterIP "ten" is not an IP address (or "None" for a headless service)')
    fails(WEB.replace("spec:", "spec:\n  clusterIP: fd00::1"),
          'web.yaml: Service "web": spec.clusterIP fd00::1 is not supported: overlaynet is IPv4 only')
    fails(WEB.replace("spec:", "spec:\n  ipFamilyPolicy: PreferDualStack"),
          'web.yaml: Service "web": spec.ipFamilyPolicy "PreferDualStack" is not supported: overlaynet is IPv4 '
          "single-stack")


def test_session_affinity():
    service = svc(WEB.replace("spec:", "spec:\n  sessionAffinity: ClientIP"))
    assert service.session_affinity == "ClientIP" and service.affinity_timeout == 10800
    service = svc(WEB.replace("spec:", "spec:\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: "
                                       "{clientIP: {timeoutSeconds: 60}}"))
    assert service.affinity_timeout == 60
    fails(WEB.replace("spec:", "spec:\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: "
                               "{clientIP: {timeoutSeconds: 90000}}"),
          'web.yaml: Service "web": spec.sessionAffinityConfig.clientIP.timeoutSeconds 90000 must be a whole number '
          "of seconds in 1-86400")
    fails(WEB.replace("spec:", "spec:\n  sessionAffinity: Cookie"),
          'web.yaml: Service "web": spec.sessionAffinity "Cookie" is not supported (supported: None, ClientIP)')


def test_metadata_and_selector():
    fails(WEB.replace("name: web}", "name: Web}"),
          'web.yaml: Service "Web": metadata.name must be at most 63 lower case alphanumeric characters or \'-\', '
          "start with a letter and end with an alphanumeric character (DNS-1035 label)")
    fails(WEB.replace("name: web}", "name: web, namespace: a}"),
          'web.yaml: Service "web": metadata.namespace "a" does not match the namespace "b" given by -n', namespace="b")
    assert svc(WEB, namespace="shop").namespace == "shop"
    assert svc(WEB.replace("selector: {app: web}", "selector: {}")).selector is None
    fails(WEB.replace("ports:", "internalTrafficPolicy: Nearby\n  ports:"),
          'web.yaml: Service "web": spec.internalTrafficPolicy "Nearby" is not supported (supported: Cluster, Local)')


def test_document_round_trip():
    for text in (WEB, WEB.replace("spec:", "spec:\n  type: NodePort\n  sessionAffinity: ClientIP"),
                 "kind: Service\nmetadata: {name: db}\nspec: {clusterIP: None}"):
        service = allocate([svc(text)], CIDR)[0]
        again = parse_service_document(service.to_document(), "store")
        assert again == service


# --------------------------------------------------------------------------- allocation


def test_allocation_skips_network_and_kubernetes_default():
    assert sorted(reserved_addresses(CIDR)) == [ipaddress.IPv4Address("10.96.0.0"), ipaddress.IPv4Address("10.96.0.1"),
                                                ipaddress.IPv4Address("10.111.255.255")]
    first, second = allocate([svc(WEB), svc(WEB.replace("name: web}", "name: api}"))], CIDR)
    assert (first.cluster_ip, second.cluster_ip) == ("10.96.0.2", "10.96.0.3")
    (third,) = allocate([svc(WEB)], CIDR, used_ips={"10.96.0.2": "default/web", "10.96.0.3": "default/api"})
    assert third.cluster_ip == "10.96.0.4"


def test_requested_cluster_ip_is_checked():
    def alloc(ip, used=()):
        return allocate([svc(WEB.replace("spec:", f"spec:\n  clusterIP: {ip}"))], CIDR, used_ips=used)[0]

    assert alloc("10.100.0.7").cluster_ip == "10.100.0.7"
    with pytest.raises(InvalidInput, match=r'^web.yaml: Service "web": spec.clusterIP 10.0.0.5 is not in the service '
                                           r"CIDR 10.96.0.0/12$"):
        alloc("10.0.0.5")
    with pytest.raises(InvalidInput, match=r"spec.clusterIP 10.96.0.1 cannot be used: reserved for the "
                                           r"kubernetes.default service$"):
        alloc("10.96.0.1")
    with pytest.raises(InvalidInput, match=r'^web.yaml: Service "web": spec.clusterIP 10.96.0.9 is already allocated '
                                           r"\(by Service shop/db\)$"):
        alloc("10.96.0.9", {"10.96.0.9": "shop/db"})
    assert alloc("10.96.0.9", {"10.96.0.9": "default/web"}).cluster_ip == "10.96.0.9"  # its own address


def test_requested_addresses_win_over_dynamic_ones_in_one_batch():
    dynamic = svc(WEB)
    static = svc(WEB.replace("name: web}", "name: api}").replace("spec:", "spec:\n  clusterIP: 10.96.0.2"))
    first, second = allocate([dynamic, static], CIDR)
    assert (first.cluster_ip, second.cluster_ip) == ("10.96.0.3", "10.96.0.2")
    with pytest.raises(InvalidInput, match="already allocated"):
        allocate([static, static.__class__(**{**static.__dict__, "name": "other"})], CIDR)


def test_node_ports():
    text = WEB.replace("spec:", "spec:\n  type: NodePort")
    service = allocate([svc(text)], CIDR, used_node_ports={30000: "x/y"})[0]
    assert [p.node_port for p in service.ports] == [30001, 30002]
    requested = svc(text.replace("targetPort: 9090,", "targetPort: 9090, nodePort: 30000,"))
    with pytest.raises(InvalidInput, match=r"spec.ports\[1\].nodePort 30000 is already allocated \(by Service x/y\)$"):
        allocate([requested], CIDR, used_node_ports={30000: "x/y"})
    low = svc(text.replace("targetPort: 9090,", "targetPort: 9090, nodePort: 8080,"))
    with pytest.raises(InvalidInput, match=r'^web.yaml: Service "web": spec.ports\[1\].nodePort 8080 is out of range '
                                           r"30000-32767$"):
        allocate([low], CIDR)
    assert allocate([svc(WEB)], CIDR)[0].ports[0].node_port is None  # ClusterIP: no node port


def test_exhaustion_is_a_capacity_error():
    tiny = ipaddress.IPv4Network("10.96.0.0/30")  # .0 network, .1 kubernetes, .3 broadcast: one address
    allocate([svc(WEB)], tiny)
    with pytest.raises(CapacityError, match=r'Service "api": spec.clusterIP: the service CIDR 10.96.0.0/30 is full'):
        allocate([svc(WEB), svc(WEB.replace("name: web}", "name: api}"))], tiny)
    with pytest.raises(CapacityError, match="node port range 30000-30001 is full"):
        allocate([svc(WEB.replace("spec:", "spec:\n  type: NodePort"))], CIDR, node_port_range=(30000, 30001),
                 used_node_ports=[30000])


def test_update_keeps_allocations_and_cluster_ip_is_immutable():
    text = WEB.replace("spec:", "spec:\n  type: NodePort")
    old = allocate([svc(text)], CIDR)[0]
    new = carry_over(svc(text), old)
    assert new.cluster_ip == old.cluster_ip and [p.node_port for p in new.ports] == [30000, 30001]
    with pytest.raises(InvalidInput, match=r"spec.clusterIP 10.96.0.50 cannot change \(it is 10.96.0.2\)"):
        carry_over(svc(text.replace("spec:", "spec:\n  clusterIP: 10.96.0.50")), old)


# --------------------------------------------------------------------------- EndpointSlice

SLICE = """
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{name: '', port: 5432}]
endpoints:
- addresses: [192.168.0.10]
  conditions: {ready: true}
  nodeName: node-1
- addresses: [192.168.0.11]
"""


def test_endpointslice_parsing():
    parsed = parse_endpointslice_document(yaml.safe_load(SLICE), "db.yaml")
    assert parsed.service_key == "default/db" and parsed.ports[0].port == 5432 and parsed.ports[0].protocol == "TCP"
    first, second = parsed.endpoints
    assert first.node_name == "node-1" and first.conditions.is_ready
    assert second.conditions.ready is None and second.conditions.is_ready and second.conditions.is_serving
    assert not second.conditions.is_terminating
    assert parse_endpointslice_document(parsed.to_document(), "store") == parsed


def test_endpointslice_errors():
    def fails_slice(text, message):
        with pytest.raises(InvalidInput) as caught:
            parse_endpointslice_document(yaml.safe_load(text), "db.yaml")
        assert str(caught.value) == message

    fails_slice(SLICE.replace("addressType: IPv4", "addressType: IPv6"),
                'db.yaml: EndpointSlice "db-1": addressType "IPv6" is not supported (supported: IPv4)')
    fails_slice(SLICE.replace("192.168.0.11", "192.168.0.300"),
                'db.yaml: EndpointSlice "db-1": endpoints[1].addresses[0] "192.168.0.300" is not an IP address')
    fails_slice(SLICE.replace("{ready: true}", "{ready: yes-ish}"),
                "db.yaml: EndpointSlice \"db-1\": endpoints[0].conditions.ready 'yes-ish' must be true or false")
    fails_slice(SLICE.replace("port: 5432", "port: 0"), 'db.yaml: EndpointSlice "db-1": ports[0].port 0 is out of '
                                                        "range 1-65535")
    unlabelled = SLICE.replace("kubernetes.io/service-name: db", "a: b")
    without_label = parse_endpointslice_document(yaml.safe_load(unlabelled), "db.yaml")
    assert without_label.service_key is None
