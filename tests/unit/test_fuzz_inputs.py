"""Hostile input, property-tested: every parser that takes what a user, a runtime or a peer
process hands overlaynet answers any input with a valid result or one clear error.

The inputs are the project's own valid documents (every YAML file under examples/ and labs/,
and CNI requests like a runtime's) broken at random places — a value replaced by another type,
a field deleted, a stranger added — plus raw text and bytes. "Clear" means an
``OverlaynetError`` (or, for a CNI plugin, spec error JSON and a non-zero exit) with a
one-line message that names something: never a traceback from deep inside.

Each property runs ``FUZZ_EXAMPLES`` cases (1,000; ``OVERLAYNET_FUZZ_EXAMPLES`` raises it).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import pathlib

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from overlaynet.agent.server import Agent
from overlaynet.api import manifests, model
from overlaynet.cli import main
from overlaynet.cni import plugins, spec
from overlaynet.datapath.modes import IPAM_PLUGIN
from overlaynet.errors import OverlaynetError
from overlaynet.ipam import hostlocal

REPO = pathlib.Path(__file__).resolve().parents[2]
FUZZ_EXAMPLES = int(os.environ.get("OVERLAYNET_FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_WITH_FIXTURE = settings(FUZZ, suppress_health_check=[*FUZZ.suppress_health_check,
                                                          HealthCheck.function_scoped_fixture])


def _project_documents() -> list[dict]:
    documents = []
    for path in sorted([*REPO.glob("examples/*.yaml"), *REPO.glob("labs/*/*.yaml")]):
        if path.name == "lab.yaml":
            continue
        documents.extend(d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict))
    return documents


SEEDS = _project_documents()
OBJECT_SEEDS = [d for d in SEEDS if d.get("kind") != "Cluster"]
CLUSTER_SEEDS = [d for d in SEEDS if d.get("kind") == "Cluster"]

# Strings built to break things: shell metacharacters, traversal, NUL, look-alikes, length.
NASTY_STRINGS = ["", " ", "-", "..", "../../etc/passwd", "/proc/1/ns/net", "a;rm -rf /", "$(reboot)", "`id`",
                 "a\nb", "a\0b", "ｗｅｂ", "wеb", "web\u200b", "x" * 300, "-rf", "*", "10.244.0.0/33", "0x10",
                 "1e9", "-1", "65536", "NaN", "null", "true", "TCP", "udp", "80", "http", "None"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.sampled_from(NASTY_STRINGS))
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8) | st.sampled_from(NASTY_STRINGS),
                                                                 inner, max_size=3),
    max_leaves=8)


def _paths(value, path=()):
    """Every place in a document: (path to the container, key or index)."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield path, key
            yield from _paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield path, index
            yield from _paths(child, (*path, index))


def _at(document, path):
    for step in path:
        document = document[step]
    return document


