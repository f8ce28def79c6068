"""The control plane (``ClusterManager`` and the node components it drives) on a temporary
store and the fakes of tests/fakes.py: no root, no kernel, the real IPAM plugin."""

from __future__ import annotations

import ipaddress
import json

import pytest

from overlaynet import names
from overlaynet.agent.__main__ import report_to_controller
from overlaynet.api.manifests import parse_document
from overlaynet.api.model import NodeSpec, build_spec
from overlaynet.control.manager import ClusterManager
from overlaynet.control.ownership import AGENT, BIRD, NETNS, PATH
from overlaynet.control.store import Store
from overlaynet.datapath.plan import Route
from overlaynet.errors import AgentError, ConflictError, InvalidInput
from overlaynet.node import bgp_mesh, kubelet
from overlaynet.proxy.render import KUBE_SERVICES, svc_chain
from tests.fakes import FakeRuntime

CLUSTER = "cp"


def deployment(name: str = "web", replicas: int = 3, labels: dict | None = None, port: int = 8080):
    labels = labels or {"app": name}
    return parse_document({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": labels["app"]}},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": name, "ports": [
                                  {"name": "http", "containerPort": port}]}]}}}}, "test")


def pod(name: str, **spec):
    return parse_document({"kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
                           "spec": {"containers": [{"name": name}], **spec}}, "test")


def service(name: str, app: str | None = None):
    return parse_document({"kind": "Service", "metadata": {"name": name},
                           "spec": {"selector": {"app": app or name},
                                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}, "test")


@pytest.fixture
def make(tmp_path):
    managers = []

    def make(**options) -> ClusterManager:
        manager = ClusterManager(Store(str(tmp_path / f"state{len(managers)}")), FakeRuntime())
        manager.up(build_spec(name=CLUSTER, **({"nodes": 2, "dns": False} | options)))
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        manager.store.close()


def running(manager: ClusterManager) -> dict[str, dict]:
    return {p["metadata"]["name"]: p for p in manager.pods(CLUSTER) if p["status"]["phase"] == "Running"}


# -- up and down -----------------------------------------------------------------------------------


def test_up_records_every_namespace_before_it_is_made_and_serves_every_node(make):
    manager = make(nodes=3)
    runtime = manager.runtime
    assert set(manager.store.owned(CLUSTER, NETNS)) == runtime.namespaces
    assert {names.node_netns(CLUSTER, f"node-{i}") for i in (1, 2, 3)} <= runtime.namespaces
    assert [n["spec"]["podCIDR"] for n in manager.nodes(CLUSTER)] == ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]
    assert all(n["status"]["conditions"][0]["status"] == "True" for n in manager.nodes(CLUSTER))
    assert sorted(runtime.agents.served) == ["node/node-1", "node/node-2", "node/node-3"]
    assert runtime.agent_started == [manager.agent_socket(CLUSTER)]
    assert manager.store.owned(CLUSTER, AGENT) == [manager.agent_socket(CLUSTER)]
    conflist = runtime.conflists[kubelet.node_paths(manager.store.directory, CLUSTER, "node-2").conflist]
    assert conflist["plugins"][0]["overlaynet"]["node"]["podCIDR"] == "10.244.1.0/24"
    assert manager.store.get_cluster(CLUSTER)["phase"] == "Running"


def test_down_removes_what_the_cluster_owns_and_forgets_it(make):
    manager = make()
    manager.apply(CLUSTER, [deployment(replicas=2)])
    assert manager.down(CLUSTER) == {"namespaces": 6}  # underlay, external, 2 nodes, 2 pods
    assert manager.runtime.namespaces == set()
    assert manager.runtime.agents.served == {}
    assert all(manager.store.owned(CLUSTER, kind) == [] for kind in (NETNS, AGENT, PATH))
    assert manager.store.cluster_names() == []


def test_a_failed_up_leaves_nothing_behind(tmp_path):
    runtime = FakeRuntime()

    def refuse(*args):
        raise AgentError("the agent did not start")

    runtime.start_agent = refuse
    manager = ClusterManager(Store(str(tmp_path)), runtime)
    with pytest.raises(AgentError, match="did not start"):
        manager.up(build_spec(name=CLUSTER, nodes=2))
    assert runtime.applied and runtime.namespaces == set()
    assert manager.store.get_cluster(CLUSTER) is None and manager.store.owned(CLUSTER, NETNS) == []


