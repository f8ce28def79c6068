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
