"""The CNI plugins' compiled front (cni_plugins/shim, built by scripts/setup into
cni_plugins/bin): the kubelet's CNI_PATH takes it first, and wherever it hands over to the
Python plugin — VERSION, a configuration without an agent, input it does not parse itself, a
socket nobody answers on — the answer is the Python plugin's, byte for byte. (Its fast path,
through the agent, is what every pod of every namespace test is wired by.)"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from overlaynet.cni import launch
from overlaynet.node import kubelet

PYTHON_DIR = launch.own_plugin_dir()


@pytest.fixture(scope="module")
def compiled() -> str:
    directory = launch.compiled_plugin_dir()
    assert directory, "scripts/setup builds cni_plugins/bin; run it (scripts/test does)"
    return directory


def run(executable: str, env: dict, stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([executable], input=stdin, env={"PATH": os.environ["PATH"], **env}, capture_output=True,
                          timeout=30, check=False, cwd="/")


def test_the_kubelet_execs_the_compiled_front_first(compiled):
    assert kubelet.cni_path()[:2] == [compiled, PYTHON_DIR]
    for plugin in launch.PLUGINS:
        assert os.path.realpath(os.path.join(compiled, plugin)) == os.path.join(compiled, launch.SHIM)


CASES = {
    "version": ({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}'),
    "no agent in the config": ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/nonexistent",
                                "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"},
                               b'{"cniVersion": "1.0.0", "name": "n", "type": "overlaynet-flannel"}'),
    "an agent socket nobody answers on": ({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0",
                                           "CNI_PATH": "/nonexistent"},
                                          (b'{"cniVersion": "0.4.0", "name": "n", "type": "overlaynet-ipam", '
                                          b'"agentSocket": "/nonexistent/agent.sock"}')),
    "an escaped socket path": ({"CNI_COMMAND": "CHECK", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0",
                                "CNI_NETNS": "/run/netns/nonexistent", "CNI_PATH": "/nonexistent"},
                               (b'{"cniVersion": "1.0.0", "name": "n", "type": "overlaynet-calico", '
                               b'"agentSocket": "/nonexistent/a\\u0067ent.sock"}')),
    "not UTF-8": ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/nonexistent",
                   "CNI_IFNAME": "eth0"}, b'{"cniVersion": "1.0.0", "name": "\xff", "agentSocket": "/x"}'),
    "not JSON": ({"CNI_COMMAND": "ADD"}, b"garbage"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("plugin", launch.PLUGINS)
def test_where_the_front_hands_over_the_answer_is_the_python_plugins(compiled, plugin, case):
    env, stdin = CASES[case]
    fast = run(os.path.join(compiled, plugin), env, stdin)
    python = run(os.path.join(PYTHON_DIR, plugin), env, stdin)
    assert (fast.returncode, fast.stdout) == (python.returncode, python.stdout)
    if fast.returncode:
        assert json.loads(fast.stdout)["code"] > 0