def test_up_of_an_existing_cluster_is_a_conflict(make):
    manager = make()
    with pytest.raises(ConflictError, match=f'cluster "{CLUSTER}" already exists'):
        manager.up(build_spec(name=CLUSTER, nodes=2))


# -- pods ------------------------------------------------------------------------------------------


def test_a_pod_gets_a_sandbox_the_first_host_local_address_and_its_server(make):
    manager = make()
    assert manager.apply(CLUSTER, [pod("a", nodeName="node-2")]) == ["pod/a created"]
    record = manager.pod(CLUSTER, "default", "a")
    assert record["status"]["podIP"] == "10.244.1.2" and record["status"]["hostIP"] == "172.20.0.12"
    assert next(c for c in record["status"]["conditions"] if c["type"] == "Ready")["status"] == "True"
    netns = names.pod_netns(CLUSTER, "default", "a")
    assert netns in manager.runtime.namespaces and netns in manager.store.owned(CLUSTER, NETNS)
    assert manager.runtime.agents.served["pod/default/a"][0] == netns
    assert manager.apply(CLUSTER, [pod("a", nodeName="node-2")]) == ["pod/a unchanged"]


def test_deleting_a_pod_removes_its_sandbox_and_frees_its_address(make):
    manager = make(nodes=1)
    manager.apply(CLUSTER, [pod("a"), pod("b")])
    manager.delete_pod(CLUSTER, "default", "a")
    assert list(running(manager)) == ["b"]
    assert names.pod_netns(CLUSTER, "default", "a") not in manager.runtime.namespaces
    assert "pod/default/a" not in manager.runtime.agents.served
    manager.apply(CLUSTER, [pod("c")])  # host-local goes on from the last address it gave
    assert manager.pod(CLUSTER, "default", "c")["status"]["podIP"] == "10.244.0.4"


def test_a_pod_whose_cni_add_fails_stays_container_creating_without_a_sandbox(make):
    manager = make()
    manager.runtime.fail_add.add("bad")
    manager.apply(CLUSTER, [pod("bad"), pod("good")])
    bad = manager.pod(CLUSTER, "default", "bad")
    assert bad["status"]["reason"] == "ContainerCreating" and "podIP" not in bad["status"]
    assert bad["status"]["message"].startswith("FailedCreatePodSandBox: failed to set up the pod network")
    assert names.pod_netns(CLUSTER, "default", "bad") not in manager.store.owned(CLUSTER, NETNS)
    assert names.pod_netns(CLUSTER, "default", "bad") not in manager.runtime.namespaces
    assert list(running(manager)) == ["good"]


def test_a_pod_for_a_missing_node_stays_pending_until_the_node_joins(make):
    manager = make()
    manager.apply(CLUSTER, [pod("late", nodeName="node-3")])
    assert manager.pod(CLUSTER, "default", "late")["status"]["phase"] == "Pending"
    manager.add_node(CLUSTER, NodeSpec("node-3"))
    late = manager.pod(CLUSTER, "default", "late")
    assert late["status"]["phase"] == "Running" and late["status"]["podIP"] == "10.244.2.2"


def test_a_pod_spec_change_is_refused(make):
    manager = make()
    manager.apply(CLUSTER, [pod("a", nodeName="node-1")])
    with pytest.raises(InvalidInput, match='pod "a": spec: Forbidden'):
        manager.apply(CLUSTER, [pod("a", nodeName="node-2")])


# -- Deployments -----------------------------------------------------------------------------------


def test_a_deployment_scales_up_and_down_and_never_reuses_a_pod_name(make):
    manager = make()
    assert manager.apply(CLUSTER, [deployment(replicas=3)]) == ["deployment.apps/web created"]
    first = set(running(manager))
    assert len(first) == 3 and all(name.startswith("web-") for name in first)
    assert manager.deployments(CLUSTER)[0]["status"] == {"replicas": 3, "readyReplicas": 3,
                                                        "availableReplicas": 3, "updatedReplicas": 3}
    assert manager.apply(CLUSTER, [deployment(replicas=1)]) == ["deployment.apps/web configured"]
    kept = set(running(manager))
    assert len(kept) == 1 and kept < first
    manager.apply(CLUSTER, [deployment(replicas=2)])
    grown = set(running(manager))
    assert kept < grown and not (grown - kept) & first
    assert len(manager.runtime.namespaces & {names.pod_netns(CLUSTER, "default", n) for n in first | grown}) == 2


