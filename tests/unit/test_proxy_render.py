"""overlaynet.proxy.render: kube-proxy's rule text, bit-exact (reference/kube-proxy.md), and
partial sync, checked against a model of ``iptables-restore --noflush``."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlaynet.api.services import (
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    Service,
    ServicePort,
    SliceEndpoint,
)
from overlaynet.proxy import render as R
from overlaynet.proxy.rules import parse_tables

NODE = R.NodeConfig("node-1", ("172.20.0.11",), "10.244.0.0/16")


def service(name="web", port=ServicePort("http", 80, 8080), ip="10.96.100.10", namespace="default", **kwargs):
    return Service(namespace, name, (port,) if isinstance(port, ServicePort) else tuple(port), cluster_ip=ip,
                   selector=(("app", name),), **kwargs)


def ep(ip, node="node-2", ready=True, serving=None, terminating=None):
    return SliceEndpoint((ip,), EndpointConditions(ready, serving, terminating), node)


def slice_(svc, endpoints, port_name="http", port=8080, protocol="TCP", name=None):
    return EndpointSlice(svc.namespace, name or f"{svc.name}-abcde", svc.name,
                         (EndpointPort(port_name, port, protocol),), tuple(endpoints))


def lines(ruleset):
    return ruleset.payload.splitlines()


def chain_rules(ruleset, chain, table="nat"):
    return [r.text for r in parse_tables(ruleset.payload).chains[table].get(chain, [])]


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("args, chain", [
    (("ns1/svc1:p80", "tcp"), "KUBE-SVC-XPGD46QRK7WJZT7O"),
    (("kube-system/kube-dns:dns", "udp"), "KUBE-SVC-TCOU7JCQXEZGVUNU"),
    (("ns1/svc1", "tcp"), "KUBE-SVC-AQI2S6QIMU7PVVRP"),
    (("default/web:http", "tcp"), "KUBE-SVC-CDGGSHYLG3RE2FKL"),
])
def test_service_chain_hash_matches_kube_proxy(args, chain):
    assert R.svc_chain(*args) == chain
    suffix = chain[len("KUBE-SVC-"):]
    assert (R.svl_chain(*args), R.ext_chain(*args), R.fw_chain(*args)) == \
        ("KUBE-SVL-" + suffix, "KUBE-EXT-" + suffix, "KUBE-FW-" + suffix)


def test_every_declared_chain_fits_iptables_limit():
    web = service("web-" + "x" * 59, type="NodePort", port=ServicePort("http", 80, 8080, node_port=30080),
                  external_traffic_policy="Local", session_affinity="ClientIP")
    ruleset = R.render(NODE, [web], [slice_(web, [ep("10.244.1.5", node="node-1"), ep("10.244.2.7")])])
    declared = [line[1:].split()[0] for line in lines(ruleset) if line.startswith(":")]
    assert len(declared) > 10 and all(len(chain) <= R.CHAIN_NAME_MAX for chain in declared), declared


@pytest.mark.parametrize("args, chain", [
    (("ns1/svc1:p80", "tcp", "10.180.0.1:80"), "KUBE-SEP-SXIVWICOYRO3J4NJ"),
    (("default/web:http", "tcp", "10.244.1.5:8080"), "KUBE-SEP-AFGSLHOD2HFNCBX4"),
    (("default/web:http", "tcp", "10.244.2.7:8080"), "KUBE-SEP-2RIJ5GIYXEFH6G4D"),
])
def test_endpoint_chain_hash_matches_kube_proxy(args, chain):
    assert R.sep_chain(*args) == chain
    assert len(chain) <= R.CHAIN_NAME_MAX


@pytest.mark.parametrize("n, text", [(2, "0.5000000000"), (3, "0.3333333333"), (4, "0.2500000000"),
                                     (7, "0.1428571429"), (100001, "0.0000099999")])
def test_probability_format(n, text):
    assert R.probability(n) == text


def test_masquerade_mark_is_printed_as_go_does():
    assert R.masquerade_mark(14) == "0x00004000"
    assert R.masquerade_mark(0) == "0x00000001"


# --------------------------------------------------------------------------- full render


def test_reference_example_rules():
    """reference/kube-proxy.md §6, line for line (per chain, in order)."""
    svc = service()
    ruleset = R.render(NODE, [svc], [slice_(svc, [ep("10.244.1.5", "node-1"), ep("10.244.2.7")])])
    text = lines(ruleset)
    for chain_line in (":KUBE-SVC-CDGGSHYLG3RE2FKL - [0:0]", ":KUBE-SEP-AFGSLHOD2HFNCBX4 - [0:0]",
                       ":KUBE-SEP-2RIJ5GIYXEFH6G4D - [0:0]"):
        assert chain_line in text
    assert chain_rules(ruleset, "KUBE-SERVICES")[0] == (
        '-A KUBE-SERVICES -m comment --comment "default/web:http cluster IP" -m tcp -p tcp -d 10.96.100.10 --dport 80 '
        "-j KUBE-SVC-CDGGSHYLG3RE2FKL")
    assert chain_rules(ruleset, "KUBE-SVC-CDGGSHYLG3RE2FKL") == [
        '-A KUBE-SVC-CDGGSHYLG3RE2FKL -m comment --comment "default/web:http cluster IP" -m tcp -p tcp -d 10.96.100.10 '
        "--dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ",
        '-A KUBE-SVC-CDGGSHYLG3RE2FKL -m comment --comment "default/web:http -> 10.244.1.5:8080" -m statistic --mode '
        "random --probability 0.5000000000 -j KUBE-SEP-AFGSLHOD2HFNCBX4",
        '-A KUBE-SVC-CDGGSHYLG3RE2FKL -m comment --comment "default/web:http -> 10.244.2.7:8080" '
        "-j KUBE-SEP-2RIJ5GIYXEFH6G4D"]
    assert chain_rules(ruleset, "KUBE-SEP-AFGSLHOD2HFNCBX4") == [
        "-A KUBE-SEP-AFGSLHOD2HFNCBX4 -m comment --comment default/web:http -s 10.244.1.5 -j KUBE-MARK-MASQ",
        "-A KUBE-SEP-AFGSLHOD2HFNCBX4 -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination "
        "10.244.1.5:8080"]


def test_payload_layout():
    svc = service()
    text = R.render(NODE, [svc], [slice_(svc, [ep("10.244.1.5")])]).payload
    assert text.endswith("COMMIT\n") and "\n\n" not in text and "  " not in text and "#" not in text
    body = text.splitlines()
    assert body[:7] == ["*filter", ":KUBE-SERVICES - [0:0]", ":KUBE-EXTERNAL-SERVICES - [0:0]",
                        ":KUBE-FORWARD - [0:0]", ":KUBE-NODEPORTS - [0:0]", ":KUBE-PROXY-FIREWALL - [0:0]",
                        ":KUBE-FIREWALL - [0:0]"]
    nat = body[body.index("*nat"):]
    assert nat[1:5] == [":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]", ":KUBE-POSTROUTING - [0:0]",
                        ":KUBE-MARK-MASQ - [0:0]"]
    first_rule = next(i for i, line in enumerate(nat) if line.startswith("-"))
    assert nat[first_rule:first_rule + 4] == [
        "-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE '
        "--random-fully",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000"]
    assert nat[-2] == ('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the '
                       'last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    assert body[body.index("*nat") - 4:body.index("*nat")] == [
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x00004000/0x00004000 '
        "-j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate '
        "RELATED,ESTABLISHED -j ACCEPT",
        "COMMIT"]


def test_node_options_change_the_fixed_rules():
    svc = service()
    options = replace(NODE, localhost_nodeports=False, random_fully=False, conntrack_tcp_liberal=True,
                      masquerade_bit=15)
    text = R.render(options, [svc], [slice_(svc, [ep("10.244.1.5")])]).payload
    assert "KUBE-FIREWALL" not in text and "--ctstate INVALID" not in text and "--random-fully" not in text
    assert "-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS\n" in text
    assert "--or-mark 0x00008000" in text
    assert [j.target for j in R.jumps(options)].count("KUBE-FIREWALL") == 0
    assert [j.target for j in R.jumps(NODE)].count("KUBE-FIREWALL") == 2


def test_masquerade_all_and_no_cluster_cidr():
    svc = service()
    slices = [slice_(svc, [ep("10.244.1.5")])]
    masq_all = R.render(replace(NODE, masquerade_all=True), [svc], slices)
    assert chain_rules(masq_all, R.svc_chain("default/web:http", "tcp"))[0].endswith(
        "--dport 80 -j KUBE-MARK-MASQ")
    no_detector = R.render(replace(NODE, cluster_cidr=None), [svc], slices)
    svc_rules = chain_rules(no_detector, R.svc_chain("default/web:http", "tcp"))
    assert svc_rules and all("KUBE-MARK-MASQ" not in rule for rule in svc_rules)


def test_endpoints_are_sorted_as_strings_and_merged_across_slices():
    svc = service()
    slices = [slice_(svc, [ep("10.244.2.7"), ep("10.244.10.3")], name="web-b"),
              slice_(svc, [ep("10.244.2.7"), ep("10.244.1.1")], name="web-a")]
    rules = chain_rules(R.render(NODE, [svc], slices), R.svc_chain("default/web:http", "tcp"))[1:]
    assert [r.split('-> ')[1].split('"')[0] for r in rules] == ["10.244.1.1:8080", "10.244.10.3:8080",
                                                                "10.244.2.7:8080"]
    assert ["--probability" in r for r in rules] == [True, True, False]
    assert "0.3333333333" in rules[0] and "0.5000000000" in rules[1]


def test_usable_endpoints_ready_first_then_serving_terminating():
    svc = service()
    mixed = [ep("10.244.1.1"), ep("10.244.1.2", ready=False, serving=False),
             ep("10.244.1.3", ready=False, serving=True, terminating=True)]
    owners = R.render(NODE, [svc], [slice_(svc, mixed)]).chain_owners()
    assert sum(c.startswith("KUBE-SEP-") for c in owners) == 1
    draining = [ep("10.244.1.2", ready=False, serving=False), ep("10.244.1.3", ready=False, serving=True,
                                                                 terminating=True)]
    rules = chain_rules(R.render(NODE, [svc], [slice_(svc, draining)]), R.svc_chain("default/web:http", "tcp"))
    assert len(rules) == 2 and "10.244.1.3:8080" in rules[1]
    none_usable = R.render(NODE, [svc], [slice_(svc, [ep("10.244.1.2", ready=False, serving=False)])])
    assert '"default/web:http has no endpoints"' in none_usable.payload and "-j REJECT" in none_usable.payload
    assert not none_usable.chain_owners()


def test_slice_port_must_match_service_port_name_and_protocol():
    svc = service()
    ruleset = R.render(NODE, [svc], [slice_(svc, [ep("10.244.1.5")], port_name="other"),
                                     slice_(svc, [ep("10.244.1.6")], protocol="UDP", name="web-udp")])
    assert "has no endpoints" in ruleset.payload


def test_internal_traffic_policy_local():
    svc = service(internal_traffic_policy="Local")
    local = R.render(NODE, [svc], [slice_(svc, [ep("10.244.0.5", "node-1"), ep("10.244.1.5", "node-2")])])
    svl = R.svl_chain("default/web:http", "tcp")
    assert chain_rules(local, "KUBE-SERVICES")[0].endswith(f"-j {svl}")
    assert R.svc_chain("default/web:http", "tcp") not in local.chain_owners()
    assert len(chain_rules(local, svl)) == 2  # masquerade rule + the one local endpoint
    remote = R.render(NODE, [svc], [slice_(svc, [ep("10.244.1.5", "node-2")])])
    assert ('-A KUBE-SERVICES -m comment --comment "default/web:http has no local endpoints" -m tcp -p tcp '
            "-d 10.96.100.10 --dport 80 -j DROP") in lines(remote)
    assert not remote.chain_owners()


def test_external_traffic_policy_local_without_local_endpoints():
    svc = service(port=ServicePort("", 80, 8080, node_port=30081), type="NodePort", external_traffic_policy="Local")
    ruleset = R.render(NODE, [svc], [slice_(svc, [ep("10.244.1.5", "node-2")], port_name="")])
    ext = R.ext_chain("default/web", "tcp")
    assert [r.split("--comment ")[1].split('"')[1] if "--comment" in r else r for r in chain_rules(ruleset, ext)] == [
        "pod traffic for default/web external destinations",
        "masquerade LOCAL traffic for default/web external destinations",
        "route LOCAL traffic for default/web external destinations"]
    assert ('-A KUBE-EXTERNAL-SERVICES -m comment --comment "default/web has no local endpoints" -m addrtype '
            "--dst-type LOCAL -m tcp -p tcp --dport 30081 -j DROP") in lines(ruleset)
    assert "-A KUBE-NODEPORTS -m comment --comment default/web -m tcp -p tcp --dport 30081 -j " + ext in lines(ruleset)


def test_affinity_rules_precede_the_cascade():
    svc = service(session_affinity="ClientIP", affinity_timeout=600)
    ruleset = R.render(NODE, [svc], [slice_(svc, [ep("10.244.1.5"), ep("10.244.2.7")])])
    rules = chain_rules(ruleset, R.svc_chain("default/web:http", "tcp"))
    sep = R.sep_chain("default/web:http", "tcp", "10.244.1.5:8080")
    assert rules[1] == (f'-A KUBE-SVC-CDGGSHYLG3RE2FKL -m comment --comment "default/web:http -> 10.244.1.5:8080" '
                        f"-m recent --name {sep} --rcheck --seconds 600 --reap -j {sep}")
    assert "--probability 0.5000000000" in rules[3]
    assert chain_rules(ruleset, sep)[1] == (f"-A {sep} -m comment --comment default/web:http -m recent --name {sep} "
                                            "--set -m tcp -p tcp -j DNAT --to-destination 10.244.1.5:8080")


def test_headless_and_unallocated_services_get_nothing():
    headless = Service("default", "db", (ServicePort("", 5432, 5432),), cluster_ip="None")
    unallocated = replace(service(), cluster_ip=None)
    ruleset = R.render(NODE, [headless, unallocated], [slice_(headless, [ep("10.244.1.5")], port_name="", port=5432)])
    assert ruleset.payload == R.render(NODE, [], []).payload


def test_large_cluster_mode_drops_endpoint_comments():
    svc = service()
    endpoints = [ep(f"10.244.{i // 250}.{i % 250 + 1}") for i in range(1001)]
    ruleset = R.render(NODE, [svc], [slice_(svc, endpoints)])
    assert ruleset.large_cluster
    svc_rules = chain_rules(ruleset, R.svc_chain("default/web:http", "tcp"))
    assert "cluster IP" in svc_rules[0] and all("--comment" not in r for r in svc_rules[1:])
    sep = R.sep_chain("default/web:http", "tcp", "10.244.0.1:8080")
    assert chain_rules(ruleset, sep) == [f"-A {sep} -s 10.244.0.1 -j KUBE-MARK-MASQ",
                                         f"-A {sep} -m tcp -p tcp -j DNAT --to-destination 10.244.0.1:8080"]
    assert not R.render(NODE, [svc], [slice_(svc, endpoints[:1000])]).large_cluster


def test_jumps_in_kube_proxy_order():
    got = [(j.table, j.chain, j.target) for j in R.jumps(NODE)]
    assert got[:3] == [("filter", "INPUT", "KUBE-EXTERNAL-SERVICES"), ("filter", "FORWARD", "KUBE-EXTERNAL-SERVICES"),
                       ("filter", "INPUT", "KUBE-NODEPORTS")]
    assert got[-5:] == [("nat", "OUTPUT", "KUBE-SERVICES"), ("nat", "PREROUTING", "KUBE-SERVICES"),
                        ("nat", "POSTROUTING", "KUBE-POSTROUTING"), ("filter", "INPUT", "KUBE-FIREWALL"),
                        ("filter", "OUTPUT", "KUBE-FIREWALL")]
    assert R.jumps(NODE)[0].args == ("-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment",
                                     "kubernetes externally-visible service portals", "-j", "KUBE-EXTERNAL-SERVICES")


def test_render_10k_services_under_a_second():
    services, slices = [], []
    for i in range(10_000):
        svc = service(f"svc-{i}", ip=f"10.96.{i // 250}.{i % 250 + 2}")
        services.append(svc)
        slices.append(slice_(svc, [ep(f"10.{100 + i // 10000}.{i % 10000 // 100}.{(i % 100) * 2 + j}")
                                   for j in range(5)]))
    best = min(_timed(lambda: R.render(NODE, services, slices)) for _ in range(3))
    assert best < 1.0, f"10,000 services x 5 endpoints rendered in {best:.2f} s (target < 1 s)"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- partial sync


def apply(tables, payload):
    """What ``iptables-restore --noflush`` leaves, as parsed tables; every jump must resolve."""
    result = parse_tables(payload, base=tables)
    for table, chains in result.chains.items():
        for chain, rules in chains.items():
            for rule in rules:
                assert rule.target is None or rule.target.isupper() and (
                    rule.target in chains or rule.target in ("ACCEPT", "DROP", "REJECT", "RETURN", "DNAT",
                                                             "MASQUERADE", "MARK")), (table, chain, rule.target)
    return result


def kube_chains(tables):
    return {t: {c: [r.text for r in rules] for c, rules in chains.items()} for t, chains in tables.chains.items()}


def three_services():
    services = [service("a", ip="10.96.0.2"), service("b", ip="10.96.0.3"),
                service("c", ip="10.96.0.4", port=ServicePort("", 80, 8080, node_port=30000), type="NodePort")]
    slices = [slice_(services[0], [ep("10.244.1.1"), ep("10.244.1.2")]),
              slice_(services[1], [ep("10.244.2.1"), ep("10.244.2.2")]),
              slice_(services[2], [ep("10.244.3.1")], port_name="")]
    return services, slices


def test_partial_sync_rewrites_only_the_changed_service():
    services, slices = three_services()
    first = R.render(NODE, services, slices)
    slices[1] = slice_(services[1], [ep("10.244.2.1"), ep("10.244.2.3")])
    partial = R.render(NODE, services, slices, first, changed={"default/b"})
    assert not partial.full and partial.written == ("default/b",)
    declared = {line[1:].split()[0] for line in lines(partial) if line.startswith(":")}
    assert R.svc_chain("default/b:http", "tcp") in declared
    assert not declared & {R.svc_chain("default/a:http", "tcp"), R.svc_chain("default/c", "tcp")}
    old_sep = R.sep_chain("default/b:http", "tcp", "10.244.2.2:8080")
    assert partial.stale_chains == (old_sep,) and f"-X {old_sep}" in lines(partial)
    assert len(chain_rules(partial, "KUBE-SERVICES")) == 4  # every service's rule, and the nodeports rule
    assert R.render(NODE, services, slices, first).payload == partial.payload  # detected without `changed`
    kernel = apply(apply(parse_tables(""), first.payload), partial.payload)
    assert kube_chains(kernel) == kube_chains(apply(parse_tables(""), R.render(NODE, services, slices).payload))


def test_partial_sync_deletes_a_removed_service_and_adds_a_new_one():
    services, slices = three_services()
    first = R.render(NODE, services, slices)
    new = service("d", ip="10.96.0.5")
    partial = R.render(NODE, [services[0], services[2], new], [slices[0], slices[2], slice_(new, [ep("10.244.4.1")])],
                       first, changed={"default/b", "default/d"})
    assert partial.written == ("default/d",)
    assert set(partial.stale_chains) == {c for c, owner in first.chain_owners().items() if owner == "default/b:http"}


def test_minimal_partial_sync_leaves_unchanged_top_level_chains_alone():
    services, slices = three_services()
    first = R.render(NODE, services, slices)
    slices[1] = slice_(services[1], [ep("10.244.2.1"), ep("10.244.2.3")])
    minimal = R.render(NODE, services, slices, first, changed={"default/b"}, minimal=True)
    assert not minimal.top_level_written and minimal.payload.startswith("*nat\n")
    assert "*filter" not in minimal.payload and "KUBE-SERVICES" not in minimal.payload
    assert f"-X {R.sep_chain('default/b:http', 'tcp', '10.244.2.2:8080')}" in lines(minimal)
    assert R.render(NODE, services, slices, minimal, changed=set(), minimal=True).payload == ""  # nothing to do
    slices[1] = slice_(services[1], [])  # no endpoints: its KUBE-SERVICES rule becomes a REJECT
    emptied = R.render(NODE, services, slices, minimal, changed={"default/b"}, minimal=True)
    assert emptied.top_level_written and emptied.payload.startswith("*filter\n")


def test_a_changed_node_configuration_or_mode_forces_a_full_sync():
    services, slices = three_services()
    first = R.render(NODE, services, slices)
    assert R.render(replace(NODE, masquerade_all=True), services, slices, first).full
    assert R.render(NODE, services, slices, first, full=True).full
    assert not R.render(NODE, services, slices, first).full
    assert R.render(NODE, services, slices, first).written == ()


def test_existing_chains_from_the_kernel_are_cleaned_up():
    services, slices = three_services()
    ruleset = R.render(NODE, services, slices, existing_chains=["KUBE-SEP-LEFTOVER1234567", "KUBE-SERVICES",
                                                                 "MY-OWN-CHAIN"])
    assert ruleset.stale_chains == ("KUBE-SEP-LEFTOVER1234567",)


endpoint_sets = st.lists(st.tuples(st.integers(1, 6), st.sampled_from(["node-1", "node-2"]),
                                   st.sampled_from(["ready", "notready", "draining"])), max_size=4)
service_specs = st.tuples(st.sampled_from(["ClusterIP", "NodePort"]), st.sampled_from(["Cluster", "Local"]),
                          st.sampled_from(["Cluster", "Local"]), st.booleans(), endpoint_sets)


def build(specs):
    services, slices = [], []
    for index, spec in enumerate(specs):
        if spec is None:
            continue
        kind, etp, itp, affinity, endpoints = spec
        node_port = 30000 + index if kind == "NodePort" else None
        svc = Service("default", f"s{index}", (ServicePort("p", 80, 8080, node_port=node_port),),
                      type=kind, cluster_ip=f"10.96.0.{index + 2}", selector=(("app", "x"),),
                      session_affinity="ClientIP" if affinity else "None",
                      external_traffic_policy=etp if kind == "NodePort" else "Cluster", internal_traffic_policy=itp)
        services.append(svc)
        conditions = {"ready": (True, True, False), "notready": (False, False, False),
                      "draining": (False, True, True)}
        slices.append(slice_(svc, [ep(f"10.244.{index}.{host}", node, *conditions[state])
                                   for host, node, state in endpoints], port_name="p"))
    return services, slices


@settings(max_examples=150, deadline=None)
@given(before=st.lists(st.one_of(st.none(), service_specs), min_size=1, max_size=5), data=st.data())
def test_partial_sync_leaves_what_a_full_sync_would(before, data):
    """Apply a full render, then a partial one after random changes: the kernel (modelled by
    --noflush restore semantics) holds exactly what a full render of the new state gives."""
    after = [data.draw(st.one_of(st.just(spec), st.none(), service_specs)) for spec in before]
    old_services, old_slices = build(before)
    new_services, new_slices = build(after)
    first = R.render(NODE, old_services, old_slices)
    changed = {f"default/s{i}" for i, (a, b) in enumerate(zip(before, after)) if a != b}
    expected = kube_chains(apply(parse_tables(""), R.render(NODE, new_services, new_slices).payload))
    for hint in (changed, None):
        for minimal in (False, True):
            partial = R.render(NODE, new_services, new_slices, first, changed=hint, minimal=minimal)
            kernel = apply(apply(parse_tables(""), first.payload), partial.payload)
            assert kube_chains(kernel) == expected


def test_check_node_refuses_bad_configuration():
    from overlaynet.errors import InvalidInput

    assert R.check_node(NODE) is NODE
    with pytest.raises(InvalidInput, match=r'^node "node-1": kube-proxy: .*10.244.0.0/33'):
        R.check_node(replace(NODE, cluster_cidr="10.244.0.0/33"))
    with pytest.raises(InvalidInput, match=r"masquerade bit 32 is out of range 0-31"):
        R.check_node(replace(NODE, masquerade_bit=32))


def test_a_node_config_is_checked_when_it_is_made():
    from overlaynet.errors import InvalidInput

    with pytest.raises(InvalidInput, match=r'^node "node-1": kube-proxy: node IP "172.20.0.300" is not an IPv4'):
        R.NodeConfig("node-1", ("172.20.0.300",), "10.244.0.0/16")
    with pytest.raises(InvalidInput, match=r"cluster CIDR \"10.244.0.1/16\" is not an IPv4 network"):
        R.NodeConfig("node-1", ("172.20.0.11",), "10.244.0.1/16")
    with pytest.raises(InvalidInput, match=r"masquerade bit -1 is out of range 0-31"):
        R.NodeConfig("node-1", masquerade_bit=-1)
