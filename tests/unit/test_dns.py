"""The cluster DNS without root: the Cluster fields, the pods' DNS fields and resolv.conf, the
records, the server's answers (real dnspython messages), and the control plane over fakes."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from overlaynet.agent.dnsserver import Zone, answer, parse_zone
from overlaynet.api.manifests import parse_document
from overlaynet.api.model import build_spec, spec_from_document
from overlaynet.api.pod_dns import PodDns, parse_pod_dns
from overlaynet.api.services import parse_service_document
from overlaynet.control.dns import addon_documents, runs_cluster_dns
from overlaynet.control.dns_records import Record, plan_records
from overlaynet.control.endpoints import build_endpoint_slices
from overlaynet.control.manager import ClusterManager
from overlaynet.control.ownership import PATH
from overlaynet.control.store import Store
from overlaynet.errors import AgentError, InvalidInput
from overlaynet.node.resolv import (
    ResolvConf,
    etc_netns_dir,
    parse_resolv_conf,
    plan_resolv_conf,
    render_resolv_conf,
)
from tests.fakes import FakeRuntime

# -- the Cluster document ----------------------------------------------------------------------------


def test_dns_is_on_by_default_at_the_service_cidrs_tenth_address():
    spec = build_spec()
    assert spec.dns and spec.cluster_domain == "cluster.local" and str(spec.dns_service_ip) == "10.96.0.10"
    assert str(build_spec(service_cidr="10.100.0.0/16").dns_service_ip) == "10.100.0.10"
    again = spec_from_document(spec.to_document())
    assert again == spec and spec.to_document()["spec"]["dns"] is True


@pytest.mark.parametrize(("fields", "message"), [
    ({"cluster_domain": "Cluster.Local"}, "clusterDomain 'Cluster.Local' must be a DNS-1123 subdomain"),
    ({"cluster_domain": "cluster..local"}, "must be a DNS-1123 subdomain"),
    ({"cluster_domain": ""}, "must be a DNS-1123 subdomain"),
    ({"dns": "yes"}, "dns 'yes' must be true or false"),
    ({"service_cidr": "10.96.0.0/29"}, "serviceCIDR 10.96.0.0/29 has no tenth address for the cluster DNS"),
])
def test_bad_dns_fields_of_a_cluster_are_one_clear_error(fields, message):
    with pytest.raises(InvalidInput, match=message):
        build_spec(name="lab", **fields)


def test_a_tiny_service_cidr_is_fine_without_dns():
    assert not build_spec(service_cidr="10.96.0.0/29", dns=False).dns


# -- a pod's DNS fields ------------------------------------------------------------------------------


def test_the_dns_fields_of_a_pod_are_read():
    assert parse_pod_dns({}) == PodDns()
    parsed = parse_pod_dns({"dnsPolicy": "None", "hostname": "db-0", "subdomain": "db", "dnsConfig": {
        "nameservers": ["192.0.2.1"], "searches": ["corp.example."], "options": [{"name": "ndots", "value": 2},
                                                                                   {"name": "edns0"}]}})
    assert parsed == PodDns("None", ("192.0.2.1",), ("corp.example",), (("ndots", "2"), ("edns0", None)),
                            "db-0", "db")


@pytest.mark.parametrize(("spec", "message"), [
    ({"dnsPolicy": "ClusterLast"}, 'spec.dnsPolicy "ClusterLast" is not supported'),
    ({"dnsPolicy": "None"}, 'spec.dnsConfig is required when dnsPolicy is "None"'),
    ({"dnsPolicy": "None", "dnsConfig": {"searches": ["a.b"]}}, "spec.dnsConfig.nameservers must name at least one"),
    ({"dnsConfig": {"nameservers": ["1.1.1.1", "8.8.8.8", "9.9.9.9", "1.0.0.1"]}}, "at most 3 nameservers"),
    ({"dnsConfig": {"nameservers": ["dns.example"]}}, r"spec.dnsConfig.nameservers\[0\] 'dns.example' is not an IPv4"),
    ({"dnsConfig": {"searches": ["Bad_Domain"]}}, r"spec.dnsConfig.searches\[0\] 'Bad_Domain' must be a DNS-1123"),
    ({"dnsConfig": {"searches": [f"s{i}.example" for i in range(33)]}}, "at most 32 search domains"),
    ({"dnsConfig": {"options": [{"value": "2"}]}}, r"spec.dnsConfig.options\[0\].name is required"),
    ({"dnsConfig": {"servers": []}}, "spec.dnsConfig.servers is not a field"),
    ({"dnsConfig": "8.8.8.8"}, "spec.dnsConfig must be a mapping"),
    ({"hostname": "DB_0"}, "spec.hostname 'DB_0' must be a DNS-1123 label"),
])
def test_bad_dns_fields_of_a_pod_are_one_clear_error(spec, message):
    with pytest.raises(InvalidInput, match=message):
        parse_pod_dns(spec)


def test_a_deployment_template_with_a_bad_dns_policy_is_refused_by_name():
    document = {"kind": "Deployment", "metadata": {"name": "web"},
                "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"dnsPolicy": "Cluster", "containers": [{"name": "web"}]}}}}
    with pytest.raises(InvalidInput, match=r'^web.yaml: Deployment "web": spec.template.spec.dnsPolicy "Cluster" '
                                           r"is not supported \(supported: ClusterFirst, ClusterFirstWithHostNet, "
                                           r"Default, None\)$"):
        parse_document(document, "web.yaml")


# -- resolv.conf -------------------------------------------------------------------------------------

HOST = parse_resolv_conf("# the host's\nnameserver 192.168.1.1\nnameserver 192.168.1.2 # second\n"
                         "search home.example\noptions timeout:2 rotate\n")


def test_the_hosts_resolv_conf_is_read_as_glibc_reads_it():
    assert HOST == ResolvConf(("192.168.1.1", "192.168.1.2"), ("home.example",), (("timeout", "2"), ("rotate", None)))
    assert parse_resolv_conf("search a.example\ndomain b.example\n").searches == ("b.example",)  # the last wins


def test_cluster_first_is_the_kube_dns_address_the_namespace_search_path_and_ndots_5():
    conf = plan_resolv_conf(PodDns(), "shop", build_spec(), HOST)
    assert render_resolv_conf(conf) == ("search shop.svc.cluster.local svc.cluster.local cluster.local home.example\n"
                                        "nameserver 10.96.0.10\noptions ndots:5\n")
    custom = build_spec(cluster_domain="corp.internal", service_cidr="10.100.0.0/16")
    assert render_resolv_conf(plan_resolv_conf(PodDns("ClusterFirstWithHostNet"), "default", custom,
                                               ResolvConf())) == (
        "search default.svc.corp.internal svc.corp.internal corp.internal\nnameserver 10.100.0.10\noptions ndots:5\n")


def test_default_is_the_nodes_file_and_cluster_first_falls_back_to_it_without_dns():
    assert plan_resolv_conf(PodDns("Default"), "default", build_spec(), HOST) == HOST
    assert plan_resolv_conf(PodDns(), "default", build_spec(dns=False), HOST) == HOST


def test_dns_config_is_merged_as_the_kubelet_merges_it():
    dns = PodDns("ClusterFirst", ("192.0.2.1", "10.96.0.10"), ("corp.example", "svc.cluster.local"),
                 (("ndots", "2"), ("edns0", None)))
    conf = plan_resolv_conf(dns, "default", build_spec(), ResolvConf())
    assert conf.nameservers == ("10.96.0.10", "192.0.2.1")  # duplicates dropped
    assert conf.searches == ("default.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example")
    assert conf.options == (("ndots", "2"), ("edns0", None))  # the pod's ndots replaces the kubelet's
    none = plan_resolv_conf(PodDns("None", ("192.0.2.1",)), "default", build_spec(), HOST)
    assert render_resolv_conf(none) == "nameserver 192.0.2.1\n"
    many = plan_resolv_conf(PodDns("Default", ("192.0.2.1", "192.0.2.2")), "default", build_spec(), HOST)
    assert many.nameservers == ("192.168.1.1", "192.168.1.2", "192.0.2.1")  # glibc reads 3


def test_the_file_lives_where_ip_netns_exec_mounts_it_from():
    assert etc_netns_dir("lab.pod.default.web") == "/etc/netns/lab.pod.default.web"
    with pytest.raises(InvalidInput):
        etc_netns_dir("../etc")


# -- records -----------------------------------------------------------------------------------------


def _pod(name, ip, labels, ready=True, namespace="default"):
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def _service(name, **spec):
    return parse_service_document({"kind": "Service", "metadata": {"name": name}, "spec": spec}, "test")


def _records(services, pods):
    slices = [s for svc in services for s in build_endpoint_slices(svc, pods).slices]
    return set(plan_records("cluster.local", "10.96.0.10", services, slices, pods))


def test_a_cluster_ip_service_has_an_a_record_an_srv_per_named_port_and_a_ptr():
    records = _records([_service("web", clusterIP="10.96.0.5", selector={"app": "web"},
                                 ports=[{"name": "http", "port": 80, "targetPort": "http"}])],
                       [_pod("web-1", "10.244.1.2", {"app": "web"})])
    assert {Record("web.default.svc.cluster.local.", "A", "10.96.0.5"),
            Record("_http._tcp.web.default.svc.cluster.local.", "SRV", "0 100 80 web.default.svc.cluster.local."),
            Record("5.0.96.10.in-addr.arpa.", "PTR", "web.default.svc.cluster.local."),
            Record("10-244-1-2.default.pod.cluster.local.", "A", "10.244.1.2")} <= records
    assert not any(r.data == "10.244.1.2" and ".svc." in r.name for r in records)  # not the endpoint


def test_an_unnamed_port_has_no_srv_record():
    records = _records([_service("web", clusterIP="10.96.0.5", ports=[{"port": 80}])], [])
    assert not [r for r in records if r.type == "SRV"]


def test_a_headless_service_answers_its_ready_endpoints_only():
    pods = [_pod("db-1", "10.244.1.3", {"app": "db"}), _pod("db-2", "10.244.2.3", {"app": "db"}, ready=False)]
    records = _records([_service("db", clusterIP="None", selector={"app": "db"},
                                 ports=[{"name": "http", "port": 80, "targetPort": "http"}])], pods)
    assert {r.data for r in records if r.name == "db.default.svc.cluster.local."} == {"10.244.1.3"}
    assert Record("_http._tcp.db.default.svc.cluster.local.", "SRV",
                  "0 100 8080 10-244-1-3.db.default.svc.cluster.local.") in records
    assert Record("3.1.244.10.in-addr.arpa.", "PTR", "10-244-1-3.db.default.svc.cluster.local.") in records
    assert not any(r.name.startswith("10-244-2-3.db.") for r in records)
    published = _records([_service("db", clusterIP="None", selector={"app": "db"}, publishNotReadyAddresses=True,
                                   ports=[{"name": "http", "port": 80, "targetPort": "http"}])], pods)
    assert {r.data for r in published if r.name == "db.default.svc.cluster.local."} == {"10.244.1.3", "10.244.2.3"}


def test_a_headless_service_without_endpoints_has_no_name():
    assert not [r for r in _records([_service("db", clusterIP="None", selector={"app": "db"})], [])
                if ".svc." in r.name]


# -- the server's answers ----------------------------------------------------------------------------

ZONE = Zone("cluster.local", [r.as_list() for r in sorted(_records(
    [_service("web", clusterIP="10.96.0.5", selector={"app": "web"},
              ports=[{"name": "http", "port": 80, "targetPort": "http"}]),
     _service("many", clusterIP="None", selector={"app": "many"}, ports=[{"name": "http", "port": 80}])],
    [_pod(f"many-{i}", f"10.244.3.{i}", {"app": "many"}) for i in range(2, 100)]))], 42)


def ask(name: str, rdtype: str = "A", zone: Zone | None = ZONE, max_size: int | None = None,
        **kwargs) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kwargs)
    return dns.message.from_wire(answer(zone, query.to_wire(), max_size))


def test_a_service_name_is_answered_authoritatively_with_ttl_5():
    response = ask("web.default.svc.cluster.local")
    assert response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AA
    assert [(rrset.ttl, [r.to_text() for r in rrset]) for rrset in response.answer] == [(5, ["10.96.0.5"])]


def test_names_are_case_insensitive_and_answered_as_asked():
    response = ask("WEB.Default.svc.cluster.local")
    assert response.answer[0].name.to_text() == "WEB.Default.svc.cluster.local."
    assert response.answer[0][0].to_text() == "10.96.0.5"


def test_a_missing_name_is_nxdomain_with_the_soa():
    response = ask("nothere.default.svc.cluster.local")
    assert response.rcode() == dns.rcode.NXDOMAIN and not response.answer
    soa = response.authority[0]
    assert soa.rdtype == dns.rdatatype.SOA and soa.name.to_text() == "cluster.local." and soa[0].serial == 42
    assert ask("9.9.9.9.in-addr.arpa", "PTR").rcode() == dns.rcode.NXDOMAIN


def test_an_existing_name_of_another_type_and_an_empty_non_terminal_are_noerror_without_answer():
    for name, rdtype in (("web.default.svc.cluster.local", "AAAA"), ("svc.cluster.local", "A"),
                         ("default.svc.cluster.local", "A")):
        response = ask(name, rdtype)
        assert response.rcode() == dns.rcode.NOERROR and not response.answer and response.authority, name


def test_srv_ptr_soa_and_any():
    assert ask("_http._tcp.web.default.svc.cluster.local", "SRV").answer[0][0].to_text() == \
        "0 100 80 web.default.svc.cluster.local."
    assert ask("5.0.96.10.in-addr.arpa", "PTR").answer[0][0].to_text() == "web.default.svc.cluster.local."
    assert ask("cluster.local", "SOA").answer[0].rdtype == dns.rdatatype.SOA
    assert {r.rdtype for r in ask("cluster.local", "ANY").answer} == {dns.rdatatype.SOA, dns.rdatatype.NS}


def test_a_name_outside_the_zones_is_refused_there_is_no_upstream():
    response = ask("example.com")
    assert response.rcode() == dns.rcode.REFUSED and not response.flags & dns.flags.AA


def test_before_any_records_arrive_the_answer_is_servfail():
    assert ask("web.default.svc.cluster.local", zone=None).rcode() == dns.rcode.SERVFAIL


def test_a_large_answer_is_truncated_over_udp_and_whole_over_tcp():
    udp = ask("many.default.svc.cluster.local")
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = ask("many.default.svc.cluster.local", max_size=65535)
    assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == 98
    edns = ask("many.default.svc.cluster.local", use_edns=0, payload=4096)
    assert edns.flags & dns.flags.TC  # 98 addresses do not fit in our 1232 bytes either


def test_what_is_not_a_query_gets_no_answer_or_an_error():
    assert answer(ZONE, b"\x00\x01") is None  # shorter than a header
    garbage = answer(ZONE, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff")
    assert garbage is not None and garbage[:2] == b"\x12\x34" and garbage[3] & 0x0F == dns.rcode.FORMERR
    response = dns.message.make_response(dns.message.make_query("web.default.svc.cluster.local", "A"))
    assert answer(ZONE, response.to_wire()) is None  # never answer an answer
    notify = dns.message.make_query("cluster.local", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert dns.message.from_wire(answer(ZONE, notify.to_wire())).rcode() == dns.rcode.NOTIMP


@pytest.mark.parametrize(("request_", "message"), [
    ({"domain": "cluster.local", "records": "x", "serial": 1}, "records must be a list"),
    ({"domain": "", "records": [], "serial": 1}, "domain must be a non-empty string"),
    ({"domain": "cluster.local", "records": [], "serial": -1}, "serial must be a whole number"),
    ({"domain": "cluster.local", "records": [["a.cluster.local.", "A"]], "serial": 1}, r"records\[0\] must be"),
    ({"domain": "cluster.local", "records": [["a.cluster.local.", "BOGUS", "x"]], "serial": 1}, r"records\[0\]"),
    ({"domain": "cluster.local", "records": [["a.cluster.local.", "A", "10.0.0"]], "serial": 1}, "a.cluster.local."),
    ({"domain": "cluster.local", "records": [["example.com.", "A", "10.0.0.1"]], "serial": 1},
     "is outside the zones"),
])
def test_a_bad_zone_request_is_refused_by_field(request_, message):
    with pytest.raises(AgentError, match=message):
        parse_zone(request_)


# -- the add-on and the control plane ----------------------------------------------------------------


def test_only_coredns_images_run_the_dns_server():
    assert runs_cluster_dns({"containers": [{"name": "c", "image": "registry.k8s.io/coredns/coredns:v1.11.3"}]})
    assert runs_cluster_dns({"containers": [{"name": "c", "image": "coredns/coredns@sha256:abc"}]})
    assert not runs_cluster_dns({"containers": [{"name": "c", "image": "nginx"}, {"name": "d"}]})
    assert not runs_cluster_dns({"containers": [{"name": "c", "image": "example.com/coredns-helper:1"}]})


def test_the_addon_is_kubeadms_shape():
    deployment, service = addon_documents(build_spec())
    assert (deployment["metadata"]["namespace"], deployment["spec"]["replicas"]) == ("kube-system", 2)
    assert service["metadata"]["labels"] == {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
    assert service["spec"]["clusterIP"] == "10.96.0.10"
    assert parse_service_document(service, "addon").to_document()["metadata"]["labels"]["k8s-app"] == "kube-dns"


@pytest.fixture
def manager(tmp_path):
    manager = ClusterManager(Store(str(tmp_path)), FakeRuntime())
    manager.up(build_spec(name="lab", nodes=2))
    yield manager
    manager.store.close()


def test_up_runs_coredns_on_two_nodes_behind_kube_dns_and_pushes_the_records(manager):
    runtime = manager.runtime
    coredns = manager.pods("lab", "kube-system")
    assert len(coredns) == 2 and {p["spec"]["nodeName"] for p in coredns} == {"node-1", "node-2"}
    keys = [f"pod/kube-system/{p['metadata']['name']}" for p in coredns]
    assert all(runtime.agents.dns_ports[k] == [(53, "UDP"), (53, "TCP")] for k in keys)
    assert all(runtime.agents.served[k][1] == [(53, "TCP"), (53, "UDP"), (8080, "TCP"), (8080, "UDP")] for k in keys)
    domain, records = runtime.agents.zone
    assert domain == "cluster.local" and ["kube-dns.kube-system.svc.cluster.local.", "A", "10.96.0.10"] in records
    assert not runtime.files  # coredns pods have dnsPolicy Default: the node's own file


def test_a_pod_gets_its_resolv_conf_recorded_first_and_removed_with_it(manager):
    manager.apply("lab", [parse_document({"kind": "Pod", "metadata": {"name": "client"},
                                          "spec": {"containers": [{"name": "c"}]}}, "test")])
    directory = "/etc/netns/lab.pod.default.client"
    assert manager.runtime.files[directory + "/resolv.conf"].startswith(
        "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\n")
    assert directory in manager.store.owned("lab", PATH)
    assert ["10-244-0-3.default.pod.cluster.local.", "A", "10.244.0.3"] in manager.runtime.agents.zone[1]
    manager.delete_pod("lab", "default", "client")
    assert directory not in manager.store.owned("lab", PATH) and not manager.runtime.files
    assert not any(r[0].endswith(".default.pod.cluster.local.") for r in manager.runtime.agents.zone[1])


def test_a_service_asking_for_the_dns_address_is_told_who_holds_it(manager):
    service = parse_service_document({"kind": "Service", "metadata": {"name": "mine"},
                                      "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}}, "mine.yaml")
    with pytest.raises(InvalidInput, match=r'^mine.yaml: Service "mine": spec.clusterIP 10.96.0.10 is already '
                                           r"allocated \(by Service kube-system/kube-dns\)$"):
        manager.apply("lab", [service])


# -- the agent's ops and verify's DNS rule -----------------------------------------------------------


def test_the_agent_takes_a_zone_and_checks_dns_ports_before_any_socket_opens():
    import asyncio

    from overlaynet.agent.server import Agent

    async def scenario():
        agent = Agent("lab", "/nonexistent.sock", lambda *args: None)
        reply = await agent.handle({"op": "dns_zone", "domain": "cluster.local", "serial": 7,
                                    "records": [["web.default.svc.cluster.local.", "A", "10.96.0.5"]]})
        assert reply == {"records": 1} and agent.dns_zone is not None and agent.dns_zone.serial == 7
        with pytest.raises(AgentError, match=r'key "pod/kube-system/coredns-1": dnsPorts 53/TCP are not among its ports'):
            await agent.handle({"op": "serve", "key": "pod/kube-system/coredns-1", "netns": "lab.pod.x",
                                "hostname": "coredns-1", "ports": [[53, "UDP"]], "dnsPorts": [[53, "TCP"]]})
        with pytest.raises(AgentError, match=r"dnsPorts\[0\]: protocol 'SCTP'"):
            await agent.handle({"op": "serve", "key": "pod/a/b", "netns": "lab.pod.x", "hostname": "b",
                                "ports": [[53, "UDP"]], "dnsPorts": [[53, "SCTP"]]})
        assert agent.keys == {}

    asyncio.run(scenario())


def test_dns_probes_are_parsed_with_their_name():
    from overlaynet.agent.reachability import parse_probes

    probes, _ = parse_probes([{"id": 1, "netns": "lab.pod.default.c", "dst": "10.96.0.10", "port": 53,
                               "protocol": "dns", "name": "web.default.svc.cluster.local"}], 2.0)
    assert (probes[0].protocol, probes[0].name, probes[0].port) == ("dns", "web.default.svc.cluster.local", 53)
    with pytest.raises(InvalidInput, match="probe 0: name '' must be a domain name"):
        parse_probes([{"netns": "n", "dst": "10.96.0.10", "port": 53, "protocol": "dns"}], 2.0)


def test_verify_asks_from_one_pod_per_node_and_judges_names_and_nxdomain():
    from overlaynet.tools.verify import OK, Endpoint, judge_dns, plan_dns_probes

    pods = [Endpoint("pod", "kube-system/coredns-1", "lab.pod.kube-system.coredns-1", "10.244.0.2", "node-1"),
            Endpoint("pod", "default/client", "lab.pod.default.client", "10.244.0.3", "node-1"),
            Endpoint("pod", "default/web", "lab.pod.default.web", "10.244.1.2", "node-2")]
    expected = {"web.default.svc.cluster.local": "10.96.0.5"}
    probes, index = plan_dns_probes(expected, "no-such-service-0.default.svc.cluster.local", pods, "10.96.0.10", 100)
    assert [(p["id"], p["netns"], p["name"]) for p in probes] == [
        (100, "lab.pod.default.client", "web.default.svc.cluster.local"),
        (101, "lab.pod.default.client", "no-such-service-0.default.svc.cluster.local"),
        (102, "lab.pod.default.web", "web.default.svc.cluster.local"),
        (103, "lab.pod.default.web", "no-such-service-0.default.svc.cluster.local")]
    checks = judge_dns(index, [
        {"id": 100, "ok": True, "rcode": "NOERROR", "answer": "10.96.0.5"},
        {"id": 101, "ok": True, "rcode": "NXDOMAIN", "answer": ""},
        {"id": 102, "ok": True, "rcode": "NOERROR", "answer": "10.96.0.6"},
        {"id": 103, "ok": False, "error": "connection refused"}])
    assert [c.status == OK for c in checks] == [True, True, False, False]
    assert checks[2].error == "answered 10.96.0.6, expected 10.96.0.5"
    assert checks[3].describe().endswith("dns: connection refused")


def test_the_agent_and_the_records_agree_on_the_ttl_and_the_reverse_zone():
    from overlaynet.agent import dnsserver
    from overlaynet.control import dns_records

    assert (dnsserver.TTL, dnsserver.REVERSE_ZONE) == (dns_records.TTL, dns_records.REVERSE_ZONE)