@st.composite
def broken(draw, seeds: list[dict]) -> dict:
    """A valid document with one to four of its places replaced, deleted or joined by a stranger."""
    document = copy.deepcopy(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        places = list(_paths(document))
        if not places:
            break
        path, key = draw(st.sampled_from(places))
        container = _at(document, path)
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            container[key] = draw(JSON_VALUES)
        elif action == "delete":
            del container[key]
        elif isinstance(container, dict):
            container[draw(st.text(max_size=8) | st.sampled_from(NASTY_STRINGS))] = draw(JSON_VALUES)
        else:
            container.append(draw(JSON_VALUES))
    return document


def assert_clear(exc: OverlaynetError) -> None:
    event(f"refused: {type(exc).__name__}")
    message = str(exc)
    assert message.strip(), f"{type(exc).__name__} without a message"
    assert "\n" not in message, f"a multi-line error: {message!r}"
    assert "Traceback" not in message


# -- manifests (overlaynet apply) -----------------------------------------------------------


def test_the_seeds_are_valid():
    """The mutations start from documents that parse: else the fuzzing would only test refusal."""
    assert len(OBJECT_SEEDS) >= 20 and len(CLUSTER_SEEDS) >= 10
    for document in OBJECT_SEEDS:
        manifests.parse_document(copy.deepcopy(document), "seed.yaml")


@FUZZ
@given(broken(OBJECT_SEEDS))
def test_a_broken_manifest_parses_or_gets_one_clear_error(document):
    try:
        manifests.parse_document(document, "fuzz.yaml")
    except OverlaynetError as exc:
        assert_clear(exc)
    else:
        event("accepted")


@FUZZ
@given(st.text(max_size=200) | st.sampled_from(["{", "[a", "- : -", "kind: Pod\n  x", "!!python/object:os.system x",
                                               "a: &a [*a]", "---\n---\n", "\t- x"]))
def test_any_yaml_text_loads_or_gets_one_clear_error(text):
    try:
        manifests.parse_manifests("fuzz.yaml", text=text)
    except OverlaynetError as exc:
        assert_clear(exc)


# -- the Cluster document (overlaynet up -f) -------------------------------------------------


@FUZZ
@given(broken(CLUSTER_SEEDS))
def test_a_broken_cluster_document_builds_a_spec_or_gets_one_clear_error(tmp_path_factory, document):
    path = tmp_path_factory.getbasetemp() / "cluster.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        spec_ = manifests.load_cluster(str(path))
    except OverlaynetError as exc:
        assert_clear(exc)
    else:
        event("accepted")
        assert spec_.nodes, "a valid cluster has nodes"


# -- a CNI plugin's stdin and environment --------------------------------------------------

def _main_config(cni: str, plugin: str) -> dict:
    cluster = model.build_spec(name="fuzz", cni=cni, nodes=1).to_document()
    return {"cniVersion": "1.0.0", "name": "overlaynet", "type": plugin, "ipam": {"type": IPAM_PLUGIN},
            "overlaynet": {"cluster": cluster, "node": {"name": "node-1", "ip": "172.20.0.11",
                                                        "podCIDR": "10.244.0.0/24"}}}


CNI_SEEDS = [
    _main_config("flannel", "overlaynet-flannel"),
    _main_config("calico", "overlaynet-calico"),
    {"cniVersion": "1.0.0", "name": "overlaynet", "type": IPAM_PLUGIN,
     "ipam": {"type": IPAM_PLUGIN, "ranges": [[{"subnet": "10.244.1.0/24"}]], "dataDir": "ipam-data"}},
]
CNI_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/run/netns/fuzz-does-not-exist",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent", "CNI_ARGS": "K8S_POD_NAME=web;K8S_POD_NAMESPACE=default"}
ENV_VALUES = st.text(max_size=30) | st.sampled_from(NASTY_STRINGS) | st.sampled_from(
    ["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC", "eth0", "/run/netns/x", "/proc/self/ns/net", "IgnoreUnknown=1"])


@st.composite
def cni_requests(draw) -> tuple[dict, bytes]:
    environ = dict(CNI_ENV)
    for key in draw(st.lists(st.sampled_from(sorted(CNI_ENV)), max_size=4)):
        if draw(st.booleans()):
            environ[key] = draw(ENV_VALUES)
        else:
            environ.pop(key, None)
    seed = draw(st.sampled_from(CNI_SEEDS))
    stdin_kind = draw(st.sampled_from(["broken", "broken", "bytes", "text"]))
    if stdin_kind == "broken":
        stdin = json.dumps(draw(broken([seed]))).encode()
    elif stdin_kind == "bytes":
        stdin = draw(st.binary(max_size=64))
    else:
        stdin = draw(st.text(max_size=64)).encode("utf-8", "surrogatepass")
    return environ, stdin, seed["type"]


