"""NetworkPolicy's rendered chains: a golden file per mode, and every pair of the conformance
model traced through the rendered rules of its nodes, which must decide it exactly as
``policy.semantics`` does (the truth tables of tests/unit/test_netpol_semantics.py).

Regenerate the golden files after an intended change with
``OVERLAYNET_UPDATE_GOLDEN=1 pytest tests/golden``.
"""

from __future__ import annotations

import difflib
import os
import pathlib

import pytest

from overlaynet.policy.render import LocalPod, PolicyRuleset, render
from overlaynet.policy.semantics import PodEndpoint, allowed
from overlaynet.proxy.trace import Packet, Tracer, missing_targets
from tests.unit.netpol_model import SCENARIOS, model_view

HERE = pathlib.Path(__file__).parent
NODES = {"node-1": "172.20.0.11", "node-2": "172.20.0.12", "node-3": "172.20.0.13"}
UPLINK = {"vxlan": "flannel.1", "routed": "eth0"}


def interface(mode: str, pod: PodEndpoint) -> str:
    return f"{'veth' if mode == 'vxlan' else 'cali'}-{pod.namespace}-{pod.name}"


def rulesets(mode: str, view) -> dict[str, PolicyRuleset]:
    return {node: render(view, [LocalPod(p, interface(mode, p)) for p in view.pods if p.node == node],
                         bridged=mode == "vxlan") for node in NODES}


def traced_allowed(mode: str, rules: dict[str, PolicyRuleset], source: PodEndpoint, target: PodEndpoint,
                   port: int, protocol: str) -> bool:
    """Walk the first packet through the source node's rules, then the destination node's."""
    bridged = mode == "vxlan"
    src_if = "cni0" if bridged else interface(mode, source)
    dst_if = "cni0" if bridged else interface(mode, target)
    physdev = interface(mode, source) if bridged else None
    common = {"src": str(source.ip), "dst": str(target.ip), "dport": port, "proto": protocol.lower()}
    if source.node == target.node:
        hops = [(source.node, Packet(**common, in_interface=src_if, out_interface=dst_if, physdev_in=physdev))]
    else:
        hops = [(source.node, Packet(**common, in_interface=src_if, out_interface=UPLINK[mode], physdev_in=physdev)),
                (target.node, Packet(**common, in_interface=UPLINK[mode], out_interface=dst_if, origin="external"))]
    for node, packet in hops:
        ruleset = rules[node]
        verdicts = Tracer(ruleset.payload, ruleset.jumps, [NODES[node]]).trace(packet).verdicts
        if verdicts.get("DROP"):
            return False
    return True


@pytest.mark.parametrize("mode", ["vxlan", "routed"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_rules_decide_every_pair_as_the_api_does(mode, scenario):
    view = model_view(*SCENARIOS[scenario])
    rules = rulesets(mode, view)
    for ruleset in rules.values():
        assert missing_targets(ruleset.payload, ruleset.jumps) == []
    wrong = []
    for port in (80, 81):
        for protocol in ("TCP", "UDP"):
            for source in view.pods:
                for target in view.pods:
                    if source.key == target.key:
                        continue
                    expected = allowed(view, source, target, port, protocol)
                    if traced_allowed(mode, rules, source, target, port, protocol) != expected:
                        wrong.append(f"{source.key} -> {target.key} {port}/{protocol}: expected {expected}")
    assert wrong == []


def test_pod_egress_to_its_own_node_is_policed_in_input():
    view = model_view(*SCENARIOS["deny-egress"])
    ruleset = rulesets("routed", view)["node-1"]
    pod = next(p for p in view.pods if p.key == "x/a")
    packet = Packet(str(pod.ip), NODES["node-1"], 8080, in_interface=interface("routed", pod), out_interface="lo")
    result = Tracer(ruleset.payload, ruleset.jumps, [NODES["node-1"]]).trace(packet)
    assert result.verdicts == {"DROP": 1.0}
    assert "filter/cali-INPUT" in result.outcomes[0].path


def test_no_policy_renders_only_the_top_chains_and_deletes_stale_ones():
    ruleset = render(model_view(), [], bridged=True, existing_chains=["cali-FORWARD", "cali-tw-old", "KUBE-FORWARD"])
    assert ruleset.chains == ("cali-FORWARD", "cali-INPUT")
    assert "-X cali-tw-old" in ruleset.payload and "KUBE-FORWARD" not in ruleset.payload


@pytest.mark.parametrize("mode", ["vxlan", "routed"])
def test_golden(mode):
    view = model_view(*SCENARIOS["ip-block-except"], *SCENARIOS["ports-named-and-range"],
                      *SCENARIOS["egress-named-port"])
    rendered = rulesets(mode, view)["node-1"].payload
    path = HERE / f"netpol-{mode}-node-1.txt"
    if os.environ.get("OVERLAYNET_UPDATE_GOLDEN"):
        path.write_text(rendered)
    expected = path.read_text()
    assert rendered == expected, "\n".join(difflib.unified_diff(expected.splitlines(), rendered.splitlines(),
                                                                 "golden", "rendered", lineterm=""))
