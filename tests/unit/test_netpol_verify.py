"""verify with NetworkPolicies: expected denies are their own state, wrong connections fail."""

from __future__ import annotations

from overlaynet.tools.verify import DENIED, FAIL, OK, POLICY, Check, Endpoint, Report, matrix
from overlaynet.tools.verify_policy import judge_policies
from tests.unit.netpol_model import SCENARIOS, model_view


def endpoint(view, key: str) -> Endpoint:
    pod = next(p for p in view.pods if p.key == key)
    return Endpoint("pod", key, f"c.pod.{key.replace('/', '.')}", str(pod.ip), pod.node)


def test_expected_denies_pass_and_wrong_connections_fail():
    view = model_view(*SCENARIOS["deny-ingress"])
    ya, xa, xb = endpoint(view, "y/a"), endpoint(view, "x/a"), endpoint(view, "x/b")
    node1 = Endpoint("node", "node-1", "c.node.node-1", "172.20.0.11", "node-1")
    node2 = Endpoint("node", "node-2", "c.node.node-2", "172.20.0.12", "node-2")
    checks = [
        Check("pod-pod", ya, xa, "tcp", FAIL, ya.ip, None, "timed out"),      # denied, blocked: expected
        Check("pod-pod", ya, xb, "udp", OK, ya.ip, ya.ip),                    # denied, but connected
        Check("pod-pod", xa, ya, "tcp", FAIL, xa.ip, None, "timed out"),      # allowed, failed: a failure
        Check("node-pod", node1, xa, "tcp", OK, "10.244.0.1", "10.244.0.1"),  # own node: always allowed
        Check("node-pod", node2, xa, "icmp", FAIL, "10.244.1.0", None, "no reply"),  # another node: denied
        Check("svc-endpoints", ya, Endpoint("service", "x/web:http", "", "10.96.0.10:80", ""), "tcp", FAIL,
              "any", None, "timed out"),
    ]
    report = Report(list(checks))
    judge_policies(report, view, {"x/web:http": {"x/a"}})
    assert [c.status for c in report.checks] == [DENIED, FAIL, FAIL, OK, DENIED, POLICY]
    assert report.checks[1].error == "connected, but NetworkPolicy denies it"
    assert next(c.describe() for c in report.failures).endswith("connected, but NetworkPolicy denies it")
    _header, rows = matrix(Report([report.checks[0]]), [ya, xa])
    assert rows[0] == ["a", "-", "x"]


def test_the_jump_moves_put_the_policy_jumps_back_on_top():
    from overlaynet.policy.render import render
    from overlaynet.proxy.rules import parse_rule, parse_tables

    ruleset = render(model_view(), [], bridged=True)
    tables = parse_tables(ruleset.payload)
    tables.table("filter").update({"FORWARD": [parse_rule(j.rule) for j in ruleset.jumps if j.chain == "FORWARD"],
                                   "INPUT": [parse_rule(j.rule) for j in ruleset.jumps if j.chain == "INPUT"]})
    kube = parse_rule('-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD')
    tables.table("filter")["FORWARD"].insert(0, kube)
    parse_tables(ruleset.moves, tables)
    assert [r.target for r in tables.table("filter")["FORWARD"]] == ["cali-FORWARD", "KUBE-FORWARD"]


def test_comments_of_long_names_fit_xt_comment():
    from overlaynet.policy.render import COMMENT_MAX, LocalPod, render
    from overlaynet.proxy.rules import parse_tables
    from tests.unit.netpol_model import policy

    long_name = "p" * 250
    view = model_view(policy(long_name, "x", "  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]"))
    ruleset = render(view, [LocalPod(p, f"veth{p.name}") for p in view.pods if p.key == "x/a"], bridged=True)
    comments = [r.comment for rules in parse_tables(ruleset.payload).table("filter").values() for r in rules]
    assert comments and all(c is None or len(c) < COMMENT_MAX for c in comments)
    assert any(c and c.endswith("...") for c in comments)