def test_a_changed_template_replaces_every_pod(make):
    manager = make()
    manager.apply(CLUSTER, [deployment(replicas=2)])
    before = set(running(manager))
    manager.apply(CLUSTER, [deployment(replicas=2, labels={"app": "web", "tier": "front"})])
    after = running(manager)
    assert len(after) == 2 and not set(after) & before
    assert all(p["metadata"]["labels"]["tier"] == "front" for p in after.values())


def test_a_deleted_deployment_pod_is_replaced_and_a_deleted_deployment_takes_its_pods(make):
    manager = make()
    manager.apply(CLUSTER, [deployment(replicas=2), pod("solo")])
    victim = next(name for name in running(manager) if name.startswith("web-"))
    manager.delete_pod(CLUSTER, "default", victim)
    now = running(manager)
    assert victim not in now and len([n for n in now if n.startswith("web-")]) == 2
    manager.delete_deployment(CLUSTER, "default", "web")
    assert list(running(manager)) == ["solo"] and manager.deployments(CLUSTER) == []


# -- nodes -----------------------------------------------------------------------------------------


def test_node_add_and_remove(make):
    manager = make()
    manager.apply(CLUSTER, [deployment(replicas=4)])
    node = manager.add_node(CLUSTER, NodeSpec("node-3", (("zone", "b"),)))
    assert node["spec"]["podCIDR"] == "10.244.2.0/24" and node["metadata"]["labels"]["zone"] == "b"
    assert names.node_netns(CLUSTER, "node-3") in manager.runtime.namespaces
    assert "node/node-3" in manager.runtime.agents.served
    assert [n.name for n in manager.spec(CLUSTER).nodes] == ["node-1", "node-2", "node-3"]
    with pytest.raises(ConflictError, match='node "node-3" already exists'):
        manager.add_node(CLUSTER, NodeSpec("node-3"))
    manager.remove_node(CLUSTER, "node-1")
    pods = running(manager)
    assert len(pods) == 4 and {p["spec"]["nodeName"] for p in pods.values()} <= {"node-2", "node-3"}
    removed = {step for plan in manager.runtime.removed for step in plan}
    assert any(getattr(step, "name", None) == names.node_netns(CLUSTER, "node-1") for step in removed)
    assert names.node_netns(CLUSTER, "node-1") not in manager.store.owned(CLUSTER, NETNS)
    assert "node/node-1" not in manager.runtime.agents.served
    assert [n.name for n in manager.spec(CLUSTER).nodes] == ["node-2", "node-3"]
    manager.remove_node(CLUSTER, "node-2")
    assert {p["spec"]["nodeName"] for p in running(manager).values()} == {"node-3"}
    with pytest.raises(InvalidInput, match='node "node-3": it is the last node'):
        manager.remove_node(CLUSTER, "node-3")


# -- kube-proxy ------------------------------------------------------------------------------------


def service_chain(name: str) -> str:
    return svc_chain(f"default/{name}:http", "tcp")


def test_kube_proxy_loads_every_node_with_its_jumps_and_the_service_chains(make):
    manager = make()
    lines = manager.apply(CLUSTER, [deployment(replicas=2), service("web")])
    assert lines == ["deployment.apps/web created", "service/web created"]
    iptables = manager.runtime.iptables
    for node in ("node-1", "node-2"):
        netns = names.node_netns(CLUSTER, node)
        assert sum(1 for r in iptables.rules(netns, "nat", "PREROUTING") if KUBE_SERVICES in r) == 1
        services = iptables.rules(netns, "nat", KUBE_SERVICES)
        assert any(service_chain("web") in r for r in services)
        assert len(iptables.rules(netns, "nat", service_chain("web"))) >= 2  # the endpoints' jumps
    assert manager.store.get_meta(CLUSTER, "kube-proxy-backend") == "nft"


def test_a_change_is_a_partial_sync_that_rewrites_only_the_changed_services_chains(make):
    manager = make()
    manager.apply(CLUSTER, [deployment("web", replicas=2), deployment("api", replicas=1),
                            service("web"), service("api")])
    iptables = manager.runtime.iptables
    netns = names.node_netns(CLUSTER, "node-1")
    api_rules = iptables.rules(netns, "nat", service_chain("api"))
    manager.apply(CLUSTER, [deployment("web", replicas=3)])
    partial = iptables.payloads[netns][-1]
    assert f":{service_chain('web')} " in partial and service_chain("api") + " " not in partial
    assert f":{KUBE_SERVICES} " in partial
    assert iptables.rules(netns, "nat", service_chain("api")) == api_rules  # kept: --noflush
    assert sum(1 for r in iptables.rules(netns, "nat", service_chain("web")) if "KUBE-SEP-" in r) == 3


