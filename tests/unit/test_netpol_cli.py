"""``netpol table -f`` and ``render`` with NetworkPolicies: from files alone, no root, no cluster.
The lab's manifests are the input, so the table a learner reads there is checked here too."""

from __future__ import annotations

import json
import pathlib

from overlaynet.cli import main

LAB = pathlib.Path(__file__).resolve().parents[2] / "labs" / "14-network-policy"


def files(*names: str) -> list[str]:
    return [arg for name in names for arg in ("-f", str(LAB / name))]


def test_offline_table_of_the_lab(capsys):
    code = main(["netpol", "table", *files("cluster.yaml", "apps.yaml", "default-deny.yaml", "allow-frontend.yaml"),
                 "-o", "json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["cluster"] == "lab14"
    denied = {(p["from"], p["to"]) for p in report["pairs"] if not p["allowed"]}
    assert denied == {("shop/api", "shop/db"), ("shop/db", "shop/api"), ("web/frontend", "shop/db"),
                      ("web/other", "shop/api"), ("web/other", "shop/db")}
    code = main(["netpol", "table", *files("cluster.yaml", "apps.yaml", "allow-frontend.yaml"),
                 "--protocol", "UDP"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("UDP/8080:") and "web/frontend  x" in out


def test_offline_table_refuses_probe(capsys):
    assert main(["netpol", "table", *files("apps.yaml"), "--probe"]) == 2
    assert "--probe and --name need a cluster" in capsys.readouterr().err


def test_render_adds_the_policy_chains(capsys):
    code = main(["render", *files("cluster.yaml", "apps.yaml", "default-deny.yaml", "allow-frontend.yaml"),
                 "--node", "node-1", "--table", "filter"])
    out = capsys.readouterr().out
    assert code == 0
    assert '"shop/allow-frontend ingress[0] from[0] web/frontend ports[0]"' in out
    assert "-I FORWARD 1 -m comment" in out


EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def test_a_conformance_case_from_its_files(tmp_path, capsys):
    """examples/netpol-model.yaml is the upstream model; a case file gives its truth table."""
    from tests.unit.netpol_model import SCENARIOS, Reachability

    case = tmp_path / "case.yaml"
    case.write_text("---\n".join(SCENARIOS["pod-and-namespace-selector"]))
    code = main(["netpol", "table", "-f", str(EXAMPLES / "netpol-model.yaml"), "-f", str(case), "--port", "80",
                 "-o", "json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and len(report["pairs"]) == 9 * 8
    expected = Reachability(True).all_ingress("x/a", False).expect("y/b", "x/a", True).expect("z/b", "x/a", True)
    assert {(p["from"], p["to"]): p["allowed"] for p in report["pairs"]} == {
        pair: value for pair, value in expected.expected.items() if pair[0] != pair[1]}
    main(["netpol", "table", "-f", str(EXAMPLES / "netpol-model.yaml"),
          "-f", str(EXAMPLES / "netpol-deny-ingress-x.yaml"), "--port", "80"])
    assert "x/a          -      x      x      ✓" in capsys.readouterr().out
