"""NetworkPolicies through the control plane, over the fakes: what is stored, and what each
node's tables hold after apply, label, pod delete and policy delete."""

from __future__ import annotations

import pytest

from overlaynet import names
from overlaynet.api.manifests import parse_document
from overlaynet.api.model import build_spec
from overlaynet.control.manager import ClusterManager
from overlaynet.control.store import Store
from overlaynet.errors import InvalidInput, NotFoundError
from tests.fakes import FakeRuntime

CLUSTER = "np"
DENY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "shop"}, "spec": {"podSelector": {"matchLabels": {"app": "api"}}}}


def pod(name: str, namespace: str, node: str, labels: dict):
    return parse_document({"kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
                           "spec": {"nodeName": node, "containers": [{"name": "c"}]}}, "test")


@pytest.fixture
def manager(tmp_path):
    manager = ClusterManager(Store(str(tmp_path / "state")), FakeRuntime())
    manager.up(build_spec(name=CLUSTER, nodes=2))
    manager.apply(CLUSTER, [pod("api", "shop", "node-1", {"app": "api"}), pod("web", "front", "node-2", {})])
    yield manager
    manager.store.close()


def chains(manager, node: str) -> list[str]:
    return [c for c in manager.runtime.iptables.chains(names.node_netns(CLUSTER, node), "nft", "filter")
            if c.startswith("cali-")]


def test_a_cluster_without_policies_gets_no_policy_chains(manager):
    assert chains(manager, "node-1") == []


def test_apply_label_and_delete_follow_through_to_every_node(manager):
    lines = manager.apply(CLUSTER, [parse_document(DENY, "test")])
    assert lines == ["networkpolicy.networking.k8s.io/deny created"]
    assert manager.apply(CLUSTER, [parse_document(DENY, "test")]) == ["networkpolicy.networking.k8s.io/deny unchanged"]
    node1 = chains(manager, "node-1")
    assert "cali-FORWARD" in node1 and any(c.startswith("cali-tw-") for c in node1)
    assert [c for c in chains(manager, "node-2") if c.startswith("cali-tw-")] == []  # api is not there
    assert manager.label(CLUSTER, "pod", "shop", "api", {"app": "other"}, [], overwrite=True) == "pod/api labeled"
    assert not any(c.startswith("cali-tw-") for c in chains(manager, "node-1")), "a stale chain was left"
    manager.label(CLUSTER, "pod", "shop", "api", {"app": "api"}, [], overwrite=True)
    assert any(c.startswith("cali-tw-") for c in chains(manager, "node-1"))
    manager.delete_policy(CLUSTER, "shop", "deny")
    assert chains(manager, "node-1") == ["cali-FORWARD", "cali-INPUT"]
    with pytest.raises(NotFoundError, match='networkpolicy "deny" not found in namespace "shop"'):
        manager.delete_policy(CLUSTER, "shop", "deny")


def test_namespaces_labels_and_deletion(manager):
    manager.apply(CLUSTER, [parse_document({"kind": "Namespace", "metadata": {"name": "team"}}, "test")])
    assert manager.label(CLUSTER, "namespace", "", "team", {"tier": "a"}, []) == "namespace/team labeled"
    with pytest.raises(InvalidInput, match='label tier already has the value "a"'):
        manager.label(CLUSTER, "namespace", "", "team", {"tier": "b"}, [])
    with pytest.raises(InvalidInput, match='namespace "shop": still holds pod/api'):
        manager.delete_namespace(CLUSTER, "shop")
    manager.delete_namespace(CLUSTER, "team")
    with pytest.raises(NotFoundError, match='namespace "team" not found'):
        manager.label(CLUSTER, "namespace", "", "team", {"tier": "a"}, [])


def test_a_mode_whose_pod_interfaces_are_unknown_refuses_policies(tmp_path):
    manager = ClusterManager(Store(str(tmp_path / "state")), FakeRuntime())
    manager.up(build_spec(name=CLUSTER, nodes=1, cni="tests.modes.hostgw"))
    with pytest.raises(InvalidInput, match='NetworkPolicy is enforced in the vxlan .* not with cni "tests.modes.hostgw"'):
        manager.apply(CLUSTER, [parse_document(DENY, "test")])
    assert manager.store.list(CLUSTER, "NetworkPolicy") == []
    manager.store.close()


def test_describe_and_get_of_policies_and_namespaces(manager, capsys):
    from overlaynet.cli import netpol as netpol_cli

    manager.apply(CLUSTER, [parse_document(DENY, "test"), parse_document(
        {"kind": "Namespace", "metadata": {"name": "front", "labels": {"tier": "web"}}}, "test")])
    text = netpol_cli.describe_policy(manager, CLUSTER, "shop", "deny")
    assert "PodSelector:     app=api" in text and "Selects now:     shop/api" in text
    assert "<none> (Selected pods are isolated for ingress connectivity)" in text
    assert "Not affecting egress traffic" in text
    netpol_cli.get_objects(manager, CLUSTER, "netpol", None, None, None, True)
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAMESPACE", "NAME", "POD-SELECTOR", "AGE"] and out[1].split()[:3] == ["shop", "deny", "app=api"]
    netpol_cli.get_objects(manager, CLUSTER, "ns", None, "wide", None, False)
    rows = {line.split()[0]: line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["front"] == "kubernetes.io/metadata.name=front,tier=web"
    assert rows["shop"] == "kubernetes.io/metadata.name=shop"  # implicit: a pod named it
    record = manager.pod(CLUSTER, "shop", "api")
    lines = netpol_cli.policy_lines(manager, CLUSTER, record)
    assert lines[1].startswith("  Ingress: isolated by deny (chain cali-tw-veth") and lines[3] == "  Egress: not isolated"
    assert lines[2].startswith("    deny: cali-pi-")


def test_without_br_netfilter_a_policy_is_refused_before_it_is_stored(manager):
    from overlaynet.datapath.plan import Sysctl
    from overlaynet.errors import HostError, KernelError

    applied = manager.runtime.apply

    def apply(plan):
        if any(isinstance(step, Sysctl) and "bridge" in step.key for step in plan):
            raise KernelError("/proc/sys/net/bridge/bridge-nf-call-iptables: No such file or directory")
        return applied(plan)

    manager.runtime.apply = apply
    with pytest.raises(HostError, match='node "node-1": NetworkPolicy in the vxlan mode needs .*modprobe br_netfilter'):
        manager.apply(CLUSTER, [parse_document(DENY, "test")])
    assert manager.store.list(CLUSTER, "NetworkPolicy") == []
