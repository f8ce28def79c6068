"""overlaynet.proxy.trace: the jump-target check and the tracer's semantics."""

import pytest

from overlaynet.proxy import render as R
from overlaynet.errors import RuleError
from overlaynet.proxy.trace import Packet, Tracer, missing_targets


def test_missing_targets():
    good = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-X - [0:0]\n-A KUBE-SERVICES -j KUBE-SVC-X\n-A KUBE-SVC-X -j DNAT " \
           "--to-destination 1.2.3.4:80\nCOMMIT\n"
    assert missing_targets(good) == []
    broken = good.replace(":KUBE-SVC-X - [0:0]\n", "").replace("-A KUBE-SVC-X -j DNAT --to-destination 1.2.3.4:80\n",
                                                               "")
    assert missing_targets(broken) == ["nat: KUBE-SERVICES -> KUBE-SVC-X"]
    assert missing_targets(broken, existing={"nat": ["KUBE-SVC-X"]}) == []
    jump = R.Jump("nat", "PREROUTING", "KUBE-NOPE", ("-j", "KUBE-NOPE"))
    assert missing_targets(good, [jump]) == ["nat: PREROUTING (jump) -> KUBE-NOPE"]


# --------------------------------------------------------------------------- tracer semantics


def tracer(payload, local=("172.20.0.11",)):
    return Tracer(payload, R.jumps(R.NodeConfig("n")), local)


def test_tracer_gives_exact_cascade_probabilities():
    payload = ("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:S - [0:0]\n"
               + "".join(f":E{i} - [0:0]\n-A E{i} -j DNAT --to-destination 10.0.0.{i}:80\n" for i in range(4))
               + "-A KUBE-SERVICES -d 10.96.0.1 -p tcp -m tcp --dport 80 -j S\n"
               + "".join(f"-A S -m statistic --mode random --probability {R.probability(4 - i)} -j E{i}\n"
                         for i in range(3)) + "-A S -j E3\nCOMMIT\n"
               + "*filter\n:KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-FORWARD - [0:0]\n"
                 ":KUBE-NODEPORTS - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n:KUBE-FIREWALL - [0:0]\nCOMMIT\n")
    result = tracer(payload).trace(Packet("10.244.0.9", "10.96.0.1", 80))
    assert result.destinations == {f"10.0.0.{i}:80": pytest.approx(0.25, abs=1e-9) for i in range(4)}
    assert sum(o.probability for o in result.outcomes) == pytest.approx(1.0)


def test_tracer_refuses_what_it_cannot_trace():
    payload = ("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n-A KUBE-SERVICES -m owner --uid-owner 0 "
               "-j ACCEPT\nCOMMIT\n*filter\n:KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n"
               ":KUBE-FORWARD - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n"
               ":KUBE-FIREWALL - [0:0]\nCOMMIT\n")
    with pytest.raises(RuleError, match="match owner is not traced"):
        tracer(payload).trace(Packet("10.244.0.9", "10.96.0.1", 80))
    missing = "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j KUBE-GONE\nCOMMIT\n"
    with pytest.raises(RuleError, match="KUBE-GONE, which does not exist"):
        Tracer(missing, [R.Jump("nat", "PREROUTING", "KUBE-SERVICES", ("-j", "KUBE-SERVICES"))]).trace(
            Packet("1.1.1.1", "2.2.2.2", 1))


def test_localhost_nodeport_from_outside_is_dropped_by_the_martian_rule():
    node = R.NodeConfig("node-1", ("172.20.0.11",), "10.244.0.0/16")
    ruleset = R.render(node, [], [])
    result = Tracer(ruleset.payload, ruleset.jumps, node.ips).trace(Packet("172.20.0.100", "127.0.0.1", 30080,
                                                                           origin="external"))
    assert result.only().verdict == "DROP"
