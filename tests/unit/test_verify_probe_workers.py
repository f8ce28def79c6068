"""How verify's probe batches are shared among worker processes (``agent.reachability``).

Pure planning (how many workers, which probes each gets), the parsing shortcuts the batch
relies on, and the worker processes themselves run for real: a probe from a namespace that
does not exist needs no root, and must come back from a worker exactly as from the agent.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

import pytest

from overlaynet.agent import reachability
from overlaynet.errors import InvalidInput


def probe(i: int, netns: str, protocol: str = "tcp", dst: str = "10.244.1.2") -> reachability.Probe:
    return reachability.Probe(i, netns, dst, 0 if protocol == "icmp" else 8080, protocol, socket.AF_INET)


# -- planning -----------------------------------------------------------------------------------


def test_a_small_batch_or_one_cpu_runs_in_the_agent():
    assert reachability.plan_workers(reachability.PARALLEL_MIN - 1, 100, cpus=8) == 1
    assert reachability.plan_workers(100_000, 100, cpus=1) == 1


def test_a_large_batch_gets_a_worker_per_cpu_but_no_more_than_sources():
    assert reachability.plan_workers(33_000, 104, cpus=2) == 2
    assert reachability.plan_workers(33_000, 104, cpus=16) == 16
    assert reachability.plan_workers(33_000, 3, cpus=16) == 3


def test_the_environment_chooses_the_number_of_workers(monkeypatch):
    monkeypatch.setenv(reachability.WORKERS_ENV, "3")
    assert reachability.plan_workers(33_000, 104) == 3
    monkeypatch.setenv(reachability.WORKERS_ENV, "1")
    assert reachability.plan_workers(33_000, 104) == 1
    monkeypatch.setenv(reachability.WORKERS_ENV, "many")  # not a number: one per CPU
    cpus = len(os.sched_getaffinity(0))
    assert reachability.plan_workers(33_000, 104) == (1 if cpus < 2 else min(cpus, 104))


def test_shards_keep_each_source_together_in_order_and_are_balanced():
    # as verify plans them: pod pairs by source, then node->pod and pod->node interleaved
    sources = [f"c.pod.default.p{i}" for i in range(10)] + ["c.node.node-1", "c.node.node-2"]
    plan = [s for s in sources[:10] for _ in range(27)]
    for node in sources[10:]:
        for pod in sources[:10]:
            plan += [node, pod]
    probes = [probe(i, netns) for i, netns in enumerate(plan)]
    shards = reachability.plan_shards(probes, 2)
    assert len(shards) == 2
    assert sorted(i for shard in shards for i in shard) == list(range(len(probes)))
    for shard in shards:
        assert shard == sorted(shard, key=lambda i: (sources.index(probes[i].netns), i))
    owner = {probes[i].netns: n for n, shard in enumerate(shards) for i in shard}
    assert all(owner[probes[i].netns] == n for n, shard in enumerate(shards) for i in shard)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 27 + 2  # at most one source's probes apart


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_shards_are_never_more_than_workers_nor_sources(workers):
    probes = [probe(i, f"ns{i % 3}") for i in range(30)]
    shards = reachability.plan_shards(probes, workers)
    assert 1 <= len(shards) <= min(workers, 3)
    assert sorted(i for shard in shards for i in shard) == list(range(30))


# -- the parsing a batch relies on --------------------------------------------------------------


@pytest.mark.parametrize("text, ip", [
    ("10.244.1.2:4711", "10.244.1.2"), ("010.244.1.2:1", None), ("10.244.1:1", None), ("256.1.1.1:1", None),
    ("1.2.3.4\x00:1", None), ("[::ffff:10.0.0.1]:1", "::ffff:a00:1"), ("0.0.0.0:9", "0.0.0.0"),
])
def test_parse_addr_is_as_strict_as_ipaddress(text, ip):
    assert reachability.parse_addr(text) == ip


def test_parse_probes_checks_every_destination_also_when_repeated():
    raw = [{"id": i, "netns": "a", "dst": "10.0.0.1", "port": 80, "protocol": "tcp"} for i in range(3)]
    probes, _ = reachability.parse_probes(raw, 2.0)
    assert [(p.dst, p.family) for p in probes] == [("10.0.0.1", socket.AF_INET)] * 3
    with pytest.raises(InvalidInput, match=r"probe 3: dst '10.0.0.01' is not an IP address"):
        reachability.parse_probes(raw + [{**raw[0], "dst": "10.0.0.01"}], 2.0)
    probes, _ = reachability.parse_probes([{**raw[0], "dst": "fd00:0::2"}], 2.0)
    assert (probes[0].dst, probes[0].family) == ("fd00::2", socket.AF_INET6)


# -- the workers, for real ----------------------------------------------------------------------


MISSING = "t-verify-workers-no-such-netns"


def test_a_worker_refuses_to_run_without_its_parent():
    done = subprocess.run([sys.executable, "-m", "overlaynet.agent.reachability"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 2 and "--parent PID" in done.stderr


def test_a_worker_answers_its_shard_on_stdout():
    request = {"timeout": 1.0, "concurrency": 4,
               "probes": [[f"{MISSING}-{i}", "10.0.0.1", 8080, "tcp", socket.AF_INET, "clientip", ""] for i in range(3)]}
    done = subprocess.run([sys.executable, "-m", "overlaynet.agent.reachability", "--parent", str(os.getpid())],
                          input=json.dumps(request), capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [r["id"] for r in results] == [0, 1, 2]
    assert [r["error"] for r in results] == [f'netns "{MISSING}-{i}": does not exist' for i in range(3)]


def test_results_from_workers_are_those_from_the_agent_in_the_same_order():
    probes = [probe(i, f"{MISSING}-{i % 5}", protocol) for i, protocol in
              enumerate(["tcp", "udp", "icmp"] * 10)]
    probes = [reachability.Probe(["id", i], p.netns, p.dst, p.port, p.protocol, p.family) for i, p in enumerate(probes)]
    here = asyncio.run(reachability.run_probes(probes, 1.0, workers=1))
    there = asyncio.run(reachability.run_probes(probes, 1.0, workers=2))
    assert [r["id"] for r in there] == [["id", i] for i in range(len(probes))]

    def without_timing(results):
        return [{k: v for k, v in r.items() if k != "rtt_ms"} for r in results]

    assert without_timing(there) == without_timing(here)
    assert [list(r) for r in there] == [list(r) for r in here]  # the same fields, in the same order
    assert all(not r["ok"] and "does not exist" in r["error"] for r in there)
