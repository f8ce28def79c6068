#!/usr/bin/env python3
"""kube-proxy sync cost: render time, restore time, and a partial sync, on both iptables
backends, against a raw ``iptables-restore`` of the same text in the same run.

What this owns: S services x E endpoints (ClusterIP, like limits.md's table: 17 rules and 6
chains per service at E=5), rendered by ``overlaynet.proxy.render`` and loaded three ways:

- ``render``: the pure render (full sync), best of ``--repeat``;
- ``restore``: ``overlaynet.kernel.iptables.restore`` (``ip netns exec <ns> iptables-*-restore
  -w 5 -W 100000 --noflush --counters``) into a fresh, empty namespace;
- ``raw``: the floor: ``iptables-*-restore --noflush`` of the same payload, exec'd straight
  into another fresh namespace (setns in-process, no ``ip netns exec``, no flags);
- ``partial``: after the full load, one endpoint of one service changes; the partial render
  (``changed=`` given, as kube-proxy's change trackers would) and its restore, both timed, and
  the same partial payload restored raw into the raw namespace (which holds the same rules);
  ``partial_render_detect`` is the render without the hint (it compares every service);
- ``partial_minimal``: another endpoint change as a *minimal* partial sync (``minimal=True``:
  the top-level chains, unchanged, are left out; not what kube-proxy does, see render.render);
- ``save_nat``: ``iptables-save -t nat`` of the loaded namespace (what stale-chain detection
  against the kernel costs; kube-proxy skips it on most syncs in large clusters).

The nf_tables backend at 10,000 services takes minutes per fresh load on small VMs
(limits.md: 330-1,000 s), so it runs only with ``--nft-10k``; the JSON says what was skipped.

What it never does: touch a namespace outside ``bench-kproxy-<pid>.``, or leave one behind.

    python3 bench/proxy_sync.py [--sizes 1000,10000] [--endpoints 5] [--repeat 3] [--nft-10k]
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from overlaynet.api.services import (  # noqa: E402
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    Service,
    ServicePort,
    SliceEndpoint,
)
from overlaynet.kernel import iptables as kip  # noqa: E402
from overlaynet.kernel import netns  # noqa: E402
from overlaynet.proxy import render as R  # noqa: E402

NODE = R.NodeConfig("node-1", ("172.20.0.11",), "10.244.0.0/16")



def move_first_endpoint(slices: list, index: int, address: str) -> list:
    """The slices with the first endpoint of slice ``index`` moved to ``address`` (one change)."""
    old = slices[index]
    moved = dataclasses.replace(old.endpoints[0], addresses=(address,))
    changed = list(slices)
    changed[index] = dataclasses.replace(old, endpoints=(moved, *old.endpoints[1:]))
    return changed

def cluster(count: int, endpoints: int) -> tuple[list[Service], list[EndpointSlice]]:
    services, slices = [], []
    first_ip = int(ipaddress.IPv4Address("10.96.0.2"))
    first_pod = int(ipaddress.IPv4Address("10.100.0.2"))
    for i in range(count):
        svc = Service("bench", f"svc-{i}", (ServicePort("http", 80, 8080),),
                      cluster_ip=str(ipaddress.IPv4Address(first_ip + i)), selector=(("app", f"svc-{i}"),))
        services.append(svc)
        eps = tuple(SliceEndpoint((str(ipaddress.IPv4Address(first_pod + i * endpoints + j)),),
                             EndpointConditions(True, True, False), f"node-{j % 3 + 1}") for j in range(endpoints))
        slices.append(EndpointSlice("bench", f"svc-{i}-bench", f"svc-{i}", (EndpointPort("http", 8080),), eps))
    return services, slices


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def raw_restore(ns: str, backend: str, payload: str) -> float:
    """The floor: the restore binary exec'd inside the namespace (setns in this thread first)."""
    binary = kip.command("iptables-restore", backend)
    with netns.inside(ns):
        start = time.perf_counter()
        result = subprocess.run([binary, "--noflush"], input=payload, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"raw restore failed in {ns}: {result.stderr.strip()}")
    return elapsed


class Namespaces:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.count = 0

    def fresh(self) -> str:
        self.count += 1
        name = f"{self.prefix}{self.count}"
        netns.ensure(name)
        return name

    def drop(self, name: str) -> None:
        netns.delete(name)

    def cleanup(self) -> None:
        left = [n for n in netns.list_names() if n.startswith(self.prefix)]
        for name in left:
            netns.delete(name)
        netns.wait_gone(left, timeout=30)


