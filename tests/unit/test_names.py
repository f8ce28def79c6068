import pytest

from overlaynet import names
from overlaynet.errors import InvalidInput


def test_namespaces_carry_cluster_and_role():
    assert names.underlay_netns("lab") == "lab.underlay"
    assert names.node_netns("lab", "node-1") == "lab.node.node-1"
    assert names.pod_netns("lab", "default", "web-1") == "lab.pod.default.web-1"
    for name in (names.underlay_netns("lab"), names.node_netns("lab", "x"), names.pod_netns("lab", "d", "p")):
        assert name.startswith(names.cluster_netns_prefix("lab"))
        assert not name.startswith(names.cluster_netns_prefix("la"))


def test_interface_names_fit_ifnamsiz():
    long_node = "n" * 63
    assert len(names.node_underlay_port(long_node)) <= 15
    assert names.node_underlay_port(long_node) != names.node_underlay_port("n" * 62)
    assert names.node_underlay_port("node-1") == "node-1"
    veth = names.pod_host_veth("default/web-" + "x" * 200)
    assert veth.startswith("veth") and len(veth) == 12


def test_derived_mac_is_unicast_locally_administered_and_stable():
    mac = names.derived_mac("lab", "vtep", "node-1")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01
    assert mac == names.derived_mac("lab", "vtep", "node-1") != names.derived_mac("lab", "vtep", "node-2")


@pytest.mark.parametrize("bad", ["A", "a_b", "-a", "a-", "a" * 64, "a.b"])
def test_labels(bad):
    with pytest.raises(InvalidInput):
        names.check_label("node", bad)


def test_subdomain_allows_dots():
    assert names.check_subdomain("pod", "web.v1") == "web.v1"
    with pytest.raises(InvalidInput):
        names.check_subdomain("pod", "web..v1")


def test_a_pod_netns_name_over_the_kernel_limit_names_the_pod():
    namespace = "n" * 63
    fits = "p" * (names.NETNS_NAME_MAX - len(f"lab.pod.{namespace}."))
    assert len(names.pod_netns("lab", namespace, fits)) == names.NETNS_NAME_MAX
    with pytest.raises(InvalidInput) as caught:
        names.pod_netns("lab", namespace, fits + "p")
    assert str(caught.value) == (f'pod "{namespace}/{fits}p": the network namespace name '
                                 f'"lab.pod.{namespace}.{fits}p" is 256 characters, over the kernel\'s 255')


def test_every_derived_netns_name_is_checked():
    for derive in (lambda c: names.underlay_netns(c), lambda c: names.external_netns(c),
                   lambda c: names.node_netns(c, "node-1")):
        assert derive("lab").startswith("lab.")
        with pytest.raises(InvalidInput, match="over the kernel's 255"):
            derive("c" * 250)


def test_an_interface_name_the_kernel_refuses_is_overlaynets_error():
    assert names.check_ifname("cali0123456789a") == "cali0123456789a"
    for bad in ("x" * 16, "", "a b", "-a"):
        with pytest.raises(InvalidInput, match="not a valid Linux interface name"):
            names.check_ifname(bad)


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "x" * 256, "a\0b"])
def test_a_netns_name_ip_netns_could_not_use_is_refused(bad):
    with pytest.raises(InvalidInput, match="network namespace name"):
        names.check_netns_name(bad)


def test_a_netns_name_ip_netns_accepts_passes():
    assert names.check_netns_name("lab12-byhand") == "lab12-byhand"
