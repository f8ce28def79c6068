"""CNI conformance of overlaynet's plugins, through the real executables and the runtime
(root; real namespaces; cni.md is the source of every expectation).

Each test gets a lab of its own (``t-cni-<random>.``): a node netns in which the plugins run
(``nsenter``, as a runtime on that node would run them), sandboxes made on demand, an IPAM
data directory and a result cache in the test's tmp dir. The fixture deletes every
namespace with the prefix (and stops any agent the test started), whatever happened.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import subprocess
import tempfile
import time
import uuid

import pytest

from overlaynet.agent.client import AgentClient, start_agent, stop_agent
from overlaynet.api import model
from overlaynet.cni import spec
from overlaynet.cni.runtime import CniRuntime
from overlaynet.datapath.plan import Netns
from overlaynet.errors import AgentError, CniError
from overlaynet.kernel import apply as kapply
from overlaynet.kernel import netns, observe

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGIN_DIR = os.path.join(REPO, "cni_plugins")
REFERENCE_DIR = "/usr/lib/cni"
CNI_PATH = [PLUGIN_DIR, REFERENCE_DIR]
POD_CIDR = "10.244.1.0/24"
GATEWAY = "10.244.1.1"
NETWORK = "podnet"


def run(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


def ping(src_ns: str, dst: str) -> subprocess.CompletedProcess:
    return run("ip", "netns", "exec", src_ns, "ping", "-c1", "-W2", dst)


class CniLab:
    """A node netns, sandboxes, IPAM state and cache for one test."""

    def __init__(self, tmp_path) -> None:
        self.id = uuid.uuid4().hex[:6]
        self.prefix = f"t-cni-{self.id}."
        self.cluster = f"t-cni-{self.id}"
        self.tmp = tmp_path
        self.data_dir = str(tmp_path / "ipam")
        self.cache_dir = str(tmp_path / "cache")
        self.node = self.prefix + "node"
        self.agents: list[tuple[str, str]] = []
        kapply.apply((Netns(self.node),))

    def namespace(self, name: str) -> str:
        full = self.prefix + name
        kapply.apply((Netns(full),))
        return full

    def sandbox(self, name: str) -> str:
        return netns.path(self.namespace(name))

    def cluster_document(self, cni: str = "flannel") -> dict:
        return model.build_spec(name=self.cluster, nodes=1, cni=cni).to_document()

    def flannel(self, subnet: str = POD_CIDR, node_netns: str | None = None, ipam: dict | None = None, **extra) -> dict:
        node = {"name": "node-1", "ip": "172.20.0.11", "podCIDR": POD_CIDR}
        if node_netns:
            node["netns"] = node_netns
        return {"type": "overlaynet-flannel", "bridge": "cni0", "hairpinMode": True,
                "ipam": ipam or {"type": "overlaynet-ipam", "ranges": [[{"subnet": subnet}]], "dataDir": self.data_dir},
                "overlaynet": {"cluster": self.cluster_document(), "node": node}, **extra}

    def conflist(self, *plugins: dict, version: str = "1.0.0", name: str = NETWORK, **extra) -> dict:
        return {"cniVersion": version, "name": name, "plugins": list(plugins or [self.flannel()]), **extra}

    def runtime(self, conflist: dict | None = None, exec_netns: str | None = "node", cache: str | None = None) -> CniRuntime:
        return CniRuntime(conflist or self.conflist(), CNI_PATH, cache or self.cache_dir,
                          exec_netns=self.node if exec_netns == "node" else exec_netns)

    def allocations(self, network: str = NETWORK) -> list[str]:
        try:
            return sorted(f for f in os.listdir(os.path.join(self.data_dir, network)) if f[0].isdigit() or ":" in f)
        except FileNotFoundError:
            return []

    def links(self, ns: str | None = None) -> dict[str, dict]:
        return {link["name"]: link for link in observe.observe_links(ns or self.node)}

    def exec_plugin(self, plugin: str, env: dict, stdin: bytes | str, in_node: bool = True) -> subprocess.CompletedProcess:
        """One plugin executable, run as a runtime runs it (in the node netns); stdout/stderr as text."""
        full_env = {"PATH": os.environ["PATH"], **env}
        argv = [os.path.join(PLUGIN_DIR, plugin)]
        if in_node:
            argv = ["nsenter", f"--net={netns.path(self.node)}", "--", *argv]
        data = stdin.encode() if isinstance(stdin, str) else stdin
        proc = subprocess.run(argv, input=data, capture_output=True, env=full_env, timeout=60)
        return subprocess.CompletedProcess(argv, proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    def plugin_request(self, plugin_conf: dict, version: str = "1.0.0", name: str = NETWORK, **extra) -> str:
        return json.dumps({"cniVersion": version, "name": name, **plugin_conf, **extra})

    def start_agent(self) -> str:
        directory = tempfile.mkdtemp(prefix="ovn-cni-", dir="/tmp")  # sun_path holds 108 bytes
        sock = os.path.join(directory, "agent.sock")
        self.agents.append((sock, directory))
        start_agent(self.cluster, sock, os.path.join(directory, "agent.log"))
        return sock

    def agent_log(self, sock: str) -> str:
        with open(os.path.join(os.path.dirname(sock), "agent.log")) as handle:
            return handle.read()

    def cleanup(self) -> None:
        for sock, directory in self.agents:
            stop_agent(self.cluster, sock)
            for entry in os.listdir(directory):
                os.unlink(os.path.join(directory, entry))
            os.rmdir(directory)
        left = [n for n in netns.list_names() if n.startswith(self.prefix)]
        for name in left:
            netns.delete(name)
        netns.wait_gone(left)


@pytest.fixture
def lab(tmp_path):
    built = CniLab(tmp_path)
    yield built
    built.cleanup()


def k8s_args(name: str) -> dict:
    return {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": name,
            "K8S_POD_INFRA_CONTAINER_ID": f"ctr-{name}"}


def pod_ip(result: dict) -> str:
    return str(ipaddress.ip_interface(result["ips"][0]["address"]).ip)


def env_for(lab: CniLab, command: str, cid: str = "ctr1", sandbox: str | None = None, ifname: str = "eth0",
            **extra) -> dict:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname,
           "CNI_PATH": os.pathsep.join(CNI_PATH), **extra}
    if sandbox:
        env["CNI_NETNS"] = sandbox
    return env


# -- ADD ----------------------------------------------------------------------------------


def test_add_gives_a_working_interface_with_the_result_portmap_needs(lab):
    a, b = lab.sandbox("a"), lab.sandbox("b")
    rt = lab.runtime()
    ra = rt.add("ctr-a", a, "eth0", k8s_args("a"))
    rb = rt.add("ctr-b", b, "eth0", k8s_args("b"))
    # interfaces: host veth (no sandbox), then the pod interface with sandbox = CNI_NETNS
    assert [i.get("sandbox") for i in ra["interfaces"]] == [None, a]
    host, pod = ra["interfaces"]
    assert host["name"].startswith("veth") and pod["name"] == "eth0"
    assert ra["ips"] == [{"interface": 1, "address": "10.244.1.2/24", "gateway": GATEWAY}]
    assert ra["routes"] == [{"dst": "0.0.0.0/0", "gw": GATEWAY}, {"dst": "10.244.0.0/16", "gw": GATEWAY}]
    assert ra["cniVersion"] == "1.0.0" and ra["dns"] == {}
    assert pod_ip(rb) == "10.244.1.3"
    links = lab.links()
    assert links[host["name"]]["master"] == "cni0" and links[host["name"]]["mac"] == host["mac"]
    assert {"dev": "cni0", "cidr": f"{GATEWAY}/24"} in observe.observe_addresses(lab.node)
    sandbox_links = lab.links(lab.prefix + "a")
    assert sandbox_links["eth0"]["mac"] == pod["mac"] and sandbox_links["eth0"]["mtu"] == 1450
    assert ping(lab.prefix + "a", pod_ip(rb)).returncode == 0, "pod a cannot reach pod b"
    assert ping(lab.prefix + "b", GATEWAY).returncode == 0, "pod b cannot reach the bridge"
    assert lab.allocations() == ["10.244.1.2", "10.244.1.3"]
    # the runtime cached the final result where libcni does
    cached = json.load(open(os.path.join(lab.cache_dir, "results", f"{NETWORK}-ctr-a-eth0")))
    assert cached["kind"] == "cniCacheV1" and cached["result"] == ra


def test_add_fails_if_the_interface_exists_and_leaves_it_alone(lab):
    a = lab.sandbox("a")
    assert run("ip", "-n", lab.prefix + "a", "link", "add", "eth0", "type", "veth", "peer", "name", "other").returncode == 0
    with pytest.raises(CniError) as info:
        lab.runtime().add("ctr-a", a, "eth0", k8s_args("a"), cleanup=False)
    assert 'interface "eth0" already exists' in info.value.msg
    assert set(lab.links(lab.prefix + "a")) == {"lo", "eth0", "other"}
    assert lab.allocations() == [] and not [n for n in lab.links() if n.startswith("veth")]


# -- DEL ----------------------------------------------------------------------------------


def test_del_is_idempotent(lab):
    a = lab.sandbox("a")
    rt = lab.runtime()
    result = rt.add("ctr-a", a, "eth0", k8s_args("a"))
    veth = result["interfaces"][0]["name"]
    rt.delete("ctr-a", a, "eth0", k8s_args("a"))
    rt.delete("ctr-a", a, "eth0", k8s_args("a"))
    assert veth not in lab.links() and "eth0" not in lab.links(lab.prefix + "a")
    assert lab.allocations() == []
    assert rt.cached_result("ctr-a", "eth0") is None


def test_del_succeeds_when_the_netns_is_gone(lab):
    a = lab.sandbox("a")
    rt = lab.runtime()
    result = rt.add("ctr-a", a, "eth0", k8s_args("a"))
    netns.delete(lab.prefix + "a")
    assert netns.wait_gone([lab.prefix + "a"]) == []
    rt.delete("ctr-a", a, "eth0", k8s_args("a"))
    assert lab.allocations() == []
    deadline = time.monotonic() + 5
    while result["interfaces"][0]["name"] in lab.links() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert result["interfaces"][0]["name"] not in lab.links()


def test_del_succeeds_when_the_allocation_is_gone_and_still_removes_the_veth(lab):
    a = lab.sandbox("a")
    rt = lab.runtime()
    result = rt.add("ctr-a", a, "eth0", k8s_args("a"))
    os.unlink(os.path.join(lab.data_dir, NETWORK, pod_ip(result)))
    rt.delete("ctr-a", a, "eth0", k8s_args("a"))
    assert result["interfaces"][0]["name"] not in lab.links()


def test_del_without_netns_or_prev_result_releases_the_address(lab):
    a = lab.sandbox("a")
    result = lab.runtime().add("ctr-a", a, "eth0", k8s_args("a"))
    proc = lab.exec_plugin("overlaynet-flannel", env_for(lab, "DEL", "ctr-a"), lab.plugin_request(lab.flannel()))
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    assert lab.allocations() == []
    # The host veth is named by the attachment (container id, ifname): DEL finds it without
    # the pod's name, its netns or a prevResult, and removes it (cni.md §4: host-side state).
    assert result["interfaces"][0]["name"] not in lab.links()


def test_del_with_a_stale_prev_result_leaves_a_newer_attachments_veth(lab):
    a = lab.sandbox("a")
    rt = lab.runtime()
    old = rt.add("ctr-old", a, "eth0", k8s_args("web"))
    rt.delete("ctr-old", a, "eth0", k8s_args("web"))
    new = rt.add("ctr-new", a, "eth0", k8s_args("web"))  # same pod, a new sandbox
    assert new["interfaces"][0]["name"] != old["interfaces"][0]["name"]  # named by the sandbox, not the pod
    stale = lab.plugin_request(lab.flannel(), prevResult=old)
    proc = lab.exec_plugin("overlaynet-flannel",
                           env_for(lab, "DEL", "ctr-old", a, CNI_ARGS=spec.format_cni_args(k8s_args("web"))), stale)
    assert proc.returncode == 0, proc.stdout
    assert new["interfaces"][0]["name"] in lab.links()
    rt.check("ctr-new", a, "eth0")


# -- CHECK --------------------------------------------------------------------------------


@pytest.mark.parametrize("damage,words", [
    (["route", "del", "default"], "route 0.0.0.0/0 via 10.244.1.1 dev eth0"),
    (["route", "del", "10.244.0.0/16"], "route 10.244.0.0/16 via 10.244.1.1 dev eth0"),
    (["addr", "del", "10.244.1.2/24", "dev", "eth0"], "address 10.244.1.2/24 on eth0"),
    (["link", "del", "eth0"], "interface eth0 in the sandbox"),
])
def test_check_detects_what_is_missing(lab, damage, words):
    a = lab.sandbox("a")
    rt = lab.runtime()
    rt.add("ctr-a", a, "eth0", k8s_args("a"))
    rt.check("ctr-a", a, "eth0")
    assert run("ip", "-n", lab.prefix + "a", *damage).returncode == 0
    with pytest.raises(CniError) as info:
        rt.check("ctr-a", a, "eth0")
    assert words in info.value.msg, info.value.msg


def test_check_detects_a_released_address(lab):
    a = lab.sandbox("a")
    rt = lab.runtime()
    result = rt.add("ctr-a", a, "eth0", k8s_args("a"))
    os.unlink(os.path.join(lab.data_dir, NETWORK, pod_ip(result)))
    with pytest.raises(CniError) as info:
        rt.check("ctr-a", a, "eth0")
    assert "no address is allocated to ctr-a/eth0" in info.value.msg


def test_check_without_prev_result_fails(lab):
    a = lab.sandbox("a")
    lab.runtime().add("ctr-a", a, "eth0", k8s_args("a"))
    proc = lab.exec_plugin("overlaynet-flannel", env_for(lab, "CHECK", "ctr-a", a), lab.plugin_request(lab.flannel()))
    assert proc.returncode != 0 and "prevResult" in json.loads(proc.stdout)["msg"]


# -- ADD errors leave nothing behind ------------------------------------------------------


def _bad_add_cases(lab: CniLab, sandbox: str) -> dict:
    good = lab.plugin_request(lab.flannel())
    add_env = env_for(lab, "ADD", "ctr-x", sandbox)
    return {
        "nonexistent netns": (env_for(lab, "ADD", "ctr-x", f"/run/netns/{lab.prefix}nope"), good, 3),
        "malformed JSON": (add_env, good[:-7], 6),
        "missing CNI_NETNS": ({k: v for k, v in add_env.items() if k != "CNI_NETNS"}, good, 4),
        "missing CNI_CONTAINERID and CNI_IFNAME": ({k: v for k, v in add_env.items()
                                                   if k not in ("CNI_CONTAINERID", "CNI_IFNAME")}, good, 4),
        "unsupported version": (add_env, lab.plugin_request(lab.flannel(), version="0.3.1"), 1),
        "bad version string": (add_env, lab.plugin_request(lab.flannel(), version="1.0"), 6),
        "ifname too long": (env_for(lab, "ADD", "ctr-x", sandbox, ifname="a" * 16), good, 4),
        "no overlaynet object": (add_env, lab.plugin_request({"type": "overlaynet-flannel", "ipam": lab.flannel()["ipam"]}), 7),
        "bad mtu": (add_env, lab.plugin_request(lab.flannel(mtu="big")), 2),
    }


@pytest.mark.parametrize("case", ["nonexistent netns", "malformed JSON", "missing CNI_NETNS",
                                  "missing CNI_CONTAINERID and CNI_IFNAME", "unsupported version",
                                  "bad version string", "ifname too long", "no overlaynet object", "bad mtu"])
@pytest.mark.parametrize("plugin", ["overlaynet-flannel", "overlaynet-ipam"])
def test_bad_add_returns_the_right_code_and_leaves_nothing(lab, case, plugin):
    if plugin == "overlaynet-ipam" and case in ("nonexistent netns", "no overlaynet object", "bad mtu"):
        case = "malformed JSON"  # the IPAM plugin has no netns or overlaynet object to check
    sandbox = lab.sandbox("x")
    env, stdin, code = _bad_add_cases(lab, sandbox)[case]
    links_before = set(lab.links())
    proc = lab.exec_plugin(plugin, env, stdin)
    assert proc.returncode != 0
    error = json.loads(proc.stdout)  # errors on stdout (cni.md §2)
    assert error["code"] == code, error
    assert error["msg"]
    assert set(lab.links()) == links_before
    assert set(lab.links(lab.prefix + "x")) == {"lo"}
    assert lab.allocations() == []


# -- concurrency, exhaustion, half-way failures -------------------------------------------


@pytest.mark.parametrize("path", ["standalone", "thin"])
def test_fifty_concurrent_adds_get_fifty_distinct_addresses(lab, path):
    sandboxes = [lab.sandbox(f"p{i}") for i in range(50)]
    rt = lab.runtime(lab.conflist(lab.flannel(**({"agentSocket": lab.start_agent()} if path == "thin" else {}))))

    def add(i):
        return rt.add(f"ctr-{i}", sandboxes[i], "eth0", k8s_args(f"p{i}"))

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(add, range(50)))
    ips = [pod_ip(r) for r in results]
    assert len(set(ips)) == 50
    assert lab.allocations() == sorted(ips)
    for i in (0, 25, 49):
        assert {"dev": "eth0", "cidr": f"{ips[i]}/24"} in observe.observe_addresses(lab.prefix + f"p{i}")
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        list(pool.map(lambda i: rt.delete(f"ctr-{i}", sandboxes[i], "eth0", k8s_args(f"p{i}")), range(50)))
    assert lab.allocations() == []
    assert not [n for n in lab.links() if n.startswith("veth")]
    if path == "thin":
        assert lab.agent_log(rt.config.plugins[0]["agentSocket"]).count("cni overlaynet-flannel ADD") == 50


def test_exhausted_range_names_the_range(lab):
    a, b = lab.sandbox("a"), lab.sandbox("b")
    rt = lab.runtime(lab.conflist(lab.flannel(subnet="10.244.1.0/30")))
    assert pod_ip(rt.add("ctr-a", a, "eth0", k8s_args("a"))) == "10.244.1.2"
    with pytest.raises(CniError) as info:
        rt.add("ctr-b", b, "eth0", k8s_args("b"))
    assert "no IP addresses available in range set 10.244.1.0/30" in info.value.msg
    assert lab.allocations() == ["10.244.1.2"]
    assert set(lab.links(lab.prefix + "b")) == {"lo"}


def test_add_that_fails_half_way_releases_its_address(lab):
    # A device that is not a bridge holds the bridge's name: IPAM ADD has run when the
    # plugin finds out; the address must be given back and no veth left.
    a = lab.sandbox("a")
    assert run("ip", "-n", lab.node, "link", "add", "cni0", "type", "veth", "peer", "name", "cni0-peer").returncode == 0
    with pytest.raises(CniError) as info:
        lab.runtime().add("ctr-a", a, "eth0", k8s_args("a"), cleanup=False)
    assert "cni0 exists and is a veth, not a bridge" in info.value.msg
    assert os.path.exists(os.path.join(lab.data_dir, NETWORK, "last_reserved_ip.0")), "IPAM ADD did not run"
    assert lab.allocations() == []
    assert set(lab.links()) == {"lo", "cni0", "cni0-peer"} and set(lab.links(lab.prefix + "a")) == {"lo"}


def test_add_fails_when_ipam_hands_out_an_address_outside_the_pod_cidr(lab):
    a = lab.sandbox("a")
    with pytest.raises(CniError) as info:
        lab.runtime(lab.conflist(lab.flannel(subnet="10.244.7.0/24"))).add("ctr-a", a, "eth0", k8s_args("a"), cleanup=False)
    assert "outside the node's podCIDR 10.244.1.0/24" in info.value.msg
    assert lab.allocations() == [] and set(lab.links(lab.prefix + "a")) == {"lo"}


def test_a_failing_plugin_later_in_the_chain_leaves_nothing(lab):
    crash = lab.tmp / "bin"
    crash.mkdir()
    script = crash / "crashy"
    script.write_text("#!/usr/bin/env python3\nimport sys\nsys.stderr.write('boom: out of widgets\\n')\n"
                      "print('this is not JSON')\nsys.exit(2)\n")
    script.chmod(0o755)
    a = lab.sandbox("a")
    conflist = lab.conflist(lab.flannel(), {"type": "crashy"})
    rt = CniRuntime(conflist, [PLUGIN_DIR, str(crash)], lab.cache_dir, exec_netns=lab.node)
    with pytest.raises(CniError) as info:
        rt.add("ctr-a", a, "eth0", k8s_args("a"))
    assert "crashy" in info.value.msg and "boom: out of widgets" in info.value.details
    assert "this is not JSON" in info.value.details
    # the runtime's DEL after the failed ADD took the first plugin's work apart
    assert lab.allocations() == [] and set(lab.links(lab.prefix + "a")) == {"lo"}
    assert not [n for n in lab.links() if n.startswith("veth")]


def test_a_plugin_missing_from_the_path_is_named_with_every_directory(lab):
    rt = lab.runtime(lab.conflist({"type": "no-such-plugin"}))
    with pytest.raises(CniError) as info:
        rt.add("ctr-a", lab.sandbox("a"), "eth0", {})
    assert '"no-such-plugin" not found' in info.value.msg
    assert PLUGIN_DIR in info.value.details and REFERENCE_DIR in info.value.details


# -- VERSION, STATUS, GC ------------------------------------------------------------------


def test_plugins_run_inside_the_node_netns_and_a_missing_one_is_named(lab):
    bin_dir = lab.tmp / "where"
    bin_dir.mkdir()
    script = bin_dir / "netns-probe"  # fails with an error object naming the netns it ran in
    script.write_text("#!/bin/sh\ncat >/dev/null\n"
                      "printf '{\"cniVersion\":\"1.0.0\",\"code\":100,\"msg\":\"ran in %s\"}' "
                      "\"$(readlink /proc/self/ns/net)\"\nexit 1\n")
    script.chmod(0o755)
    conflist = lab.conflist({"type": "netns-probe"})
    with pytest.raises(CniError) as info:
        CniRuntime(conflist, [str(bin_dir)], lab.cache_dir, exec_netns=lab.node).add(
            "ctr-a", lab.sandbox("a"), "eth0", {})
    assert f"ran in net:[{os.stat(netns.path(lab.node)).st_ino}]" in info.value.msg
    with pytest.raises(CniError) as info:
        CniRuntime(conflist, [str(bin_dir)], lab.cache_dir, exec_netns="no-such-node").add(
            "ctr-a", lab.sandbox("a"), "eth0", {})
    assert "network namespace /run/netns/no-such-node does not exist" in info.value.msg


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
@pytest.mark.parametrize("plugin", ["overlaynet-flannel", "overlaynet-calico", "overlaynet-ipam"])
def test_version_answers_each_version(lab, plugin, version):
    proc = lab.exec_plugin(plugin, {"CNI_COMMAND": "VERSION"}, json.dumps({"cniVersion": version}), in_node=False)
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"cniVersion": version, "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_add_answers_in_the_version_asked(lab, version):
    a = lab.sandbox("a")
    result = lab.runtime(lab.conflist(version=version)).add("ctr-a", a, "eth0", k8s_args("a"))
    assert result["cniVersion"] == version
    assert ("version" in result["ips"][0]) == (version == "0.4.0")
    assert ("mtu" in result["interfaces"][1]) == (version == "1.1.0")


def test_status_of_1_1(lab):
    rt = lab.runtime(lab.conflist(lab.flannel(subnet="10.244.1.0/30"), version="1.1.0"))
    rt.status()
    rt.add("ctr-a", lab.sandbox("a"), "eth0", k8s_args("a"))
    with pytest.raises(CniError) as info:
        rt.status()
    assert info.value.code == 50 and "10.244.1.0/30" in info.value.msg
    # STATUS with a 1.0.0 configuration is refused by the plugin (code 1)
    proc = lab.exec_plugin("overlaynet-flannel", {"CNI_COMMAND": "STATUS", "CNI_PATH": os.pathsep.join(CNI_PATH)},
                           lab.plugin_request(lab.flannel()))
    assert json.loads(proc.stdout)["code"] == 1


def test_status_is_50_when_the_bridge_name_is_taken(lab):
    rt = lab.runtime(lab.conflist(version="1.1.0"))
    assert run("ip", "-n", lab.node, "link", "add", "cni0", "type", "veth", "peer", "name", "cni0-peer").returncode == 0
    with pytest.raises(CniError) as info:
        rt.status()
    assert info.value.code == 50 and "not a bridge" in info.value.msg


def test_gc_of_1_1_frees_what_is_not_valid(lab):
    rt = lab.runtime(lab.conflist(version="1.1.0"))
    results = {name: rt.add(f"ctr-{name}", lab.sandbox(name), "eth0", k8s_args(name)) for name in ("a", "b", "c")}
    # an allocation the runtime has no cache for (a lost cache): only the plugins' GC frees it
    os.unlink(rt.cache_path("ctr-c", "eth0"))
    rt.gc([("ctr-a", "eth0")])
    assert lab.allocations() == [pod_ip(results["a"])]
    links = lab.links()
    assert results["a"]["interfaces"][0]["name"] in links
    assert results["b"]["interfaces"][0]["name"] not in links  # DEL of the cached attachment
    assert rt.cached_attachments() == [("ctr-a", "eth0")]


# -- the thin path ------------------------------------------------------------------------


def _normalized(result: dict) -> dict:
    doc = json.loads(json.dumps(result))
    for interface in doc["interfaces"]:
        interface.pop("mac")
        interface.pop("sandbox", None)
    return doc


def test_thin_path_through_the_agent_gives_the_same_result_as_standalone(lab):
    sock = lab.start_agent()
    node2 = lab.namespace("node2")
    standalone = lab.runtime(lab.conflist(lab.flannel()), cache=str(lab.tmp / "c1"))
    thin_conf = lab.flannel(agentSocket=sock, ipam={"type": "overlaynet-ipam", "ranges": [[{"subnet": POD_CIDR}]],
                                                    "dataDir": str(lab.tmp / "ipam2")})
    thin = CniRuntime(lab.conflist(thin_conf), CNI_PATH, str(lab.tmp / "c2"), exec_netns=node2)
    a, b = lab.sandbox("a"), lab.sandbox("b")
    ra = standalone.add("ctr-1", a, "eth0", k8s_args("web"))
    rb = thin.add("ctr-1", b, "eth0", k8s_args("web"))
    assert _normalized(ra) == _normalized(rb)
    assert rb["interfaces"][1]["sandbox"] == b
    assert "cni overlaynet-flannel ADD ctr-1/eth0: exit 0" in lab.agent_log(sock)
    assert ping(lab.prefix + "b", GATEWAY).returncode == 0
    thin.check("ctr-1", b, "eth0")
    thin.delete("ctr-1", b, "eth0")
    thin.delete("ctr-1", b, "eth0")
    assert "cni overlaynet-flannel DEL ctr-1/eth0: exit 0" in lab.agent_log(sock)
    assert sorted(os.listdir(lab.tmp / "ipam2" / NETWORK)) == ["last_reserved_ip.0", "lock"]
    assert not [n for n in lab.links(node2) if n.startswith("veth")]
    # errors come back through the agent as they would standalone
    with pytest.raises(CniError) as info:
        thin.add("ctr-2", f"/run/netns/{lab.prefix}nope", "eth0", {}, cleanup=False)
    assert info.value.code == 3
    # the op itself: a CNI failure is an answer; only a malformed request is an agent error
    with AgentClient(sock, cluster=lab.cluster) as client:
        reply = client.call("cni", {"plugin": "overlaynet-flannel", "env": {"CNI_COMMAND": "ADD"}, "stdin": "{}",
                                    "pid": os.getpid()})
        assert reply["exit_code"] == 1 and json.loads(reply["stdout"])["code"] == 4
        for bad, words in (({"pid": 0}, "pid must be"), ({"env": "x"}, "env must be"), ({"stdin": 3}, "stdin must be")):
            request = {"plugin": "overlaynet-flannel", "env": {}, "stdin": "", "pid": os.getpid(), **bad}
            with pytest.raises(AgentError) as agent_error:
                client.call("cni", request)
            assert words in str(agent_error.value)
        assert client.ping()["pid"] > 0  # still serving


def test_a_configured_agent_that_does_not_answer_means_standalone(lab):
    dead = str(lab.tmp / "no-agent.sock")
    rt = lab.runtime(lab.conflist(lab.flannel(agentSocket=dead)))
    result = rt.add("ctr-a", lab.sandbox("a"), "eth0", k8s_args("a"))
    assert pod_ip(result) == "10.244.1.2"
    rt.delete("ctr-a", lab.sandbox("a"), "eth0")
    assert lab.allocations() == []


# -- the routed mode ----------------------------------------------------------------------


def calico_conf(lab: CniLab, **extra) -> dict:
    # blockSize and pool come from the cluster document, cluster and node from the overlaynet object
    return {"type": "overlaynet-calico",
            "ipam": {"type": "overlaynet-ipam", "mode": "blocks", "stateDir": str(lab.tmp / "state")},
            "overlaynet": {"cluster": model.build_spec(name=lab.cluster, nodes=1, cni="calico", block_size=29).to_document(),
                           "node": {"name": "node-1", "ip": "172.20.0.11"}}, **extra}


def test_calico_plugin_wires_routed_pods(lab):
    from overlaynet.datapath.plan import Address, Route, VethPair

    # the node's uplink and default route (proxy ARP needs one, calico.md §1.3)
    uplink = lab.namespace("uplink")
    kapply.apply((VethPair(lab.node, "eth0", uplink, "eth0"), Address(lab.node, "eth0", "172.20.0.11/24"),
                  Address(uplink, "eth0", "172.20.0.1/24"), Route(lab.node, "0.0.0.0/0", gateway="172.20.0.1")))
    rt = lab.runtime(lab.conflist(calico_conf(lab), version="1.1.0"))
    rt.status()
    a, b = lab.sandbox("a"), lab.sandbox("b")
    ra = rt.add("ctr-a", a, "eth0", k8s_args("a"))
    rb = rt.add("ctr-b", b, "eth0", k8s_args("b"))
    host = ra["interfaces"][0]
    assert host["name"].startswith("cali") and len(host["name"]) == 15 and host["mac"] == "ee:ee:ee:ee:ee:ee"
    assert ra["ips"][0]["address"].endswith("/32") and ra["ips"][0]["interface"] == 1
    assert {"dst": "169.254.1.1/32", "scope": 253} in ra["routes"]
    assert any(r["dst"] == f"{pod_ip(ra)}/32" and r["dev"] == host["name"] for r in observe.observe_routes(lab.node))
    assert ping(lab.prefix + "a", pod_ip(rb)).returncode == 0, "routed pod a cannot reach pod b"
    rt.check("ctr-a", a, "eth0")
    rt.delete("ctr-a", a, "eth0")
    rt.delete("ctr-a", a, "eth0")
    assert host["name"] not in lab.links()
    rt.gc([("ctr-b", "eth0")])
    rt.check("ctr-b", b, "eth0")