def measure(size: int, endpoints: int, backend: str, repeat: int, spaces: Namespaces, partial: bool) -> dict:
    services, slices = cluster(size, endpoints)
    R._hash16.cache_clear()
    cold, ruleset = timed(lambda: R.render(NODE, services, slices))
    warm = min(timed(lambda: R.render(NODE, services, slices))[0] for _ in range(repeat))
    result = {"services": size, "endpoints_per_service": endpoints, "backend": backend,
              "payload_lines": ruleset.lines(), "payload_bytes": len(ruleset.payload),
              "nat_chains": len(ruleset.active_chains) + len(R.NAT_TOP_CHAINS),
              "large_cluster_mode": ruleset.large_cluster,
              "render_s": round(warm, 4), "render_cold_s": round(cold, 4)}
    ours_runs, raw_runs = [], []
    keep_ours = keep_raw = None
    loads = repeat if size <= 1000 else 1
    for attempt in range(loads):
        first_raw = attempt % 2 == 1  # alternate which goes first
        order = ["raw", "ours"] if first_raw else ["ours", "raw"]
        for which in order:
            ns = spaces.fresh()
            if which == "ours":
                elapsed, _ = timed(lambda: kip.restore(ns, ruleset.payload, backend))
                ours_runs.append(elapsed)
                if keep_ours:
                    spaces.drop(keep_ours)
                keep_ours = ns
            else:
                raw_runs.append(raw_restore(ns, backend, ruleset.payload))
                if keep_raw:
                    spaces.drop(keep_raw)
                keep_raw = ns
    result["restore_s"] = round(statistics.median(ours_runs), 4)
    result["raw_restore_s"] = round(statistics.median(raw_runs), 4)
    result["restore_vs_raw"] = round(result["restore_s"] / result["raw_restore_s"], 2)
    result["sync_full_s"] = round(result["render_s"] + result["restore_s"], 4)
    result["save_nat_s"] = round(timed(lambda: kip.save(keep_ours, backend, "nat"))[0], 4)

    if partial:
        # One endpoint of one service moves to another address.
        changed_index = size // 2
        new_slices = move_first_endpoint(slices, changed_index, "10.99.0.1")
        key = services[changed_index].key
        render_times = []
        partial_ruleset = None
        for _ in range(repeat):
            elapsed, partial_ruleset = timed(lambda: R.render(NODE, services, new_slices, ruleset, changed={key}))
            render_times.append(elapsed)
        detect, detected = timed(lambda: R.render(NODE, services, new_slices, ruleset))
        assert detected.payload == partial_ruleset.payload
        restore_time, _ = timed(lambda: kip.restore(keep_ours, partial_ruleset.payload, backend))
        raw_time = raw_restore(keep_raw, backend, partial_ruleset.payload)
        result["partial"] = {
            "payload_lines": partial_ruleset.lines(), "written": list(partial_ruleset.written),
            "stale_chains": len(partial_ruleset.stale_chains),
            "render_s": round(min(render_times), 4), "render_detect_s": round(detect, 4),
            "restore_s": round(restore_time, 4), "raw_restore_s": round(raw_time, 4),
            "sync_s": round(min(render_times) + restore_time, 4),
        }
        # The same kind of change again, as a minimal partial sync (top-level chains left alone).
        other = size // 3
        newer_slices = move_first_endpoint(new_slices, other, "10.99.0.2")
        key = services[other].key
        render_time, minimal = timed(lambda: R.render(NODE, services, newer_slices, partial_ruleset, changed={key},
                                                      minimal=True))
        assert not minimal.top_level_written
        restore_time, _ = timed(lambda: kip.restore(keep_ours, minimal.payload, backend))
        raw_time = raw_restore(keep_raw, backend, minimal.payload)
        result["partial_minimal"] = {
            "payload_lines": minimal.lines(), "render_s": round(render_time, 4), "restore_s": round(restore_time, 4),
            "raw_restore_s": round(raw_time, 4), "sync_s": round(render_time + restore_time, 4),
        }
    for ns in (keep_ours, keep_raw):
        if ns:
            spaces.drop(ns)
    return result


def host() -> dict:
    version = subprocess.run(["iptables", "-V"], capture_output=True, text=True).stdout.strip()
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "iptables": version, "host_backend": kip.backend(),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated service counts")
    parser.add_argument("--endpoints", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backends", default="legacy,nf_tables")
    parser.add_argument("--nft-10k", action="store_true",
                        help="also load >= 10,000 services with the nf_tables backend (minutes per load)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/proxy_sync.py needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    if shutil.which("ip") is None:
        print("bench/proxy_sync.py needs iproute2 (ip)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",") if s]
    spaces = Namespaces(f"bench-kproxy-{os.getpid()}.")
    report = {"host": host(), "runs": [], "skipped": []}
    try:
        for backend in args.backends.split(","):
            for size in sizes:
                if backend == "nf_tables" and size >= 10_000 and not args.nft_10k:
                    report["skipped"].append({"services": size, "backend": backend,
                                              "why": "nf_tables at >= 10k services takes minutes per load; "
                                                     "run with --nft-10k"})
                    continue
                run = measure(size, args.endpoints, backend, args.repeat, spaces, partial=True)
                report["runs"].append(run)
                print(json.dumps(run), file=sys.stderr, flush=True)
    finally:
        spaces.cleanup()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