def test_a_deleted_service_loses_its_chains_on_every_node(make):
    manager = make()
    manager.apply(CLUSTER, [deployment(replicas=1), service("web")])
    manager.delete_service(CLUSTER, "default", "web")
    for node in ("node-1", "node-2"):
        chains = manager.runtime.iptables.chains(names.node_netns(CLUSTER, node), "nft", "nat")
        assert service_chain("web") not in chains and not [c for c in chains if c.startswith("KUBE-SEP-")]


def test_readiness_moves_a_pod_in_and_out_of_its_services_endpoints(make):
    manager = make(nodes=1)
    probe = {"readinessProbe": {"tcpSocket": {"port": 8080}}}
    web = parse_document({"kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
                          "spec": {"containers": [{"name": "web", "ports": [{"name": "http", "containerPort": 8080}],
                                                   **probe}]}}, "test")
    manager.apply(CLUSTER, [web, service("web")])
    assert manager.runtime.agents.served["pod/default/web"][2]["podIP"] == "10.244.0.2"
    netns = names.node_netns(CLUSTER, "node-1")

    def endpoints() -> int:
        return sum(1 for r in manager.runtime.iptables.rules(netns, "nat", service_chain("web")) if "KUBE-SEP-" in r)

    assert endpoints() == 0
    manager.pod_health(CLUSTER, "default", "web", "readiness", True)
    assert endpoints() == 1
    manager.pod_health(CLUSTER, "default", "web", "readiness", False)
    assert endpoints() == 0
    manager.pod_health(CLUSTER, "default", "web", "liveness", False)
    assert manager.pod(CLUSTER, "default", "web")["status"]["containerStatuses"][0]["restartCount"] == 1
    manager.pod_health(CLUSTER, "default", "web", "readiness", True, current=lambda: False)
    assert endpoints() == 0, "a replaced prober's report, read after its successor's, changes nothing"


# -- routes of the routed mode ---------------------------------------------------------------------


def routes_of(manager: ClusterManager, node: str) -> list[Route]:
    return [Route(**entry) for entry in json.loads(manager.store.get_meta(CLUSTER, f"routes/{node}", "[]"))]


def test_route_sync_follows_the_blocks_and_removes_stale_routes(make):
    manager = make(cni="calico", nodes=3)
    manager.apply(CLUSTER, [pod("a", nodeName="node-1")])
    block = str(ipaddress.IPv4Interface(manager.pod(CLUSTER, "default", "a")["status"]["podIP"] + "/26").network)
    own = routes_of(manager, "node-1")
    assert [(r.dst, r.type) for r in own] == [(block, "blackhole")]
    to_block = routes_of(manager, "node-2")
    assert [(r.dst, r.gateway, r.proto) for r in to_block] == [(block, "172.20.0.11", "80")]
    assert set(own + to_block) <= {step for plan in manager.runtime.applied for step in plan}
    manager.apply(CLUSTER, [pod("b", nodeName="node-2")])
    assert len(routes_of(manager, "node-3")) == 2  # a route to each of the other nodes' blocks
    manager.remove_node(CLUSTER, "node-1")
    assert block not in [r.dst for r in routes_of(manager, "node-2") + routes_of(manager, "node-3")]
    assert set(to_block) <= {step for plan in manager.runtime.removed for step in plan}


def test_with_bgp_bird_learns_the_routes_and_down_stops_every_daemon(make):
    manager = make(cni="calico", bgp="bird")
    manager.apply(CLUSTER, [pod("a", nodeName="node-1")])
    bird = manager.runtime.bird
    conf, _, pid = bgp_mesh.bird_files(manager.store.directory, CLUSTER, "node-1")
    assert " blackhole;" in bird.configs[conf] and pid in bird.running
    assert sorted(manager.store.owned(CLUSTER, BIRD)) == sorted(bird.running)
    assert routes_of(manager, "node-2") == []  # BIRD's job, not ours
    manager.down(CLUSTER)
    assert bird.running == {}


def test_the_agents_health_report_reaches_the_controller_over_the_store(make):
    manager = make(nodes=1)
    manager.apply(CLUSTER, [pod("a")])
    report = report_to_controller(CLUSTER, manager.store.directory)
    report("default", "a", "liveness", False, lambda: True)  # a restart: nothing to sync
    assert manager.pod(CLUSTER, "default", "a")["status"]["containerStatuses"][0]["restartCount"] == 1
    report("default", "gone", "readiness", True, lambda: True)  # a pod deleted meanwhile is no error
