"""The agent on real namespaces: a real agent process, real sockets, real packets.

Two namespaces joined by a veth pair (``a`` 10.99.0.1/24 -- ``b`` 10.99.0.2/24), named with a
random ``t-agent-<hex>.`` prefix and always deleted by the fixture. Each test starts its own
agent with ``start_agent`` (control socket in a short temporary directory) and stops it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from overlaynet.agent import client as agent_client
from overlaynet.agent.client import AgentClient, find_agent_pids, start_agent, stop_agent
from overlaynet.errors import AgentError
from overlaynet.kernel import netns

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
A_IP, B_IP = "10.99.0.1", "10.99.0.2"
B_ALT = "10.99.1.2"         # b's second address, on its lo
NO_HOST = "10.99.0.77"      # in the subnet, nobody answers ARP
NO_ROUTE = "10.98.7.7"      # no route at all
PORT = 8080
BOTH = [(PORT, "TCP"), (PORT, "UDP")]


def ip(*argv: str) -> str:
    return subprocess.run(["ip", *argv], check=True, capture_output=True, text=True).stdout


def in_netns(name: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True, text=True, timeout=timeout)


def curl(name: str, url: str) -> subprocess.CompletedProcess:
    return in_netns(name, "curl", "-s", "-m", "5", url)


def udp_ask(name: str, dst: str, port: int, message: str, connected: bool = False) -> str:
    """A plain Python UDP client run inside ``name``, independent of the agent's own prober.

    ``connected``: accept the answer only from ``dst:port`` (the kernel drops any other).
    """
    code = textwrap.dedent(f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        if {connected!r}:
            s.connect(({dst!r}, {port}))
        s.sendto({message.encode()!r}, ({dst!r}, {port}))
        print(s.recv(2048).decode())
    """)
    result = in_netns(name, sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def prefix():
    return f"t-agent-{secrets.token_hex(3)}."


@pytest.fixture(scope="module")
def pair(prefix):
    """Namespaces ``a`` and ``b`` joined by a veth pair: (name_a, name_b)."""
    a, b = f"{prefix}a", f"{prefix}b"
    try:
        netns.ensure(a)
        netns.ensure(b)
        ip("-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b)
        for name, address in ((a, A_IP), (b, B_IP)):
            ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", name, "link", "set", "eth0", "up")
            ip("-n", name, "link", "set", "lo", "up")
        # b has a second address on another interface, reached from a through b's eth0 address:
        # answers to it must still come from it, not from the address the route back picks.
        ip("-n", b, "addr", "add", f"{B_ALT}/32", "dev", "lo")
        ip("-n", a, "route", "add", f"{B_ALT}/32", "via", B_IP)
        yield a, b
    finally:
        for name in (a, b):
            netns.delete(name)
        assert netns.wait_gone([a, b]) == []


@pytest.fixture
def sockdir():
    path = tempfile.mkdtemp(prefix="t-agent-", dir="/tmp")  # short: sun_path holds 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent(prefix, sockdir):
    """A running agent: (AgentClient, pid, socket path, cluster name)."""
    cluster = f"{prefix}c"
    path = os.path.join(sockdir, "agent.sock")
    pid = start_agent(cluster, path, os.path.join(sockdir, "agent.log"))
    client = AgentClient(path, cluster=cluster)
    try:
        yield client, pid, path, cluster
    finally:
        client.close()
        stop_agent(cluster, path)


@pytest.fixture
def served(agent, pair):
    client = agent[0]
    a, b = pair
    client.serve("pod-a", a, "pod-a", BOTH)
    client.serve("pod-b", b, "pod-b", BOTH)
    return client


def probe_one(client: AgentClient, source: str, dst: str, protocol: str, port: int = PORT, timeout: float = 2.0) -> dict:
    [result] = client.probe([{"id": "p", "netns": source, "dst": dst, "port": port, "protocol": protocol}], timeout)
    assert result["id"] == "p"
    return result


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


# -- the test server, from a real client ------------------------------------------------------


def test_http_hostname_and_clientip_from_the_other_netns(served, pair):
    a, _ = pair
    assert curl(a, f"http://{B_IP}:{PORT}/hostname").stdout == "pod-b"
    assert curl(a, f"http://{B_IP}:{PORT}/").stdout == "pod-b"
    client_ip, _, port = curl(a, f"http://{B_IP}:{PORT}/clientip").stdout.partition(":")
    assert client_ip == A_IP and port.isdigit()
    assert curl(a, f"http://{B_IP}:{PORT}/echo?msg=hello%20pods").stdout == "hello pods"
    assert curl(a, f"http://{B_IP}:{PORT}/healthz").stdout == "ok"
    missing = in_netns(a, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{B_IP}:{PORT}/nope")
    assert missing.stdout == "404"


def test_http_headers_are_what_curl_expects(served, pair):
    a, _ = pair
    head = subprocess.run(["ip", "netns", "exec", a, "curl", "-s", "-i", f"http://{B_IP}:{PORT}/hostname"],
                          capture_output=True, timeout=20).stdout  # bytes: keep the CRLFs
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 5\r\n" in head and b"\r\nConnection: close\r\n" in head
    assert b"\r\nContent-Type: text/plain" in head and head.endswith(b"\r\n\r\npod-b")


def test_udp_hostname_clientip_echo(served, pair):
    a, _ = pair
    assert udp_ask(a, B_IP, PORT, "hostname") == "pod-b"
    assert udp_ask(a, B_IP, PORT, "clientip").startswith(f"{A_IP}:")
    assert udp_ask(a, B_IP, PORT, "echo over udp") == "over udp"


def test_dial_is_made_from_inside_the_serving_pod(served, pair):
    a, _ = pair
    # Ask pod-a's server (over its loopback) to dial pod-b: the dial leaves from pod-a's netns.
    url = f"http://127.0.0.1:{PORT}/dial?host={B_IP}&port={PORT}&protocol=http&request=hostname&tries=3"
    assert json.loads(curl(a, url).stdout) == {"responses": ["pod-b"] * 3, "errors": []}
    url = f"http://127.0.0.1:{PORT}/dial?host={B_IP}&port={PORT}&protocol=udp&request=clientip"
    reply = json.loads(curl(a, url).stdout)
    assert reply["errors"] == [] and reply["responses"][0].startswith(f"{A_IP}:")
    url = f"http://127.0.0.1:{PORT}/dial?host={B_IP}&port=9&request=hostname&tries=2"
    assert json.loads(curl(a, url).stdout) == {
        "responses": [], "errors": [f"http {B_IP}:9: connection refused"] * 2}


# -- probes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_probe_reports_the_address_the_receiver_saw(served, pair, protocol):
    a, _ = pair
    result = probe_one(served, a, B_IP, protocol)
    assert result["ok"] and result["error"] is None
    assert result["local"] == result["seen"] == A_IP
    assert 0 < result["rtt_ms"] < 2000


@pytest.mark.parametrize("protocol", ["tcp", "udp", "icmp"])
def test_a_multi_homed_server_answers_from_the_address_asked(served, pair, protocol):
    """Like a pod asking its node's eth0 address, when the node's route back leaves by cni0."""
    a, b = pair
    route_back = in_netns(b, "ip", "route", "get", A_IP).stdout
    assert f"src {B_IP}" in route_back  # so an answer would leave from B_IP if nobody cared
    result = probe_one(served, a, B_ALT, protocol)
    assert result["ok"], result
    assert result["local"] == A_IP
    assert result["seen"] == (B_ALT if protocol == "icmp" else A_IP)
    if protocol == "udp":
        assert udp_ask(a, B_ALT, PORT, "hostname", connected=True) == "pod-b"


def test_probe_icmp(served, pair):
    a, _ = pair
    result = probe_one(served, a, B_IP, "icmp")
    assert result["ok"] and result["error"] is None
    assert result["local"] == A_IP   # the source address the kernel picked
    assert result["seen"] == B_IP    # the source of the echo reply


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_probe_to_an_unserved_port_is_refused_at_once(served, pair, protocol):
    a, _ = pair
    started = time.monotonic()
    result = probe_one(served, a, B_IP, protocol, port=9, timeout=5.0)
    assert not result["ok"] and result["error"] == "connection refused"
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("protocol", ["tcp", "udp", "icmp"])
def test_probe_to_nobody_ends_within_its_timeout(served, pair, protocol):
    a, _ = pair
    started = time.monotonic()
    result = probe_one(served, a, NO_HOST, protocol, timeout=0.5)
    assert not result["ok"] and result["error"] in ("timeout", "host unreachable")
    assert result["rtt_ms"] < 700
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("protocol", ["tcp", "udp", "icmp"])
def test_probe_without_a_route_fails_fast(served, pair, protocol):
    a, _ = pair
    result = probe_one(served, a, NO_ROUTE, protocol)
    assert not result["ok"] and result["error"] == "network unreachable"
    assert result["rtt_ms"] < 500


def test_probe_from_a_missing_netns_says_so(served, prefix):
    result = probe_one(served, f"{prefix}missing", B_IP, "tcp")
    assert not result["ok"] and "does not exist" in result["error"] and f"{prefix}missing" in result["error"]


def test_many_probes_at_once_are_all_answered_and_kept_apart(served, pair):
    a, b = pair
    probes = [
        {"id": [i, src, proto], "netns": src, "dst": dst, "port": PORT, "protocol": proto}
        for i in range(150) for src, dst in ((a, B_IP), (b, A_IP)) for proto in ("tcp", "udp", "icmp")
    ]
    results = served.probe(probes, timeout=3.0)
    assert [r["id"] for r in results] == [p["id"] for p in probes]
    bad = [r for r in results if not r["ok"]]
    assert bad == []
    for r in results:
        source_ip = A_IP if r["id"][1] == a else B_IP
        assert r["local"] == source_ip
        assert r["seen"] == (source_ip if r["id"][2] != "icmp" else ({A_IP, B_IP} - {source_ip}).pop())


@pytest.fixture
def worker_agent(prefix, sockdir, pair, monkeypatch):
    """An agent that shares every large probe batch between two worker processes, whatever
    the CPUs: (AgentClient, pid, log path), serving pod-a and pod-b."""
    from overlaynet.agent import reachability

    monkeypatch.setenv(reachability.WORKERS_ENV, "2")
    cluster, path, log = f"{prefix}w", os.path.join(sockdir, "agent.sock"), os.path.join(sockdir, "agent.log")
    pid = start_agent(cluster, path, log)
    client = AgentClient(path, cluster=cluster)
    try:
        client.serve("pod-a", pair[0], "pod-a", BOTH)
        client.serve("pod-b", pair[1], "pod-b", BOTH)
        yield client, pid, log
    finally:
        client.close()
        stop_agent(cluster, path)


def test_a_large_batch_is_probed_by_workers_and_judged_as_in_the_agent(worker_agent, pair, prefix):
    from overlaynet.agent import reachability

    client, pid, log = worker_agent
    a, b = pair
    kinds = [(src, dst, PORT, proto) for src, dst in ((a, B_IP), (b, A_IP), (a, B_ALT)) for proto in ("tcp", "udp", "icmp")]
    kinds += [(a, B_IP, 9, "tcp"), (a, NO_ROUTE, PORT, "tcp"), (a, NO_ROUTE, PORT, "udp"), (a, NO_ROUTE, PORT, "icmp"),
              (f"{prefix}missing", B_IP, PORT, "tcp"), (f"{prefix}missing", B_IP, PORT, "icmp")]
    copies = -(-reachability.PARALLEL_MIN // len(kinds))
    probes = [{"id": [k, c], "netns": src, "dst": dst, "port": port, "protocol": proto}
              for c in range(copies) for k, (src, dst, port, proto) in enumerate(kinds)]
    # a closed UDP port once only: the kernel rate-limits the port unreachables that say so
    probes.append({"id": "udp-refused", "netns": a, "dst": B_IP, "port": 9, "protocol": "udp"})
    results = client.probe(probes, timeout=2.0)
    with open(log) as f:
        logged = f.read()
    assert f"probe: {len(probes)} probes in " in logged and "(2 workers)" in logged
    assert [r["id"] for r in results] == [p["id"] for p in probes]

    def verdict(result: dict) -> tuple:
        return result["ok"], result["error"], result["local"], result["seen"]

    # the same probes one at a time, on the agent's own loop
    alone = [verdict(probe_one(client, src, dst, proto, port)) for src, dst, port, proto in kinds]
    assert [verdict(r) for r in results[:-1]] == [alone[k] for k, _ in (r["id"] for r in results[:-1])]
    assert alone[0] == (True, None, A_IP, A_IP) and alone[2] == (True, None, A_IP, B_IP)
    assert alone[len(kinds) - 6][1] == "connection refused"
    assert results[-1]["error"] == "connection refused"
    # the workers are gone with the batch
    children = [p for p in os.listdir("/proc") if p.isdigit() and os.path.exists(f"/proc/{p}/stat")]
    workers = []
    for child in children:
        try:
            with open(f"/proc/{child}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{child}/cmdline", "rb") as f:
                cmdline = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if ppid == pid and b"overlaynet.agent.reachability" in cmdline:
            workers.append(child)
    assert workers == []


def test_probe_requests_are_validated(served, pair):
    a, _ = pair
    with pytest.raises(AgentError, match=r"probe 1: protocol 'sctp' is not one of tcp, udp, icmp"):
        served.probe([{"id": 0, "netns": a, "dst": B_IP, "port": 1, "protocol": "tcp"},
                      {"id": 1, "netns": a, "dst": B_IP, "port": 1, "protocol": "sctp"}])
    assert served.probe([]) == []


# -- serve, pause, replace, unserve -------------------------------------------------------------


def test_set_serving_false_refuses_tcp_and_true_restores_it(served, pair):
    a, _ = pair
    paused = served.set_serving("pod-b", False)
    assert paused["serving"] is False and paused["open"] == []
    assert probe_one(served, a, B_IP, "tcp")["error"] == "connection refused"
    assert probe_one(served, a, B_IP, "udp")["error"] == "connection refused"
    assert curl(a, f"http://{B_IP}:{PORT}/hostname").returncode == 7  # curl: could not connect
    assert served.set_serving("pod-b", False)["serving"] is False  # idempotent
    time.sleep(0.2)
    assert probe_one(served, a, B_IP, "tcp")["error"] == "connection refused"  # still closed
    resumed = served.set_serving("pod-b", True)
    assert resumed["serving"] is True and resumed["open"] == [[PORT, "TCP"], [PORT, "UDP"]]
    assert probe_one(served, a, B_IP, "tcp")["ok"]
    assert curl(a, f"http://{B_IP}:{PORT}/hostname").stdout == "pod-b"


def test_serve_replaces_the_port_set(served, pair):
    a, b = pair
    described = served.serve("pod-b", b, "pod-b-renamed", [(8081, "TCP")])
    assert described["ports"] == [[8081, "TCP"]] and described["open"] == [[8081, "TCP"]]
    assert probe_one(served, a, B_IP, "tcp", port=PORT)["error"] == "connection refused"
    assert probe_one(served, a, B_IP, "udp", port=PORT)["error"] == "connection refused"
    assert curl(a, f"http://{B_IP}:8081/hostname").stdout == "pod-b-renamed"
    assert served.serve("pod-b", b, "pod-b-renamed", [(8081, "TCP")]) == described  # idempotent
    keys = {k["key"]: k for k in served.list()}
    assert set(keys) == {"pod-a", "pod-b"} and keys["pod-b"]["ports"] == [[8081, "TCP"]]


def test_a_failed_serve_changes_nothing(served, pair):
    a, _ = pair
    # pod-a already holds TCP 8080 in netns a; another key cannot bind it there.
    with pytest.raises(AgentError, match=r'key "intruder": netns "[^"]+": cannot bind TCP port 8080'):
        served.serve("intruder", a, "x", [(9000, "TCP"), (PORT, "TCP")])
    assert "intruder" not in {k["key"] for k in served.list()}
    assert probe_one(served, a, A_IP, "tcp", port=9000)["error"] == "connection refused"  # rolled back
    assert probe_one(served, a, A_IP, "tcp")["ok"]


def test_agent_errors_come_back_with_the_agents_message(served, prefix):
    with pytest.raises(AgentError, match=r'key "ghost": not served by this agent'):
        served.set_serving("ghost", True)
    with pytest.raises(AgentError, match=rf'netns "{prefix}nowhere": does not exist'):
        served.serve("ghost", f"{prefix}nowhere", "ghost", BOTH)
    with pytest.raises(AgentError, match=r"port 70000 is out of range 1-65535"):
        served.serve("ghost", f"{prefix}nowhere", "ghost", [(70000, "TCP")])
    assert served.ping()["keys"] == 2  # and the agent is still fine


def test_unserve_releases_the_netns(agent, pair, prefix):
    """Sockets keep a netns alive: deleted while served, it lingers; after unserve it is gone."""
    client = agent[0]
    a, _ = pair
    doomed = f"{prefix}doomed"
    try:
        netns.ensure(doomed)
        # A veth between `doomed` and `a`: its end in `a` lives exactly as long as `doomed` does.
        ip("-n", a, "link", "add", "tether", "type", "veth", "peer", "name", "eth0", "netns", doomed)
        client.serve("doomed", doomed, "doomed", BOTH)
        netns.delete(doomed)
        assert doomed not in ip("netns", "list")
        time.sleep(1.0)
        assert "tether" in ip("-n", a, "link", "show"), "the agent's sockets should keep the namespace alive"
        assert client.unserve("doomed") is True
        assert client.unserve("doomed") is False  # idempotent
        deadline = time.monotonic() + 10
        while "tether" in ip("-n", a, "link", "show") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "tether" not in ip("-n", a, "link", "show"), "the namespace outlived unserve"
    finally:
        netns.delete(doomed)
        subprocess.run(["ip", "-n", a, "link", "del", "tether"], capture_output=True)
    assert doomed not in ip("netns", "list")


def test_serve_follows_a_namespace_made_again_under_the_same_name(agent, prefix):
    client = agent[0]
    name = f"{prefix}reborn"
    try:
        netns.ensure(name)
        ip("-n", name, "link", "set", "lo", "up")
        client.serve("reborn", name, "first", BOTH)
        assert probe_one(client, name, "127.0.0.1", "tcp")["ok"]
        netns.delete(name)  # deleted without unserve: the old namespace lives on in the agent
        netns.ensure(name)
        ip("-n", name, "link", "set", "lo", "up")
        client.serve("reborn", name, "second", BOTH)
        for protocol in ("tcp", "udp"):
            assert probe_one(client, name, "127.0.0.1", protocol)["ok"], protocol
        assert curl(name, f"http://127.0.0.1:{PORT}/hostname").stdout == "second"
    finally:
        client.unserve("reborn")
        netns.delete(name)


# -- the process ----------------------------------------------------------------------------


def test_several_requests_on_one_connection(agent):
    _, pid, path, cluster = agent
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(b'{"op": "ping"}\n{"op": "list"}\nnot json\n{"op": "fly"}\n')
        data = b""
        while data.count(b"\n") < 4:
            data += sock.recv(65536)
    ping, listing, garbage, unknown = (json.loads(line) for line in data.splitlines())
    assert ping == {"ok": True, "cluster": cluster, "pid": pid, "keys": 0}
    assert listing == {"ok": True, "keys": []}
    assert garbage["ok"] is False and "not JSON" in garbage["error"]
    assert unknown["ok"] is False and "unknown op 'fly'" in unknown["error"]


def test_control_socket_and_log_are_root_only(agent, sockdir):
    assert os.stat(agent[2]).st_mode & 0o077 == 0
    assert os.stat(os.path.join(sockdir, "agent.log")).st_mode & 0o077 == 0


def test_the_agent_refuses_another_user_even_through_a_widened_socket(agent):
    """SO_PEERCRED: with the socket's mode opened to all (and its directory), a process of
    user nobody reaches the socket and gets a refusal, not an answer; root still does."""
    client, _, path, _ = agent
    directory_mode = os.stat(os.path.dirname(path)).st_mode & 0o777
    os.chmod(path, 0o777)
    os.chmod(os.path.dirname(path), 0o755)
    code = textwrap.dedent(f"""
        import os, socket
        os.setgid(65534); os.setuid(65534)
        sock = socket.socket(socket.AF_UNIX)
        sock.connect({path!r})
        try:
            sock.sendall(b'{{"op": "list"}}\\n')
        except BrokenPipeError:
            pass  # the refusal came first, and the agent has closed its end
        print(sock.recv(4096).decode(), end="")
    """)
    try:
        answer = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=20)
    finally:
        os.chmod(path, 0o600)
        os.chmod(os.path.dirname(path), directory_mode)
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout) == {"ok": False, "error": "refused: this agent answers only root, not uid 65534"}
    assert isinstance(client.list(), list)  # root is still answered


def test_start_agent_is_idempotent(agent):
    _, pid, path, cluster = agent
    assert start_agent(cluster, path, os.path.join(os.path.dirname(path), "other.log")) == pid
    assert find_agent_pids(cluster, path) == [pid]


def test_stop_agent_leaves_no_process_and_no_socket(prefix, sockdir):
    cluster, path = f"{prefix}stop", os.path.join(sockdir, "agent.sock")
    pid = start_agent(cluster, path, os.path.join(sockdir, "agent.log"))
    assert find_agent_pids(cluster, path) == [pid] and alive(pid)
    stop_agent(cluster, path)
    assert not alive(pid)
    assert not os.path.exists(path)
    assert find_agent_pids(cluster, path) == []
    stop_agent(cluster, path)  # idempotent


def test_find_agent_pids_after_the_starter_forgot(prefix, sockdir):
    """The process that started the agent exits (as `overlaynet up` does); `down` finds it by argv."""
    cluster, path = f"{prefix}orphan", os.path.join(sockdir, "agent.sock")
    code = ("import sys; from overlaynet.agent.client import start_agent; "
            "print(start_agent(sys.argv[1], sys.argv[2], sys.argv[3]))")
    started = subprocess.run([sys.executable, "-c", code, cluster, path, os.path.join(sockdir, "agent.log")],
                             capture_output=True, text=True, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    pid = int(started.stdout)
    try:
        assert pid not in agent_client._spawned
        assert find_agent_pids(cluster, path) == [pid]
        assert find_agent_pids(cluster, path + ".other") == []
        assert find_agent_pids(cluster + "x", path) == []
        assert AgentClient(path).ping()["pid"] == pid
    finally:
        stop_agent(cluster, path)
    assert not alive(pid) and find_agent_pids(cluster, path) == []


def test_stop_agent_kills_an_agent_that_ignores_sigterm(prefix, sockdir):
    cluster, path = f"{prefix}stubborn", os.path.join(sockdir, "agent.sock")
    pid = start_agent(cluster, path, os.path.join(sockdir, "agent.log"))
    os.kill(pid, 19)  # SIGSTOP: a stopped process does not act on SIGTERM
    original = agent_client.STOP_TIMEOUT
    agent_client.STOP_TIMEOUT = 0.5
    try:
        stop_agent(cluster, path)
    finally:
        agent_client.STOP_TIMEOUT = original
    assert not alive(pid) and not os.path.exists(path)


def test_unreachable_agent_names_the_cluster_and_socket(sockdir):
    path = os.path.join(sockdir, "nobody.sock")
    with pytest.raises(AgentError) as info:
        AgentClient(path, cluster="ghost").ping()
    assert 'cluster "ghost"' in str(info.value) and path in str(info.value)
    assert "no agent process runs for this socket" in str(info.value)


def test_a_hung_agent_is_named_from_the_process_table(agent):
    """A client that only knows the socket still learns which cluster's agent does not answer."""
    _, pid, path, cluster = agent
    os.kill(pid, 19)  # SIGSTOP: alive, listening, silent
    try:
        with pytest.raises(AgentError) as info:
            AgentClient(path, timeout=0.5).ping()
    finally:
        os.kill(pid, 18)  # SIGCONT
    message = str(info.value)
    assert path in message and "timed out" in message
    assert f'pid {pid} for cluster "{cluster}"' in message


def test_an_agent_that_cannot_start_reports_its_log(prefix, sockdir):
    too_long = os.path.join(sockdir, "x" * 120, "agent.sock")  # longer than sun_path
    with pytest.raises(AgentError) as info:
        start_agent(f"{prefix}broken", too_long, os.path.join(sockdir, "agent.log"))
    message = str(info.value)
    assert f'cluster "{prefix}broken"' in message and "exited" in message
    assert "AF_UNIX path too long" in message  # the log's tail
    assert find_agent_pids(f"{prefix}broken", too_long) == []


def test_a_second_agent_on_the_same_socket_refuses_to_start(agent, sockdir):
    _, pid, path, cluster = agent
    with pytest.raises(AgentError, match="exited"):
        start_agent(cluster + "-2", path, os.path.join(sockdir, "second.log"))
    assert AgentClient(path).ping()["pid"] == pid  # the first one still answers
