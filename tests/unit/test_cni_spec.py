"""overlaynet.cni.spec: versions, error codes, env, CNI_ARGS, configuration and results (pure);
and overlaynet.cni.skel, the executables' entry point, against a fake agent (no root).

Expected values come from shared/reference/cni.md (the spec and the observed output of the
reference plugins), not from our own output.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlaynet import errors
from overlaynet.cni import spec
from overlaynet.cni.spec import DNS, Interface, IPConfig, Result, RouteEntry
from overlaynet.errors import CniError, OverlaynetError

# cni.md §11: bridge + host-local, cniVersion 1.0.0, as printed (no newline at the end).
REFERENCE_BRIDGE_RESULT = """{
    "cniVersion": "1.0.0",
    "interfaces": [
        {
            "name": "cnitest0",
            "mac": "46:60:07:dc:29:28"
        },
        {
            "name": "veth615ae567",
            "mac": "da:3a:be:62:0a:4b"
        },
        {
            "name": "eth0",
            "mac": "6e:b6:b2:69:b2:ff",
            "sandbox": "/var/run/netns/cnitest"
        }
    ],
    "ips": [
        {
            "interface": 2,
            "address": "10.244.1.2/24",
            "gateway": "10.244.1.1"
        }
    ],
    "routes": [
        {
            "dst": "0.0.0.0/0"
        }
    ],
    "dns": {}
}"""

ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1", "CNI_NETNS": "/var/run/netns/cnitest",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}


def code_of(fn, *args, **kwargs) -> CniError:
    with pytest.raises(CniError) as info:
        fn(*args, **kwargs)
    return info.value


# -- errors -------------------------------------------------------------------------------


def test_cni_error_is_an_overlaynet_error_with_code_msg_details():
    error = CniError(7, "invalid network configuration", "name missing")
    assert isinstance(error, OverlaynetError)
    assert (error.code, error.msg, error.details) == (7, "invalid network configuration", "name missing")
    assert str(error) == "invalid network configuration: name missing"


def test_error_codes_are_the_specs():
    assert (spec.ERR_INCOMPATIBLE_VERSION, spec.ERR_UNSUPPORTED_FIELD, spec.ERR_UNKNOWN_CONTAINER,
            spec.ERR_INVALID_ENV, spec.ERR_IO, spec.ERR_DECODE, spec.ERR_INVALID_CONFIG,
            spec.ERR_TRY_AGAIN, spec.ERR_NOT_AVAILABLE, spec.ERR_LIMITED, spec.ERR_PLUGIN) == \
        (1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 999)


def test_error_document_omits_empty_details_and_round_trips():
    doc = spec.error_document(CniError(4, "CNI_IFNAME missing"), "1.0.0")
    assert doc == {"cniVersion": "1.0.0", "code": 4, "msg": "CNI_IFNAME missing"}
    back = spec.parse_error_document(spec.dumps(spec.error_document(CniError(11, "busy", "retry"), "0.4.0")))
    assert (back.code, back.msg, back.details) == (11, "busy", "retry")


@pytest.mark.parametrize("error, code", [
    (errors.InvalidInput('pod "web": ports[0] is out of range'), 7),
    (errors.InvalidName("interface name 'x' is not a valid Linux interface name"), 7),
    (errors.AgentError("the agent of cluster \"lab\" is unreachable"), 11),
    (errors.NotFoundError('node "node-9" not found'), 999),
    (errors.CapacityError("pod CIDR 10.244.1.0/30 has no free address"), 999),
    (errors.KernelError("RTNETLINK answers: File exists"), 999),
    (errors.BirdError("BIRD did not start"), 999),
    (errors.ConflictError('cluster "lab" already exists'), 999),
])
def test_each_overlaynet_error_becomes_its_cni_code(error, code):
    answer = spec.cni_error(error)
    assert (answer.code, answer.msg, answer.details) == (code, str(error), "")


def test_a_cni_error_keeps_its_own_code():
    error = CniError(spec.ERR_UNKNOWN_CONTAINER, "CNI_NETNS /run/netns/x does not exist", "details")
    assert spec.cni_error(error) is error


def test_parse_error_document_accepts_go_errors_without_version_and_refuses_results():
    # cni.md §8.2: Go's types.Error has no cniVersion.
    error = spec.parse_error_document('{"code": 999, "msg": "failed to allocate", "details": ""}')
    assert (error.code, error.msg) == (999, "failed to allocate")
    assert spec.parse_error_document(REFERENCE_BRIDGE_RESULT) is None
    assert spec.parse_error_document("garbage") is None
    assert spec.parse_error_document('{"code": true, "msg": "x"}') is None


# -- versions -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_supported_versions_are_accepted(version):
    assert spec.check_version(version, "ADD") == version


@pytest.mark.parametrize("version", ["0.3.1", "0.2.0", "2.0.0", "1.2.0"])
def test_unsupported_versions_are_code_1(version):
    error = code_of(spec.check_version, version, "ADD")
    assert error.code == 1 and version in error.msg and "1.1.0" in error.details


@pytest.mark.parametrize("text", ["1.0", "v1.0.0", "1.0.0-rc1", "", None, 1, "01.0.0"])
def test_malformed_versions_are_decode_errors(text):
    assert code_of(spec.parse_version, text).code == 6


@pytest.mark.parametrize("command", ["STATUS", "GC"])
def test_status_and_gc_need_1_1(command):
    assert spec.check_version("1.1.0", command) == "1.1.0"
    error = code_of(spec.check_version, "1.0.0", command)
    assert error.code == 1 and command in error.msg


def test_pick_version_takes_the_highest_common_of_cni_versions():
    assert spec.pick_version("0.4.0", ["0.3.1", "1.0.0", "1.1.0", "2.5.0"]) == "1.1.0"
    assert spec.pick_version("1.0.0", None) == "1.0.0"
    assert code_of(spec.pick_version, None, ["0.3.0", "0.2.0"]).code == 1
    assert code_of(spec.pick_version, "0.3.1", None).code == 1


def test_version_document_echoes_the_version_asked():
    assert spec.version_document("1.0.0") == {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}
    assert spec.version_document(None)["cniVersion"] == "1.1.0"


# -- environment --------------------------------------------------------------------------


def test_parse_env_for_add():
    env = spec.parse_env({**ADD_ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
                          "CNI_PATH": "/opt/a:/opt/b"})
    assert (env.command, env.container_id, env.netns, env.ifname) == ("ADD", "ctr1", "/var/run/netns/cnitest", "eth0")
    assert env.path == ("/opt/a", "/opt/b")
    assert (env.pod_namespace, env.pod_name) == ("default", "web-0")
    assert env.environ["CNI_COMMAND"] == "ADD"


@pytest.mark.parametrize("command,missing", [
    ("ADD", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]),
    ("CHECK", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]),
    ("DEL", ["CNI_CONTAINERID", "CNI_IFNAME"]),
    ("GC", ["CNI_PATH"]),
])
def test_missing_variables_are_code_4_and_all_named(command, missing):
    error = code_of(spec.parse_env, {"CNI_COMMAND": command})
    assert error.code == 4
    for name in missing:
        assert name in error.msg
    assert ("CNI_NETNS" in error.msg) == (command != "DEL" and command != "GC")


def test_del_needs_no_netns_and_version_status_need_nothing():
    assert spec.parse_env({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0"}).netns == ""
    assert spec.parse_env({"CNI_COMMAND": "VERSION"}).command == "VERSION"
    assert spec.parse_env({"CNI_COMMAND": "STATUS"}).command == "STATUS"


@pytest.mark.parametrize("command", ["", "add", "REMOVE"])
def test_unknown_or_missing_command_is_code_4(command):
    assert code_of(spec.parse_env, {"CNI_COMMAND": command}).code == 4


@pytest.mark.parametrize("cid", ["-abc", "a b", "ctr/1", "_x", "ctr;1"])
def test_container_id_charset(cid):
    error = code_of(spec.parse_env, {**ADD_ENV, "CNI_CONTAINERID": cid})
    assert error.code == 4 and "CNI_CONTAINERID" in error.msg


@pytest.mark.parametrize("cid", ["a", "0abc", "a_b.c-d", "cnitool-20c433bb2b1d6ede56d6"])
def test_valid_container_ids(cid):
    assert spec.parse_env({**ADD_ENV, "CNI_CONTAINERID": cid}).container_id == cid


def test_ifname_must_be_shorter_than_16():
    assert spec.parse_env({**ADD_ENV, "CNI_IFNAME": "a" * 15}).ifname == "a" * 15
    error = code_of(spec.parse_env, {**ADD_ENV, "CNI_IFNAME": "a" * 16})
    assert error.code == 4 and "CNI_IFNAME" in error.msg and "16" in error.msg
    for bad in (".", "..", "a/b", "a:b", "a b"):
        assert code_of(spec.parse_env, {**ADD_ENV, "CNI_IFNAME": bad}).code == 4


def test_cni_args():
    assert spec.parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=web-0;;IP=10.0.0.5") == \
        {"IgnoreUnknown": "1", "K8S_POD_NAME": "web-0", "IP": "10.0.0.5"}
    assert spec.parse_cni_args("") == {} and spec.parse_cni_args(None) == {}
    assert code_of(spec.parse_cni_args, "K8S_POD_NAME").code == 4
    assert code_of(spec.parse_cni_args, "=x").code == 4
    assert spec.ignore_unknown({"IgnoreUnknown": "true"}) and spec.ignore_unknown({"IgnoreUnknown": "1"})
    assert not spec.ignore_unknown({}) and not spec.ignore_unknown({"IgnoreUnknown": "0"})
    assert spec.format_cni_args({"A": "1", "B": "2"}) == "A=1;B=2"


def test_unknown_cni_args_are_not_an_error_without_ignore_unknown():
    # cni.md §12.5: refusing unknown keys is a reference-plugin bug to avoid.
    env = spec.parse_env({**ADD_ENV, "CNI_ARGS": "K8S_POD_NAME=a;SOMETHING_ELSE=1"})
    assert env.args["SOMETHING_ELSE"] == "1"


# -- configuration ------------------------------------------------------------------------


def conf(**overrides) -> bytes:
    doc = {"cniVersion": "1.0.0", "name": "overlaytest", "type": "overlaynet-flannel", **overrides}
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


def test_parse_plugin_config_keeps_plugin_keys():
    doc = spec.parse_plugin_config(conf(bridge="cni0", mtu=1400), "ADD")
    assert doc["bridge"] == "cni0" and doc["mtu"] == 1400


@pytest.mark.parametrize("data,code", [
    (b"{not json", 6),
    (b"", 6),
    (b"[1, 2]", 7),
    (conf(cniVersion=None), 1),
    (conf(cniVersion="0.3.1"), 1),
    (conf(cniVersion="one"), 6),
    (conf(name=None), 7),
    (conf(name="-bad"), 7),
    (conf(name="a/b"), 7),
    (conf(type=None), 7),
])
def test_parse_plugin_config_errors(data, code):
    assert code_of(spec.parse_plugin_config, data, "ADD").code == code


def test_parse_conflist():
    doc = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "disableCheck": True,
           "plugins": [{"type": "bridge", "ipam": {}}, {"type": "portmap", "capabilities": {"portMappings": True}}]}
    parsed = spec.parse_conflist(doc)
    assert parsed.name == "k8s-pod-network" and parsed.cni_version == "1.0.0" and parsed.disable_check
    assert [p["type"] for p in parsed.plugins] == ["bridge", "portmap"]
    assert spec.parse_conflist(json.dumps(doc)).plugins == parsed.plugins


def test_parse_conflist_wraps_a_single_config_and_honours_cni_versions():
    parsed = spec.parse_conflist({"cniVersion": "0.4.0", "name": "one", "type": "bridge", "bridge": "br0"})
    assert parsed.plugins == ({"type": "bridge", "bridge": "br0"},)
    parsed = spec.parse_conflist({"cniVersions": ["0.4.0", "1.1.0"], "name": "n", "plugins": [{"type": "x"}]})
    assert parsed.cni_version == "1.1.0"


@pytest.mark.parametrize("doc,code", [
    ({"cniVersion": "1.0.0", "name": "n", "plugins": []}, 7),
    ({"cniVersion": "1.0.0", "name": "n"}, 7),
    ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"bridge": "x"}]}, 7),
    ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../bin/sh"}]}, 7),
    ({"cniVersion": "1.0.0", "name": "bad name", "plugins": [{"type": "x"}]}, 7),
    ({"cniVersion": "1.0.0", "name": "n", "disableCheck": "yes", "plugins": [{"type": "x"}]}, 7),
    ({"cniVersion": "0.3.1", "name": "n", "plugins": [{"type": "x"}]}, 1),
    ("{", 6),
])
def test_parse_conflist_errors(doc, code):
    assert code_of(spec.parse_conflist, doc).code == code


def test_valid_attachments_reads_either_key():
    listed = [{"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "net1"}]
    assert spec.valid_attachments({"cni.dev/valid-attachments": listed}) == {("a", "eth0"), ("b", "net1")}
    assert spec.valid_attachments({"cni.dev/attachments": listed[:1]}) == {("a", "eth0")}
    assert spec.valid_attachments({}) == set()
    assert code_of(spec.valid_attachments, {"cni.dev/valid-attachments": [{"containerID": "a"}]}).code == 7
    assert code_of(spec.valid_attachments, {"cni.dev/attachments": "a"}).code == 7


# -- results ------------------------------------------------------------------------------


def test_reference_result_round_trips_byte_for_byte():
    result = Result.from_dict(json.loads(REFERENCE_BRIDGE_RESULT))
    assert spec.dumps(result.to_dict("1.0.0")) == REFERENCE_BRIDGE_RESULT
    assert not spec.dumps(result.to_dict("1.0.0")).endswith("\n")


def test_0_4_0_puts_version_first_in_each_ip():
    result = Result(ips=[IPConfig("10.99.0.2/30", "10.99.0.1"), IPConfig("fd00::2/64", interface=None)])
    doc = result.to_dict("0.4.0")
    assert doc["ips"] == [{"version": "4", "address": "10.99.0.2/30", "gateway": "10.99.0.1"},
                          {"version": "6", "address": "fd00::2/64"}]
    assert list(doc["ips"][0])[0] == "version"
    assert "version" not in json.dumps(result.to_dict("1.0.0")["ips"])


def test_host_local_alone_prints_what_the_reference_prints():
    # cni.md §11: host-local alone on 10.99.0.0/30.
    result = Result(ips=[IPConfig("10.99.0.2/30", "10.99.0.1")])
    assert result.to_dict("1.0.0") == {"cniVersion": "1.0.0", "ips": [{"address": "10.99.0.2/30", "gateway": "10.99.0.1"}],
                                       "dns": {}}


def test_1_1_fields_only_in_1_1():
    result = Result(interfaces=[Interface("eth0", "aa:bb:cc:dd:ee:ff", mtu=1450, sandbox="/run/netns/x",
                                          socket_path="/s", pci_id="0000:00:01.0")],
                    routes=[RouteEntry("169.254.1.1/32", scope=253), RouteEntry("0.0.0.0/0", "169.254.1.1", priority=5)])
    new, old = result.to_dict("1.1.0"), result.to_dict("1.0.0")
    assert new["interfaces"][0] == {"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "mtu": 1450, "sandbox": "/run/netns/x",
                                    "socketPath": "/s", "pciID": "0000:00:01.0"}
    assert old["interfaces"][0] == {"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/netns/x"}
    assert new["routes"] == [{"dst": "169.254.1.1/32", "scope": 253}, {"dst": "0.0.0.0/0", "gw": "169.254.1.1", "priority": 5}]
    assert old["routes"] == [{"dst": "169.254.1.1/32"}, {"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]


def test_convert_result_from_0_4_0_drops_ip_versions():
    old = {"cniVersion": "0.4.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
           "ips": [{"version": "4", "interface": 0, "address": "10.1.0.5/16"}], "dns": {"nameservers": ["10.96.0.10"]}}
    assert spec.convert_result(old, "1.0.0") == {
        "cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"interface": 0, "address": "10.1.0.5/16"}], "dns": {"nameservers": ["10.96.0.10"]}}


@pytest.mark.parametrize("doc", [
    [],
    {"ips": [{"address": "10.0.0.1"}]},  # no prefix length
    {"ips": [{"address": "10.0.0.1/24", "gateway": "x"}]},
    {"ips": [{"address": "10.0.0.1/24", "interface": 3}]},  # index past interfaces
    {"interfaces": [{"mac": "aa"}]},  # no name
    {"routes": [{"gw": "10.0.0.1"}]},
    {"cniVersion": "one"},
])
def test_malformed_results_are_decode_errors(doc):
    assert code_of(Result.from_dict, doc).code == 6


def test_dumps_is_go_style():
    assert spec.dumps({"a": {}, "b": [1]}) == '{\n    "a": {},\n    "b": [\n        1\n    ]\n}'


_ipv4 = st.builds(lambda a, p: f"10.{a >> 8 & 255}.{a & 255}.{a % 250 + 2}/{p}",
                  st.integers(0, 65535), st.integers(8, 30))
_names = st.from_regex(r"[a-z][a-z0-9]{0,14}", fullmatch=True)
_macs = st.builds(lambda b: ":".join(f"{x:02x}" for x in b), st.binary(min_size=6, max_size=6))


@st.composite
def results(draw):
    interfaces = draw(st.lists(st.builds(Interface, _names, st.none() | _macs, st.none() | st.integers(68, 9000),
                                         st.none() | st.just("/run/netns/p")), max_size=3))
    ips = draw(st.lists(st.builds(IPConfig, _ipv4, st.none() | st.just("10.0.0.1"),
                                  st.none() | st.integers(0, max(0, len(interfaces) - 1)) if interfaces else st.none()),
                        max_size=3))
    routes = draw(st.lists(st.builds(RouteEntry, st.sampled_from(["0.0.0.0/0", "10.244.0.0/16"]),
                                     st.none() | st.just("10.0.0.1")), max_size=3))
    dns = draw(st.builds(DNS, st.lists(st.just("10.96.0.10"), max_size=2), st.none() | st.just("cluster.local")))
    return Result(interfaces, ips, routes, dns)


@given(results(), st.sampled_from(spec.SUPPORTED_VERSIONS))
def test_results_round_trip_in_every_version(result, version):
    doc = json.loads(spec.dumps(result.to_dict(version)))
    assert doc["cniVersion"] == version
    again = Result.from_dict(doc)
    assert again.to_dict(version) == result.to_dict(version)
    assert [ip.address for ip in again.ips] == [ip.address for ip in result.ips]


# -- the plugin entry point (skel): thin path to a (fake) agent, standalone fallback ---------

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAVY = ("pyroute2", "yaml", "overlaynet.cni.plugins", "overlaynet.cni.invocation", "overlaynet.cni.ipam_plugin",
         "overlaynet.cni.main_plugin", "overlaynet.api.model", "overlaynet.kernel", "dataclasses")


class FakeAgent:
    """A unix socket that answers each request line with ``reply(request)`` (or hangs up)."""

    def __init__(self, path: str, reply) -> None:
        self.requests: list[dict] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(4)
        self.reply = reply
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        with conn:
            buf = b""
            while b"\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            request = json.loads(buf.partition(b"\n")[0])
            self.requests.append(request)
            answer = self.reply(request)
            if answer is not None:
                conn.sendall((json.dumps(answer) + "\n").encode())

    def close(self) -> None:
        self.server.close()
        self.thread.join(5)


def run_plugin(name: str, env: dict, stdin: dict, importtime: bool = False) -> subprocess.CompletedProcess:
    argv = [sys.executable, *(["-X", "importtime"] if importtime else []), os.path.join(REPO, "cni_plugins", name)]
    return subprocess.run(argv, input=json.dumps(stdin).encode(), capture_output=True, timeout=60, cwd="/",
                          env={"PATH": os.environ["PATH"], "PYTHONPATH": REPO, **env})


def imported(stderr: bytes) -> set[str]:
    return {line.split("|")[-1].strip() for line in stderr.decode().splitlines() if line.startswith("import time:")}


def test_thin_plugin_hands_the_whole_request_to_the_agent_and_imports_nothing_heavy(tmp_path):
    sock = str(tmp_path / "agent.sock")
    canned = spec.dumps({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.2/24"}], "dns": {}})
    agent = FakeAgent(sock, lambda req: {"ok": True, "stdout": canned, "exit_code": 0, "stderr": "from the agent"})
    conf = {"cniVersion": "1.0.0", "name": "thin", "type": "overlaynet-flannel", "agentSocket": sock, "ipam": {}}
    env = {**ADD_ENV, "CNI_ARGS": "K8S_POD_NAME=web-0"}
    try:
        proc = run_plugin("overlaynet-flannel", env, conf, importtime=True)
    finally:
        agent.close()
    assert proc.returncode == 0 and proc.stdout.decode() == canned
    assert b"from the agent" in proc.stderr
    (request,) = agent.requests
    assert request["op"] == "cni" and request["plugin"] == "overlaynet-flannel"
    assert json.loads(request["stdin"]) == conf
    assert request["env"]["CNI_CONTAINERID"] == "ctr1" and request["env"]["CNI_ARGS"] == "K8S_POD_NAME=web-0"
    assert isinstance(request["pid"], int) and request["pid"] != os.getpid()
    loaded = imported(proc.stderr)
    assert "overlaynet.cni.skel" in loaded
    assert not [m for m in loaded if m.startswith(HEAVY)], sorted(m for m in loaded if m.startswith(HEAVY))


def test_agent_errors_come_back_as_cni_errors_on_stdout(tmp_path):
    sock = str(tmp_path / "agent.sock")
    error = spec.dumps({"cniVersion": "1.0.0", "code": 3, "msg": "CNI_NETNS /run/netns/x does not exist"})
    agent = FakeAgent(sock, lambda req: {"ok": True, "stdout": error, "exit_code": 1, "stderr": ""})
    try:
        proc = run_plugin("overlaynet-flannel", ADD_ENV, {"cniVersion": "1.0.0", "name": "n", "type": "t",
                                                          "agentSocket": sock})
    finally:
        agent.close()
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 3


def test_an_agent_that_hangs_up_mid_request_is_try_again_later(tmp_path):
    sock = str(tmp_path / "agent.sock")
    agent = FakeAgent(sock, lambda req: None)
    try:
        proc = run_plugin("overlaynet-flannel", ADD_ENV, {"cniVersion": "1.1.0", "name": "n", "type": "t",
                                                          "agentSocket": sock})
    finally:
        agent.close()
    error = json.loads(proc.stdout)
    assert proc.returncode != 0 and error["code"] == 11 and error["cniVersion"] == "1.1.0"
    assert "did not answer" in error["msg"] and sock in error["msg"]


@pytest.mark.parametrize("agent_kind", ["no socket file", "agent without the cni op"])
def test_without_a_usable_agent_the_plugin_runs_standalone(tmp_path, agent_kind):
    sock = str(tmp_path / "agent.sock")
    agent = None
    if agent_kind != "no socket file":
        agent = FakeAgent(sock, lambda req: {"ok": False, "error": "unknown op 'cni'; one of ping, serve"})
    conf = {"cniVersion": "1.0.0", "name": "alone", "type": "overlaynet-ipam", "agentSocket": sock,
            "ipam": {"type": "overlaynet-ipam", "ranges": [[{"subnet": "10.99.0.0/30"}]], "dataDir": str(tmp_path)}}
    try:
        proc = run_plugin("overlaynet-ipam", ADD_ENV, conf)
    finally:
        if agent:
            agent.close()
    assert proc.returncode == 0, proc.stdout
    assert json.loads(proc.stdout)["ips"] == [{"address": "10.99.0.2/30", "gateway": "10.99.0.1"}]
    assert os.path.exists(tmp_path / "alone" / "10.99.0.2")
    if agent:
        assert agent.requests and agent.requests[0]["op"] == "cni"


def test_a_standalone_ipam_plugin_does_not_import_the_main_plugins_code(tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "lean", "type": "overlaynet-ipam",
            "ipam": {"type": "overlaynet-ipam", "ranges": [[{"subnet": "10.99.0.0/30"}]], "dataDir": str(tmp_path)}}
    proc = run_plugin("overlaynet-ipam", ADD_ENV, conf, importtime=True)
    assert proc.returncode == 0, proc.stdout
    loaded = imported(proc.stderr)
    assert "overlaynet.cni.ipam_plugin" in loaded
    main_code = ("pyroute2", "overlaynet.api.model", "overlaynet.kernel", "overlaynet.cni.main_plugin")
    assert not [m for m in loaded if m.startswith(main_code)], sorted(m for m in loaded if m.startswith(main_code))


def test_version_is_answered_without_the_plugin_code():
    proc = run_plugin("overlaynet-calico", {"CNI_COMMAND": "VERSION"}, {"cniVersion": "0.4.0"}, importtime=True)
    assert json.loads(proc.stdout) == {"cniVersion": "0.4.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}
    assert "overlaynet.cni.plugins" not in imported(proc.stderr)
    proc = run_plugin("overlaynet-calico", {"CNI_COMMAND": "VERSION"}, {"cniVersion": "one"})
    assert proc.returncode != 0 and json.loads(proc.stdout)["code"] == 6
