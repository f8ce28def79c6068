"""The self-heal loop (``selfHeal: true``) on real clusters: what is deleted behind overlaynet's
back — a peer route, a neighbour, an FDB entry, cni0, a whole node namespace, a BIRD, the
agent itself, a kube-proxy chain flushed or its canary deleted — comes
back within seconds with no command run, the agent's log names each repair, and real traffic
flows again; a deleted pod namespace is reported, not papered over; and a cluster without
self-heal keeps what was broken broken (the break-it labs rely on it)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from overlaynet.agent.client import find_agent_pids, find_guardian_pids
from tests.netns.clusters import Cli, agent_log, delete_vxlan_entries, in_netns, short_state_dir
from tests.netns.test_trace_fault import bring_up, pings, take_down

FLANNEL = "healfl"
CALICO = "healca"
STILL = "healno"
PATIENCE = 5.0  # seconds a repair may take here (the watcher: 0.1 s after an event, 1 s ticks)


@pytest.fixture(scope="module")
def flannel():
    cli = Cli(short_state_dir())
    try:
        yield cli, bring_up(cli, FLANNEL, "--self-heal")
    finally:
        take_down(cli, FLANNEL)


def ip(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "-n", netns, *argv], check=True, capture_output=True, text=True).stdout


def within(seconds: float, condition) -> float | None:
    """How long ``condition()`` took to hold (polled), or None if it did not within ``seconds``."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def logged(cli: Cli, cluster: str, *lines: str) -> bool:
    """Whether the agent's log names every one of ``lines`` within PATIENCE (a pass logs its
    repairs once it is over, after kube-proxy's sync: later than the kernel objects are back)."""
    return within(PATIENCE, lambda: all(line in agent_log(cli.state_dir, cluster) for line in lines)) is not None


def test_up_says_it_heals_and_the_agent_watches_the_underlay_and_nodes(flannel):
    cli, _ = flannel
    assert "self-heal: watching 3 namespaces" in agent_log(cli.state_dir, FLANNEL)
    document = cli.json("get", "clusters", FLANNEL)
    assert document["spec"]["selfHeal"] is True


def test_a_deleted_route_neighbour_and_fdb_entry_come_back_by_themselves(flannel):
    cli, ips = flannel
    node1, peer_cidr, vtep, fdb = delete_vxlan_entries(cli, FLANNEL)

    def whole() -> bool:
        return (peer_cidr in ip(node1, "route") and vtep in ip(node1, "neigh", "show", "dev", "flannel.1")
                and fdb[0] in subprocess.run(["bridge", "-n", node1, "fdb", "show", "dev", "flannel.1"],
                                             capture_output=True, text=True).stdout)

    took = within(PATIENCE, whole)
    assert took is not None, agent_log(cli.state_dir, FLANNEL)[-3000:]
    print(f"\nroute, neighbour and FDB entry back in {took:.2f}s")
    assert pings(FLANNEL, "a", ips["b"])
    assert logged(cli, FLANNEL, f"self-heal: node/node-1: route {peer_cidr} via {vtep} dev flannel.1 onlink: put back",
                  f"self-heal: node/node-1: fdb {fdb[0]} dev flannel.1")


def test_a_deleted_bridge_comes_back_with_its_ports(flannel):
    cli, ips = flannel
    node2 = f"{FLANNEL}.node.node-2"
    ip(node2, "link", "del", "cni0")
    assert within(PATIENCE, lambda: "cni0" in ip(node2, "-br", "link") and pings(FLANNEL, "a", ips["b"])) is not None
    assert logged(cli, FLANNEL, "self-heal: node/node-2: bridge cni0: put back")


