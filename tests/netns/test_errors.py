"""Bad input through the real CLI: one clear line naming the object and field, a non-zero
exit, no traceback, and nothing half-built."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.netns.clusters import Cli, namespaces_of, pod, short_state_dir, write_manifest


@pytest.fixture
def cli():
    state = short_state_dir()
    instance = Cli(state)
    yield instance
    instance.down_quietly("bad")
    shutil.rmtree(state, ignore_errors=True)


def assert_clean_error(result, *words: str, code: int | None = None) -> None:
    assert result.returncode != 0
    if code is not None:
        assert result.returncode == code
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("flags, words", [
    (["--cluster-cidr", "10.244.0.0/33"], ['cluster "bad"', "clusterCIDR '10.244.0.0/33'", "not a valid CIDR"]),
    (["--service-cidr", "10.244.0.0/20"], ["clusterCIDR 10.244.0.0/16 overlaps serviceCIDR 10.244.0.0/20"]),
    (["--node-cidr-mask-size", "8"], ["nodeCIDRMaskSize /8 is shorter than clusterCIDR"]),
    (["--node-cidr-mask-size", "31"], ["nodeCIDRMaskSize /31 leaves no address for a pod"]),
    (["--nodes", "5", "--cluster-cidr", "10.244.0.0/23"], ["5 nodes need 5 pod CIDRs", "holds only 2"]),
    (["--cni", "weave"], ['cni "weave" is not a known CNI mode']),
])
def test_bad_up_flags(cli, flags, words):
    assert_clean_error(cli.run("up", "--name", "bad", *flags, check=False), *words)
    assert namespaces_of("bad") == []
    assert "bad" not in cli.run("get", "clusters", check=False).stdout


def test_range_overlapping_the_host_network(cli):
    from overlaynet.kernel import observe

    host = observe.host_networks()[0]
    result = cli.run("up", "--name", "bad", "--node-network", str(host), check=False)
    assert_clean_error(result, f"nodeNetwork {host} overlaps the host's network {host}")
    assert namespaces_of("bad") == []


def test_bad_cluster_name(cli):
    assert_clean_error(cli.run("up", "--name", "Bad_Name", check=False), 'cluster "Bad_Name"', "DNS-1123")


def test_up_of_an_existing_cluster(cli):
    cli.run("up", "--name", "bad", "--nodes", "1", "--no-dns")
    assert_clean_error(cli.run("up", "--name", "bad", check=False), 'cluster "bad" already exists')
    assert len(namespaces_of("bad")) == 3  # underlay, external client, node-1


def test_apply_with_no_cluster(cli, tmp_path):
    manifest = write_manifest(str(tmp_path), "p.yaml", [pod("p")])
    assert_clean_error(cli.run("apply", "-f", manifest, check=False), "no cluster exists")
    assert_clean_error(cli.run("apply", "-f", manifest, "--name", "ghost", check=False), 'cluster "ghost" does not exist')


def test_bad_manifests_change_nothing(cli, tmp_path):
    cli.run("up", "--name", "bad", "--nodes", "1", "--no-dns")
    malformed = tmp_path / "broken.yaml"
    malformed.write_text("kind: Pod\nmetadata:\n  name: [x\n")
    assert_clean_error(cli.run("apply", "-f", str(malformed), check=False), f"{malformed}:", "malformed YAML")
    unknown = write_manifest(str(tmp_path), "u.yaml", [pod("ok"), {"kind": "Gizmo", "metadata": {"name": "g"}}])
    assert_clean_error(cli.run("apply", "-f", unknown, check=False), 'kind "Gizmo" is not supported')
    bad_port = pod("web")
    bad_port["spec"]["containers"][0]["ports"] = [{"containerPort": 70000}]
    path = write_manifest(str(tmp_path), "b.yaml", [pod("first"), bad_port])
    assert_clean_error(cli.run("apply", "-f", path, check=False),
                       'Pod "web"', "spec.containers[0].ports[0].containerPort 70000 is out of range 1-65535")
    duplicate = write_manifest(str(tmp_path), "d.yaml", [pod("twin"), pod("twin")])
    assert_clean_error(cli.run("apply", "-f", duplicate, check=False), 'pod "twin": defined twice')
    assert cli.json("get", "pods", "--name", "bad")["items"] == []
    assert namespaces_of("bad") == ["bad.external", "bad.node.node-1", "bad.underlay"]


def test_not_root_names_the_missing_capabilities(cli):
    result = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin,-sys_admin",
                             sys.executable, "-m", "overlaynet", "up", "--name", "bad"],
                            capture_output=True, text=True, env=cli.env, cwd=cli.env["PYTHONPATH"])
    assert_clean_error(result, "CAP_SYS_ADMIN", "CAP_NET_ADMIN", "run it as root")
    assert namespaces_of("bad") == []


def test_unknown_objects(cli):
    cli.run("up", "--name", "bad", "--nodes", "1")
    assert_clean_error(cli.run("delete", "pod", "nope", "--name", "bad", check=False), 'pod "nope" not found')
    assert_clean_error(cli.run("describe", "node", "nope", "--name", "bad", check=False), 'node "nope" not found')
    assert_clean_error(cli.run("exec", "nope", "--name", "bad", "--", "true", check=False), 'pod "nope" not found')
    assert_clean_error(cli.run("delete", "node", "node-1", "--name", "bad", check=False), "last node")
    assert_clean_error(cli.run("add", "node", "node-1", "--name", "bad", check=False), 'node "node-1" already exists')
    assert_clean_error(cli.run("add", "node", "Node_2", "--name", "bad", check=False), 'node "Node_2"')


def test_kernel_without_vxlan_is_refused_before_anything_exists(cli, monkeypatch, capsys):
    """This kernel has VXLAN; the check is forced off to see the path a learner's VM may take."""
    from overlaynet.cli import main
    from overlaynet.kernel import apply

    monkeypatch.setenv("OVERLAYNET_STATE_DIR", cli.state_dir)
    monkeypatch.setattr(apply, "vxlan_supported", lambda: False)
    assert main(["up", "--name", "bad"]) != 0
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "no VXLAN support (CONFIG_VXLAN)" in error
    assert namespaces_of("bad") == []
