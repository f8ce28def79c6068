"""LoadBalancer Services without root: the pool field, the service controller's allocation,
MetalLB's L2 election, the speaker's plan, the Service API fields and their round trip."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest
import yaml

from overlaynet.api.loadbalancer import AddressPool, allocate_load_balancers, default_pool, elect_speaker
from overlaynet.api.model import address_pool, build_spec, spec_from_document
from overlaynet.api.services import (
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    SliceEndpoint,
    allocate,
    carry_over,
    parse_service_document,
)
from overlaynet.datapath.plan import ProxyNeighbour, Route, Sysctl, words
from overlaynet.errors import InvalidInput
from overlaynet.kernel.arp import announcement_frame
from overlaynet.node.speaker import LAYER2, ROUTE, Announcement, plan_announcements, plan_steps

POOL = AddressPool(ipaddress.IPv4Address("172.20.0.200"), ipaddress.IPv4Address("172.20.0.202"))


def lb(name: str, extra: str = "", status_ip: str | None = None):
    text = f"kind: Service\nmetadata: {{name: {name}}}\nspec:\n  type: LoadBalancer\n  selector: {{app: web}}\n" \
           f"  ports: [{{port: 80}}]\n{extra}"
    if status_ip:
        text += f"status: {{loadBalancer: {{ingress: [{{ip: {status_ip}}}]}}}}\n"
    return parse_service_document(yaml.safe_load(text), f"{name}.yaml")


def endpoint_slice(service: str, nodes: list[str], ready: bool = True) -> EndpointSlice:
    return EndpointSlice("default", f"{service}-abc", service, (EndpointPort("", 80, "TCP"),),
                         tuple(SliceEndpoint((f"10.244.{i}.2",), EndpointConditions(ready=ready), node)
                               for i, node in enumerate(nodes)))


# --------------------------------------------------------------------------- the pool field


def test_default_pool_is_on_the_node_network():
    assert default_pool(ipaddress.IPv4Network("172.20.0.0/24")) == "172.20.0.200-172.20.0.250"
    assert str(address_pool(build_spec("lb-a"))) == "172.20.0.200-172.20.0.250"
    spec = build_spec("lb-a", load_balancer_pool="172.20.0.192/27")
    assert str(address_pool(spec)) == "172.20.0.192-172.20.0.223"
    assert spec_from_document(spec.to_document()) == spec


@pytest.mark.parametrize(("value", "message"), [
    ("10.0.0.1-10.0.0.5", ('cluster "lb-a": loadBalancerPool 10.0.0.1-10.0.0.5 is not inside nodeNetwork '
                          "172.20.0.0/24 (layer-2 announcements reach only the node network)")),
    ("172.20.0.10-172.20.0.20", ('cluster "lb-a": loadBalancerPool 172.20.0.10-172.20.0.20 overlaps node "node-1" '
                                "172.20.0.11")),
    ("172.20.0.2-172.20.0.3", ('cluster "lb-a": loadBalancerPool 172.20.0.2-172.20.0.3 overlaps the external '
                              "client 172.20.0.2")),
    ("172.20.0.240/28", ('cluster "lb-a": loadBalancerPool 172.20.0.240/28 holds 172.20.0.255, an address of '
                        "nodeNetwork 172.20.0.0/24 no host may have")),
    ("172.20.0.9-172.20.0.5", ('cluster "lb-a": loadBalancerPool 172.20.0.9-172.20.0.5: 172.20.0.9 comes after '
                              "172.20.0.5")),
    ("big", ("cluster \"lb-a\": loadBalancerPool 'big' is not a range or a CIDR (e.g. 172.20.0.200-172.20.0.250 "
            "or 172.20.0.192/27)")),
])
def test_bad_pools_are_one_clear_error(value, message):
    with pytest.raises(InvalidInput) as caught:
        build_spec("lb-a", load_balancer_pool=value)
    assert str(caught.value) == message


# --------------------------------------------------------------------------- the service controller


def test_lowest_free_address_then_pending_with_metallb_reason():
    result = allocate_load_balancers([lb("a"), lb("b"), lb("c"), lb("d")], POOL)
    assert [s.ingress_ip for s in result.services] == ["172.20.0.200", "172.20.0.201", "172.20.0.202", None]
    assert result.pending == {"default/d": 'Failed to allocate IP for "default/d": no available IPs '
                                           "(the pool 172.20.0.200-172.20.0.202 holds 3)"}


def test_held_addresses_stay_and_requests_are_placed_before_dynamic_picks():
    services = [lb("dyn"), lb("held", status_ip="172.20.0.202"), lb("asks", "  loadBalancerIP: 172.20.0.200\n")]
    result = allocate_load_balancers(services, POOL)
    assert {s.name: s.ingress_ip for s in result.services} == {
        "dyn": "172.20.0.201", "held": "172.20.0.202", "asks": "172.20.0.200"}
    assert result.pending == {}


def test_requests_outside_the_pool_or_taken_stay_pending():
    services = [lb("a", "  loadBalancerIP: 172.20.0.9\n"), lb("b", status_ip="172.20.0.200"),
                lb("c", "  loadBalancerIP: 172.20.0.200\n")]
    result = allocate_load_balancers(services, POOL)
    assert [s.ingress_ip for s in result.services] == [None, "172.20.0.200", None]
    assert result.pending == {
        "default/a": 'Failed to allocate IP for "default/a": "172.20.0.9" is not allowed in config '
                     "(the pool is 172.20.0.200-172.20.0.202)",
        "default/c": 'Failed to allocate IP for "default/c": "172.20.0.200" is already allocated to default/b'}


def test_a_released_address_goes_to_the_pending_service():
    first = allocate_load_balancers([lb("a"), lb("b"), lb("c"), lb("d")], POOL)
    remaining = [s for s in first.services if s.name != "b"]
    again = allocate_load_balancers(remaining, POOL)
    assert {s.name: s.ingress_ip for s in again.services} == {
        "a": "172.20.0.200", "c": "172.20.0.202", "d": "172.20.0.201"}
    assert again.pending == {}


def test_a_service_that_stops_being_a_load_balancer_gives_its_address_back():
    held = lb("a", status_ip="172.20.0.200")
    cluster_ip = parse_service_document({**held.to_document(), "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80}]}}, "a.yaml")
    assert allocate_load_balancers([cluster_ip], POOL).services[0].ingress_ip is None


# --------------------------------------------------------------------------- the API fields


def test_load_balancer_fields_round_trip_and_allocate_node_ports():
    service = lb("a", "  externalTrafficPolicy: Local\n  loadBalancerSourceRanges: [192.0.2.7/24]\n"
                      "  externalIPs: [203.0.113.10]\n", status_ip="172.20.0.200")
    assert service.load_balancer_source_ranges == ("192.0.2.0/24",)  # normalised as kube-proxy does
    allocated = allocate([service], ipaddress.IPv4Network("10.96.0.0/12"))[0]
    assert allocated.ports[0].node_port == 30000 and allocated.health_check_node_port == 30001
    assert parse_service_document(allocated.to_document(), "store") == allocated
    assert allocated.to_document()["status"] == {"loadBalancer": {"ingress": [{"ip": "172.20.0.200", "ipMode": "VIP"}]}}
    no_ports = allocate([lb("b", "  allocateLoadBalancerNodePorts: false\n")], ipaddress.IPv4Network("10.96.0.0/12"))
    assert no_ports[0].ports[0].node_port is None


def test_an_update_keeps_the_address_unless_another_is_asked_for():
    old = lb("a", status_ip="172.20.0.201")
    assert carry_over(lb("a"), old).ingress_ip == "172.20.0.201"
    assert carry_over(lb("a", "  loadBalancerIP: 172.20.0.202\n"), old).ingress_ip is None


@pytest.mark.parametrize(("extra", "message"), [
    ("  loadBalancerIP: 1.2.3\n", 'spec.loadBalancerIP "1.2.3" is not an IPv4 address'),
    ("  loadBalancerSourceRanges: [nope]\n", ('spec.loadBalancerSourceRanges[0] "nope" is not an IPv4 CIDR '
                                             "(e.g. 172.20.0.0/24)")),
    ("  allocateLoadBalancerNodePorts: yes-please\n", ("spec.allocateLoadBalancerNodePorts 'yes-please' must be "
                                                      "true or false")),
    ("  healthCheckNodePort: 30100\n", ('spec.healthCheckNodePort may only be set when spec.externalTrafficPolicy '
                                       'is "Local"')),
    ("  externalIPs: [127.0.0.1]\n", ("spec.externalIPs[0] 127.0.0.1 may not be unspecified, loopback, multicast "
                                     "or link-local")),
])
def test_bad_load_balancer_fields(extra, message):
    with pytest.raises(InvalidInput) as caught:
        lb("a", extra)
    assert str(caught.value) == f'a.yaml: Service "a": {message}'


def test_load_balancer_fields_on_another_type_are_refused():
    with pytest.raises(InvalidInput) as caught:
        parse_service_document(yaml.safe_load("kind: Service\nmetadata: {name: a}\nspec:\n  loadBalancerIP: 1.2.3.4\n"
                                              "  ports: [{port: 80}]\n"), "a.yaml")
    assert str(caught.value) == 'a.yaml: Service "a": spec.loadBalancerIP may only be set when spec.type is ' \
                                "LoadBalancer"


# --------------------------------------------------------------------------- the speaker


def test_election_is_metallbs_hash_of_node_and_address():
    nodes = ["node-1", "node-2", "node-3"]
    expected = min(nodes, key=lambda n: hashlib.sha256(f"{n}#172.20.0.200".encode()).digest())
    assert elect_speaker(lb("a"), "172.20.0.200", nodes, [endpoint_slice("a", ["node-1"])]) == expected
    winners = {elect_speaker(lb("a"), f"172.20.0.{i}", nodes, [endpoint_slice("a", ["node-1"])])
               for i in range(200, 230)}
    assert winners == set(nodes)  # addresses spread over the nodes


def test_local_policy_elects_a_node_with_a_ready_endpoint_and_none_without():
    local = lb("a", "  externalTrafficPolicy: Local\n")
    for i in range(200, 230):
        assert elect_speaker(local, f"172.20.0.{i}", ["node-1", "node-2", "node-3"],
                             [endpoint_slice("a", ["node-3"])]) == "node-3"
    assert elect_speaker(local, "172.20.0.200", ["node-1"], [endpoint_slice("a", ["node-3"])]) is None
    assert elect_speaker(lb("a"), "172.20.0.200", ["node-1"], [endpoint_slice("a", ["node-1"], ready=False)]) is None


def node(name: str, ip: str, ready: bool = True) -> dict:
    return {"metadata": {"name": name}, "status": {
        "addresses": [{"type": "InternalIP", "address": ip}],
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_announcements_and_their_steps():
    service = lb("a", "  externalIPs: [203.0.113.10]\n", status_ip="172.20.0.200")
    nodes = [node("node-1", "172.20.0.11"), node("node-2", "172.20.0.12", ready=False)]
    announcements = plan_announcements(nodes, [service], [endpoint_slice("a", ["node-2"])])
    assert announcements == [Announcement("default/a", "172.20.0.200", "node-1", "172.20.0.11", LAYER2),
                             Announcement("default/a", "203.0.113.10", "node-1", "172.20.0.11", ROUTE)]
    spec = build_spec("lb-a")
    assert [words(s) for s in plan_steps(spec, announcements[0])] == [
        "sysctl net.ipv4.neigh.eth0.proxy_delay=0", "route 172.20.0.200/32 dev lo",
        "neighbour proxy 172.20.0.200 dev eth0"]
    assert [type(s) for s in plan_steps(spec, announcements[0])] == [Sysctl, Route, ProxyNeighbour]
    assert plan_steps(spec, announcements[1]) == (
        Route("lb-a.external", dst="203.0.113.10/32", gateway="172.20.0.11", dev="eth0"),)
    assert plan_announcements(nodes, [lb("pending")], [endpoint_slice("pending", ["node-1"])]) == []


def test_gratuitous_arp_frame():
    mac = bytes.fromhex("020000000001")
    frame = announcement_frame(mac, "172.20.0.200")
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac and frame[12:14] == b"\x08\x06"
    assert frame[14:22] == bytes.fromhex("0001080006040001")  # Ethernet/IPv4, request
    assert frame[22:28] == mac and frame[28:32] == frame[38:42] == bytes([172, 20, 0, 200])