def test_a_deleted_node_namespace_is_made_again_and_the_network_model_holds(flannel):
    cli, ips = flannel
    subprocess.run(["ip", "netns", "del", f"{FLANNEL}.node.node-2"], check=True)
    took = within(PATIENCE * 2, lambda: pings(FLANNEL, "a", ips["b"]) and pings(FLANNEL, "b", ips["a"]))
    assert took is not None, agent_log(cli.state_dir, FLANNEL)[-3000:]
    assert logged(cli, FLANNEL, "self-heal: node/node-2: create namespace: put back",
                  "self-heal: node/node-2: its test server served again"), agent_log(cli.state_dir, FLANNEL)[-4000:]
    result = cli.run("verify", "--name", FLANNEL, check=False)
    assert result.returncode == 0, result.stdout[-2000:]


def iptables(netns: str, *argv: str) -> str:
    return in_netns(netns, "iptables", *argv).stdout


def cluster_ip(cli: Cli, cluster: str, service: str) -> str:
    return cli.json("get", "svc", service, "--name", cluster)["spec"]["clusterIP"]


def test_kube_proxy_keeps_its_canary_chains_in_mangle_nat_and_filter(flannel):
    saved = in_netns(f"{FLANNEL}.node.node-1", "iptables-save").stdout
    tables = [block.split("\n", 1) for block in saved.split("\n*")[1:]]
    assert {name for name, body in tables if ":KUBE-PROXY-CANARY " in body} == {"mangle", "nat", "filter"}


def test_a_flushed_kube_proxy_chain_is_written_back_within_a_second(flannel):
    cli, _ = flannel
    node1 = f"{FLANNEL}.node.node-1"
    address = cluster_ip(cli, FLANNEL, "web")
    before = iptables(node1, "-t", "nat", "-S", "KUBE-SERVICES")
    assert address in before
    iptables(node1, "-t", "nat", "-F", "KUBE-SERVICES")
    assert address not in iptables(node1, "-t", "nat", "-S", "KUBE-SERVICES")
    took = within(PATIENCE, lambda: iptables(node1, "-t", "nat", "-S", "KUBE-SERVICES") == before)
    assert took is not None and took < 2.0, (took, agent_log(cli.state_dir, FLANNEL)[-3000:])
    assert logged(cli, FLANNEL, "self-heal: node/node-1: kube-proxy wrote back")
    answer = in_netns(f"{FLANNEL}.pod.default.a", "curl", "-s", "-m", "2", f"http://{address}/hostname").stdout
    assert answer in ("a", "b")


def test_a_deleted_canary_chain_is_made_again(flannel):
    cli, _ = flannel
    node2 = f"{FLANNEL}.node.node-2"
    in_netns(node2, "iptables", "-t", "mangle", "-X", "KUBE-PROXY-CANARY").check_returncode()
    assert within(PATIENCE, lambda: "KUBE-PROXY-CANARY" in iptables(node2, "-t", "mangle", "-S")) is not None, \
        agent_log(cli.state_dir, FLANNEL)[-3000:]


def agents(cli: Cli, cluster: str) -> tuple[list[int], list[int]]:
    """(agent pids, guardian pids) of ``cluster``."""
    socket_path = os.path.join(cli.state_dir, f"{cluster}.sock")
    return find_agent_pids(cluster, socket_path), find_guardian_pids(cluster, socket_path)


def hostname(cluster: str, source: str, ip: str) -> str:
    """What the pod at ``ip`` answers ``GET /hostname`` from pod ``source`` (its test server)."""
    return in_netns(f"{cluster}.pod.default.{source}", "curl", "-s", "-m", "1", f"http://{ip}:8080/hostname").stdout


def test_a_killed_agent_is_started_again_by_its_guardian_and_serves_every_pod_again(flannel):
    cli, ips = flannel
    (agent,), (guardian,) = agents(cli, FLANNEL)
    os.kill(agent, signal.SIGKILL)

    def served_again() -> bool:
        found, _ = agents(cli, FLANNEL)
        return found not in ([], [agent]) and hostname(FLANNEL, "a", ips["b"]) == "b"

    assert within(PATIENCE, served_again) is not None, agent_log(cli.state_dir, FLANNEL)[-3000:]
    assert logged(cli, FLANNEL, f"guardian: the agent (pid {agent}) is gone; healing",
                  "self-heal: agent: did not answer; started again", "self-heal: pod/default/b: its test server served again")
    # the new agent has a guardian of its own; the old guardian's work is done
    assert within(PATIENCE, lambda: len(agents(cli, FLANNEL)[1]) == 1 and guardian not in agents(cli, FLANNEL)[1])
    assert hostname(FLANNEL, "b", ips["a"]) == "a"


