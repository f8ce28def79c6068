"""``overlaynet render`` needs neither root nor a cluster: the rules come from the manifests."""

import pathlib

from overlaynet.cli import main
from overlaynet.proxy.render import svc_chain

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"""


def test_render_prints_the_nodes_rules(tmp_path, capsys):
    service = tmp_path / "svc.yaml"
    service.write_text(SERVICE)
    code = main(["render", "-f", str(EXAMPLES / "cluster.yaml"), "-f", str(EXAMPLES / "web.yaml"),
                 "-f", str(service), "--node", "node-2"])
    out = capsys.readouterr().out
    assert code == 0
    chain = svc_chain("default/web:http", "tcp")
    assert f"-j {chain}" in out and '"default/web:http cluster IP"' in out
    web_endpoints = [line for line in out.splitlines() if line.startswith(f"-A {chain} ") and "-j KUBE-SEP-" in line]
    assert len(web_endpoints) == 6  # six web replicas behind it
    assert "*filter" in out and "COMMIT" in out


def test_render_of_an_unknown_node(capsys):
    assert main(["render", "-f", str(EXAMPLES / "web.yaml"), "--node", "node-9"]) != 0
    assert 'node "node-9" is not in cluster' in capsys.readouterr().err