@pytest.fixture
def cni_sandbox(tmp_path, monkeypatch):
    """host-local's files under a temporary directory, wherever a case points dataDir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hostlocal, "DEFAULT_DATA_DIR", str(tmp_path / "default-data-dir"))
    monkeypatch.setenv("OVERLAYNET_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("OVERLAYNET_AGENT_SOCKET", raising=False)


@FUZZ_WITH_FIXTURE
@given(request=cni_requests())
def test_a_cni_plugin_answers_any_request_with_a_result_or_spec_error_json(cni_sandbox, request):
    """What a runtime could exec a plugin with: never a traceback, always the spec's error shape.

    No case names a namespace that exists, so none reaches the kernel; host-local's files land
    in a temporary directory.
    """
    environ, stdin, plugin = request
    assume(not os.path.exists(environ.get("CNI_NETNS") or "/nonexistent"))
    outcome = plugins.run(plugin, environ, stdin, os.getpid(), in_agent=False)
    assert "Traceback" not in outcome.stdout + outcome.stderr
    event(f"{plugin} {environ.get('CNI_COMMAND')}: exit {outcome.exit_code}")
    if outcome.exit_code == 0:
        if outcome.stdout.strip():
            json.loads(outcome.stdout)
        return
    answer = json.loads(outcome.stdout)
    assert isinstance(answer.get("code"), int) and answer["code"] > 0, answer
    assert isinstance(answer.get("msg"), str) and answer["msg"].strip(), answer
    assert "\n" not in answer["msg"], answer


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(CNI_ENV)), ENV_VALUES))
def test_the_cni_environment_parses_or_gets_one_clear_error(environ):
    try:
        parsed = spec.parse_env(environ)
    except OverlaynetError as exc:
        assert_clear(exc)
    else:
        assert "/" not in parsed.ifname and parsed.ifname not in (".", "..")


# -- the agent's control protocol ----------------------------------------------------------

AGENT_OPS = ["ping", "serve", "unserve", "set_serving", "list", "probe", "bogus"]
HEALTH = JSON_VALUES | broken([{"specs": [{"kind": "readiness", "action": "http", "port": 8080, "path": "/",
                                          "command": [], "initial_delay": 0, "period": 10, "timeout": 1,
                                          "success_threshold": 1, "failure_threshold": 3}],
                                "podIP": "10.244.1.2", "nodeNetns": "fuzz-node", "podNetns": "fuzz-pod"}])


@st.composite
def agent_lines(draw) -> bytes:
    kind = draw(st.sampled_from(["request", "request", "request", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=80))
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    request = {"op": draw(st.sampled_from(AGENT_OPS))}
    fields = {"key": ENV_VALUES, "netns": ENV_VALUES, "hostname": ENV_VALUES, "serving": SCALARS,
              "ports": JSON_VALUES, "probes": JSON_VALUES, "timeout": SCALARS, "health": HEALTH}
    for field in draw(st.lists(st.sampled_from(sorted(fields)), max_size=5)):
        request[field] = draw(fields[field])
    return json.dumps(request).encode()


@FUZZ
@given(agent_lines())
def test_the_agent_answers_any_control_line_with_a_reply_or_a_clear_error(line):
    """The agent keeps serving whatever a peer sends; no case may be an internal error.

    (The ``cni`` op is left out: it reaches a live process's netns by pid; the plugin's own
    input is fuzzed above.)
    """
    agent = Agent("fuzz", "/nonexistent/agent.sock", report_health=lambda *args: None)

    async def answer_and_clean() -> bytes:
        try:
            return await agent._answer(line)
        finally:
            for served in list(agent.keys.values()):
                await served.close()

    reply = json.loads(asyncio.run(answer_and_clean()))
    event("ok" if reply["ok"] else "refused")
    if reply["ok"]:
        return
    assert reply["error"].strip() and "\n" not in reply["error"], reply
    assert not reply["error"].startswith("internal error"), reply


@pytest.mark.parametrize("netns", ["/proc/1/ns/net", "../../proc/1/ns/net", "..", "a/b", "x" * 256])
def test_the_agent_serves_only_in_a_namespace_named_in_run_netns(netns):
    """``serve`` opens sockets in the namespace it names: a path (to the host's namespace, say)
    is refused before anything opens, in the request and in its probes."""
    agent = Agent("fuzz", "/nonexistent/agent.sock", report_health=lambda *args: None)
    request = {"op": "serve", "key": "pod/default/web", "netns": netns, "hostname": "web", "ports": [[8080, "TCP"]]}
    reply = json.loads(asyncio.run(agent._answer(json.dumps(request).encode())))
    assert reply == {"ok": False, "error": reply["error"]} and "network namespace name" in reply["error"]
    health = {"specs": [], "podIP": "10.244.1.2", "nodeNetns": netns, "podNetns": "fuzz-pod"}
    reply = json.loads(asyncio.run(agent._answer(json.dumps({**request, "netns": "fuzz-pod", "health": health}).encode())))
    assert not reply["ok"] and "network namespace name" in reply["error"], reply
    assert agent.keys == {}


# -- names built to break things -----------------------------------------------------------

HOSTILE_NAMES = ["", "a;rm -rf /", "$(reboot)", "`id`", "../x", "a/b", "ｗｅｂ", "wеb", "web\u200b", "web\n",
                 "-x", "Web", "x" * 40]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_cluster_name_is_refused_before_anything(name, tmp_path, monkeypatch, capsys):
    """``--name`` reaches namespace, interface and chain names: refused with one line that shows
    it, escaped when it does not print (a zero-width space cannot hide in it)."""
    monkeypatch.setenv("OVERLAYNET_STATE_DIR", str(tmp_path / "state"))
    assert main(["get", "pods", "--name", name]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: cluster ") and error.count("\n") == 1, error
    assert f'cluster "{repr(name)[1:-1]}"' in error


RUNTIME_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/var/run/netns/cni-1",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}


@pytest.mark.parametrize(("variable", "value"), [
    ("CNI_NETNS", "/var/run/netns/../../proc/1/ns/net"), ("CNI_NETNS", "relative/netns"),
    ("CNI_NETNS", "/run/netns/a;b"), ("CNI_NETNS", "/run/netns/$(id)"), ("CNI_NETNS", "/run/netns/wеb"),
    ("CNI_IFNAME", "eth0;id"), ("CNI_IFNAME", "../e"), ("CNI_IFNAME", "e" * 16), ("CNI_IFNAME", "еth0"),
    ("CNI_IFNAME", "eth0\u200b"), ("CNI_IFNAME", "eth 0"), ("CNI_IFNAME", ".."),
    ("CNI_CONTAINERID", "../../etc"), ("CNI_CONTAINERID", "$(id)"), ("CNI_CONTAINERID", "аbc"),
    ("CNI_CONTAINERID", "a" * 129), ("CNI_CONTAINERID", "-rf"),
])
def test_a_hostile_name_from_the_runtime_is_refused_with_code_4(variable, value):
    """CNI_NETNS, CNI_IFNAME and CNI_CONTAINERID reach files, netlink and logs: refused first,
    with the spec's code 4 (invalid environment variables) naming the variable."""
    with pytest.raises(spec.CniError) as refused:
        spec.parse_env({**RUNTIME_ENV, variable: value})
    assert refused.value.code == spec.ERR_INVALID_ENV and variable in refused.value.msg


def test_the_names_runtimes_really_pass_are_accepted():
    for netns in ("/var/run/netns/cni-5f1e2d3c-aaaa-bbbb", "/proc/4242/ns/net", "/run/netns/ovn-node-1"):
        for ifname in ("eth0", "net1", "cali1234567890a", "vxlan.calico"):
            parsed = spec.parse_env({**RUNTIME_ENV, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
                                     "CNI_CONTAINERID": "f" * 64})
            assert (parsed.netns, parsed.ifname) == (netns, ifname)