def test_a_killed_guardian_is_started_again_by_the_agent(flannel):
    cli, _ = flannel
    (agent,), (guardian,) = agents(cli, FLANNEL)
    os.kill(guardian, signal.SIGKILL)
    assert within(PATIENCE, lambda: agents(cli, FLANNEL)[1] not in ([], [guardian])) is not None
    assert agents(cli, FLANNEL)[0] == [agent]
    assert logged(cli, FLANNEL, f"self-heal: the guardian (pid {guardian}) exited with -9; starting another")


def test_a_deleted_pod_namespace_is_reported_in_the_log(flannel):
    cli, _ = flannel
    subprocess.run(["ip", "netns", "del", f"{FLANNEL}.pod.default.a"], check=True)
    reported = "self-heal: pod/default/a: its network namespace"
    assert logged(cli, FLANNEL, reported)
    line = next(line for line in agent_log(cli.state_dir, FLANNEL).splitlines() if reported in line)
    assert line.endswith("(not repaired)") and "`overlaynet delete pod a`" in line
    cli.run("delete", "pod", "a", "--name", FLANNEL)


def test_a_killed_bird_is_started_again(request):
    if subprocess.run(["which", "bird"], capture_output=True).returncode != 0:
        pytest.fail("BIRD 2 is not installed: scripts/setup installs it")
    cli = Cli(short_state_dir())
    request.addfinalizer(lambda: take_down(cli, CALICO))
    cli.run("up", "--name", CALICO, "--nodes", "2", "--cni", "calico", "--bgp", "--self-heal")
    pid_file = os.path.join(cli.state_dir, f"{CALICO}.bird", "node-2.pid")
    with open(pid_file) as handle:
        old = int(handle.read().split()[0])
    os.kill(old, signal.SIGKILL)

    def new_bird() -> bool:
        try:
            with open(pid_file) as handle:
                pid = int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        return pid != old and os.path.exists(f"/proc/{pid}")

    assert within(PATIENCE, new_bird) is not None, agent_log(cli.state_dir, CALICO)[-3000:]
    assert logged(cli, CALICO, "self-heal: node/node-2: BIRD was not running; started again")


def test_without_self_heal_what_was_broken_stays_broken(request):
    cli = Cli(short_state_dir())
    request.addfinalizer(lambda: take_down(cli, STILL))
    ips = bring_up(cli, STILL)
    node1 = f"{STILL}.node.node-1"
    peer_cidr = next(r for r in cli.json("get", "nodes", "--name", STILL)["items"]
                     if r["metadata"]["name"] == "node-2")["spec"]["podCIDR"]
    ip(node1, "route", "del", peer_cidr)
    time.sleep(2.5)  # more than two ticks of a watcher, were there one
    assert peer_cidr not in ip(node1, "route")
    assert not pings(STILL, "a", ips["b"])
    assert "self-heal" not in agent_log(cli.state_dir, STILL)
    assert agents(cli, STILL)[1] == []  # no guardian either: a killed agent stays dead


def test_down_ends_the_guardian_and_no_agent_comes_back(request):
    cli = Cli(short_state_dir())
    name = f"{FLANNEL}dn"
    request.addfinalizer(lambda: take_down(cli, name))
    cli.run("up", "--name", name, "--nodes", "1", "--self-heal", "--no-dns")
    assert within(PATIENCE, lambda: len(agents(cli, name)[1]) == 1) is not None
    cli.run("down", "--name", name)
    time.sleep(1.5)  # more than a tick: a guardian left would have started an agent again by now
    assert agents(cli, name) == ([], [])
