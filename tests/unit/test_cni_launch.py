"""The plugin executables find the Python overlaynet is installed in (overlaynet/cni/launch.py):
from a checkout under any python3, installed elsewhere with `overlaynet cni install`, and with
a CNI error that says how to fix it when they cannot (no root; real processes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from overlaynet.cni import launch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VERSION_REQUEST = json.dumps({"cniVersion": "1.0.0"}).encode()
# an ADD that gets as far as the kernel side: the plugin code must import pyroute2 for it
ADD_CONF = {"cniVersion": "1.0.0", "name": "podnet", "type": "overlaynet-ipam",
            "ipam": {"type": "overlaynet-ipam", "subnet": "10.1.0.0/24"}}
ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1", "CNI_NETNS": "/proc/self/ns/net",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}


def run(argv: list[str], env: dict[str, str], stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=60, cwd="/")


def error_of(proc: subprocess.CompletedProcess) -> dict:
    """The CNI error document on stdout; never a traceback anywhere."""
    assert proc.returncode == 1, proc
    assert b"Traceback" not in proc.stdout + proc.stderr, proc.stderr.decode()
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A Python without overlaynet's dependencies, as /usr/bin/python3 is on plain Debian 12."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return str(venv / "bin" / "python")


def checkout_without_venv(tmp_path) -> str:
    """A checkout as a host with a good python3 has it (no .venv); its overlaynet-ipam."""
    os.makedirs(tmp_path / "cni_plugins")
    shutil.copy(os.path.join(REPO, "cni_plugins", "overlaynet-ipam"), tmp_path / "cni_plugins")
    os.symlink(os.path.join(REPO, "overlaynet"), tmp_path / "overlaynet")
    return str(tmp_path / "cni_plugins" / "overlaynet-ipam")


def test_a_checkout_plugin_started_by_a_python_without_dependencies_says_how_to_fix_it(bare_python, tmp_path):
    plugin = checkout_without_venv(tmp_path)
    proc = run([bare_python, "-S", plugin], {**ADD_ENV, "PATH": os.defpath}, json.dumps(ADD_CONF).encode())
    error = error_of(proc)
    assert error["code"] == 999
    assert error["msg"] == f"overlaynet-ipam: the Python at {bare_python} cannot import pyroute2, which overlaynet needs"
    assert "scripts/setup" in error["details"] and "overlaynet cni install --dir DIR" in error["details"]


def test_overlaynet_python_makes_a_checkout_plugin_re_execute_under_it(bare_python, tmp_path):
    plugin = checkout_without_venv(tmp_path / "checkout")
    env = {**ADD_ENV, "PATH": os.defpath, launch.PYTHON_ENV: sys.executable}
    conf = {**ADD_CONF, "ipam": {**ADD_CONF["ipam"], "dataDir": str(tmp_path / "ipam")}}
    proc = run([bare_python, "-S", plugin], env, json.dumps(conf).encode())
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert json.loads(proc.stdout)["ips"][0]["address"] == "10.1.0.2/24"


def test_a_missing_overlaynet_python_is_the_plugins_error():
    plugin = os.path.join(REPO, "cni_plugins", "overlaynet-flannel")
    env = {"CNI_COMMAND": "VERSION", "PATH": os.defpath, launch.PYTHON_ENV: "/nonexistent/python3"}
    error = error_of(run([sys.executable, "-S", plugin], env, VERSION_REQUEST))
    assert error["msg"] == ("overlaynet-flannel: cannot run /nonexistent/python3 (from OVERLAYNET_PYTHON "
                            "or the checkout's .venv): No such file or directory")


def test_a_checkout_plugin_copied_out_of_the_checkout_answers_with_a_cni_error(tmp_path):
    copy = tmp_path / "overlaynet-calico"
    shutil.copy(os.path.join(REPO, "cni_plugins", "overlaynet-calico"), copy)
    error = error_of(run([sys.executable, "-S", str(copy)], {"CNI_COMMAND": "VERSION"}, VERSION_REQUEST))
    assert error["msg"] == "overlaynet-calico: not in an overlaynet checkout"
    assert error["details"] == "install the plugins with: overlaynet cni install --dir DIR"


def test_the_checkout_venv_is_chosen_unless_it_is_the_running_python(tmp_path):
    venv_python = tmp_path / ".venv" / "bin" / "python"
    assert launch.choose_interpreter({}, str(tmp_path)) is None  # no .venv: stay
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(sys.executable)
    assert launch.choose_interpreter({}, str(tmp_path)) == str(venv_python)
    assert launch.choose_interpreter({"OVERLAYNET_PLUGIN_PYTHON": str(venv_python)}, str(tmp_path)) is None
    assert launch.choose_interpreter({launch.PYTHON_ENV: sys.executable}, str(tmp_path)) is None
    assert launch.choose_interpreter({launch.PYTHON_ENV: "/opt/py/bin/python3"}, str(tmp_path)) == "/opt/py/bin/python3"


def test_installed_plugins_run_under_their_python_whatever_the_path(tmp_path):
    written = launch.install_plugins(str(tmp_path / "bin"))
    assert [os.path.basename(p) for p in written] == list(launch.PLUGINS)
    for path in written:
        assert os.access(path, os.X_OK)
        proc = run([path], {"CNI_COMMAND": "VERSION"}, VERSION_REQUEST)  # no PATH at all
        assert proc.returncode == 0, proc.stderr.decode()
        assert "1.1.0" in json.loads(proc.stdout)["supportedVersions"]
    assert not [name for name in os.listdir(tmp_path / "bin") if ".tmp-" in name]


def test_an_installed_plugin_whose_python_is_gone_answers_with_a_cni_error(tmp_path):
    (path, *_) = launch.install_plugins(str(tmp_path), python=str(tmp_path / "gone" / "python3"))
    error = error_of(run([path], {"CNI_COMMAND": "VERSION"}, VERSION_REQUEST))
    assert error["msg"] == f"overlaynet-flannel: its Python {tmp_path}/gone/python3 is not there"
    assert "overlaynet cni install --dir DIR" in error["details"]
