import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlaynet.errors import CapacityError
from overlaynet.ipam import allocators

CLUSTER = ipaddress.IPv4Network("10.244.0.0/16")


def test_first_node_gets_the_first_subnet_like_the_controller_manager():
    cidr, cursor = allocators.allocate_node_cidr(CLUSTER, 24, [], 0)
    assert str(cidr) == "10.244.0.0/24" and cursor == 1


def test_released_cidr_is_reused_after_the_cursor_wraps():
    small = ipaddress.IPv4Network("10.0.0.0/22")
    used, cursor = [], 0
    for _ in range(4):
        cidr, cursor = allocators.allocate_node_cidr(small, 24, used, cursor)
        used.append(cidr)
    used.remove(ipaddress.IPv4Network("10.0.1.0/24"))
    cidr, cursor = allocators.allocate_node_cidr(small, 24, used, cursor)
    assert str(cidr) == "10.0.1.0/24"


def test_exhausted_cluster_cidr_gives_numbers():
    small = ipaddress.IPv4Network("10.0.0.0/23")
    used = [ipaddress.IPv4Network("10.0.0.0/24"), ipaddress.IPv4Network("10.0.1.0/24")]
    with pytest.raises(CapacityError, match="holds 2 node CIDRs of /24 and all 2 are in use"):
        allocators.allocate_node_cidr(small, 24, used, 0)


@given(st.integers(min_value=17, max_value=28), st.data())
def test_node_cidrs_are_distinct_aligned_and_inside(mask, data):
    count = min(2 ** (mask - 16), 64)
    used, cursor = [], data.draw(st.integers(0, 2 ** (mask - 16) - 1))
    for _ in range(count):
        cidr, cursor = allocators.allocate_node_cidr(CLUSTER, mask, used, cursor)
        assert cidr.subnet_of(CLUSTER) and cidr.prefixlen == mask and cidr not in used
        used.append(cidr)


def test_pod_ips_start_at_dot_2_like_host_local():
    pod_cidr = ipaddress.IPv4Network("10.244.1.0/24")
    assert str(allocators.allocate_pod_ip("n", pod_cidr, [])) == "10.244.1.2"
    assert allocators.pod_capacity(pod_cidr) == 253


def test_pod_ips_continue_after_the_last_reserved_and_wrap():
    pod_cidr = ipaddress.IPv4Network("10.244.1.0/29")  # .2 .. .6
    last = ipaddress.IPv4Address("10.244.1.6")
    assert str(allocators.allocate_pod_ip("n", pod_cidr, [], last)) == "10.244.1.2"
    assert str(allocators.allocate_pod_ip("n", pod_cidr, [], ipaddress.IPv4Address("10.244.1.3"))) == "10.244.1.4"


def test_a_slash_30_holds_exactly_one_pod():
    pod_cidr = ipaddress.IPv4Network("10.244.1.0/30")
    ip = allocators.allocate_pod_ip("n", pod_cidr, [])
    assert str(ip) == "10.244.1.2"
    with pytest.raises(CapacityError, match='node "n": pod CIDR 10.244.1.0/30 has no free address'):
        allocators.allocate_pod_ip("n", pod_cidr, [ip])


@given(st.integers(min_value=24, max_value=29), st.integers(min_value=0, max_value=300))
def test_pod_ips_never_gateway_network_or_broadcast(mask, seed):
    pod_cidr = ipaddress.IPv4Network(f"10.244.7.0/{mask}")
    used: list = []
    last = None
    for _ in range(allocators.pod_capacity(pod_cidr)):
        ip = allocators.allocate_pod_ip("n", pod_cidr, used, last)
        assert ip in pod_cidr and ip not in used
        assert ip not in (pod_cidr.network_address, pod_cidr.network_address + 1, pod_cidr.broadcast_address)
        used.append(ip)
        last = ip
    with pytest.raises(CapacityError):
        allocators.allocate_pod_ip("n", pod_cidr, used, last)


def test_node_ips_start_at_dot_11():
    network = ipaddress.IPv4Network("172.20.0.0/24")
    assert str(allocators.allocate_node_ip(network, [])) == "172.20.0.11"
    assert str(allocators.allocate_node_ip(network, [ipaddress.IPv4Address("172.20.0.11")])) == "172.20.0.12"
