import ipaddress

import pytest

from overlaynet.api import model
from overlaynet.errors import CapacityError, InvalidInput


def test_defaults_are_kubernetes_and_flannel_defaults():
    spec = model.build_spec()
    assert str(spec.cluster_cidr) == "10.244.0.0/16"
    assert spec.node_cidr_mask_size == 24
    assert str(spec.service_cidr) == "10.96.0.0/12"
    assert [n.name for n in spec.nodes] == ["node-1", "node-2", "node-3"]
    assert spec.cni == "flannel"


def test_vxlan_is_an_alias_of_flannel():
    assert model.build_spec(cni="vxlan").cni == "flannel"


@pytest.mark.parametrize("value, words", [
    ("10.244.0.0/33", "clusterCIDR '10.244.0.0/33': not a valid CIDR"),
    ("banana", "clusterCIDR 'banana': not a valid CIDR"),
    ("10.244.0.1/16", "host bits are set"),
    ("fd00::/64", "only IPv4"),
])
def test_invalid_cidr_names_cluster_and_field(value, words):
    with pytest.raises(InvalidInput) as error:
        model.build_spec(name="lab", cluster_cidr=value)
    assert 'cluster "lab"' in str(error.value) and words in str(error.value)


@pytest.mark.parametrize("kwargs, first, second", [
    ({"service_cidr": "10.244.128.0/20"}, "clusterCIDR 10.244.0.0/16", "serviceCIDR 10.244.128.0/20"),
    ({"node_network": "10.96.5.0/24"}, "nodeNetwork 10.96.5.0/24", "serviceCIDR 10.96.0.0/12"),
    ({"node_network": "10.244.3.0/24"}, "nodeNetwork 10.244.3.0/24", "clusterCIDR 10.244.0.0/16"),
])
def test_overlapping_ranges_name_both(kwargs, first, second):
    with pytest.raises(InvalidInput) as error:
        model.build_spec(**kwargs)
    assert first in str(error.value) and second in str(error.value) and "overlaps" in str(error.value)


def test_node_mask_shorter_than_cluster_prefix():
    with pytest.raises(InvalidInput, match=r"nodeCIDRMaskSize /15 is shorter than clusterCIDR 10.244.0.0/16"):
        model.build_spec(node_cidr_mask_size=15)


@pytest.mark.parametrize("mask", [31, 32])
def test_node_mask_too_long_to_hold_a_pod(mask):
    with pytest.raises(InvalidInput, match=f"/{mask} leaves no address for a pod"):
        model.build_spec(node_cidr_mask_size=mask)


def test_a_slash_30_holds_one_pod():
    assert model.build_spec(cluster_cidr="10.244.0.0/28", node_cidr_mask_size=30, nodes=3).node_subnet_count == 4


def test_more_nodes_than_subnets_gives_the_numbers():
    with pytest.raises(CapacityError) as error:
        model.build_spec(nodes=5, cluster_cidr="10.244.0.0/22", node_cidr_mask_size=24)
    assert "5 nodes" in str(error.value) and "holds only 4" in str(error.value)


def test_more_nodes_than_node_addresses():
    with pytest.raises(CapacityError, match="offers only 4"):
        model.build_spec(nodes=5, node_network="172.20.0.0/28")


@pytest.mark.parametrize("name", ["Lab", "-lab", "lab_1", "a" * 33, ""])
def test_cluster_name_must_be_a_short_dns_label(name):
    with pytest.raises(InvalidInput):
        model.build_spec(name=name)


def test_duplicate_node_names():
    with pytest.raises(InvalidInput, match='duplicate node name "a"'):
        model.build_spec(nodes=[{"name": "a"}, {"name": "a"}])


def test_unknown_cni_lists_known_modes():
    with pytest.raises(InvalidInput, match='cni "cilium" is not a known CNI mode .*flannel'):
        model.build_spec(cni="cilium")


def test_host_overlap_names_both():
    spec = model.build_spec()
    with pytest.raises(InvalidInput, match="nodeNetwork 172.20.0.0/24 overlaps the host's network 172.20.0.0/16"):
        model.check_host_overlap(spec, [ipaddress.IPv4Network("172.20.0.0/16")])
    model.check_host_overlap(spec, [ipaddress.IPv4Network("192.0.2.0/24")])


def test_document_round_trip():
    spec = model.build_spec(name="lab", nodes=[{"name": "a", "labels": {"zone": "x"}}, "b"], mtu=9000)
    assert model.spec_from_document(spec.to_document()) == spec


def test_routed_mode_pool_smaller_than_a_block():
    with pytest.raises(InvalidInput, match=r"clusterCIDR 10.244.0.0/28 \(the IP pool\) is smaller than one IPAM block of /26"):
        model.build_spec(cni="calico", cluster_cidr="10.244.0.0/28", node_cidr_mask_size=30, nodes=2)


def test_bgp_needs_the_routed_mode():
    with pytest.raises(InvalidInput, match='bgp "bird" needs cni "calico"'):
        model.build_spec(bgp="bird")
    assert model.build_spec(cni="calico", bgp="bird").bgp == "bird"


def test_self_heal_is_off_by_default_round_trips_and_must_be_a_boolean():
    assert model.build_spec(name="c").self_heal is False
    spec = model.build_spec(name="c", self_heal=True)
    assert spec.to_document()["spec"]["selfHeal"] is True
    assert model.spec_from_document(spec.to_document()).self_heal is True
    with pytest.raises(InvalidInput, match=r"cluster \"c\": selfHeal 'on' must be true or false"):
        model.build_spec(name="c", self_heal="on")
