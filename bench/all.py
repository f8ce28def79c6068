#!/usr/bin/env python3
"""Every benchmark in one run, and one table of what each measured against its floor.

Run as root from the repository root:

    python3 bench/all.py            # the sizes of the hardening issue's targets
    python3 bench/all.py --quick    # smaller sizes, a few minutes on 2 cores

Each benchmark runs as its own process (``bench/<name>.py``, which prints JSON) and measures
its kernel floor in the same run; this script only reads their answers and prints, per figure,
overlaynet's value, the floor's, the ratio and the target. The JSON of every run is written to
``bench/results/all-<timestamp>.json`` (not under version control).

What it never does: judge a figure in a test (benchmarks are measured, not asserted), or leave
anything behind: each benchmark removes what it made.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")

# (benchmark, arguments at full size, arguments with --quick)
RUNS = {
    "bringup-flannel": ("bringup.py", ["--nodes", "10", "--pods-per-node", "20", "--repeat", "3"],
                        ["--nodes", "10", "--pods-per-node", "20", "--repeat", "1"]),
    "bringup-calico": ("bringup.py", ["--nodes", "10", "--pods-per-node", "20", "--repeat", "3", "--cni", "calico"],
                       ["--nodes", "10", "--pods-per-node", "20", "--repeat", "1", "--cni", "calico"]),
    "bringup-1000": ("bringup.py", ["--nodes", "50", "--pods-per-node", "20", "--repeat", "3"],
                     ["--nodes", "20", "--pods-per-node", "20", "--repeat", "1"]),
    "cni": ("cni_latency.py", ["--pods", "100"], ["--pods", "40"]),
    "verify": ("verify_scale.py", ["--pods", "100"], ["--pods", "40"]),
    "datapath": ("datapath.py", [], ["--quick"]),
}


def run(script: str, arguments: list[str]) -> dict:
    started = time.monotonic()
    done = subprocess.run([sys.executable, os.path.join(REPO, "bench", script), *arguments], capture_output=True,
                          text=True, check=False, cwd=REPO)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:] or ["failed"]}
    answer = json.loads(done.stdout[done.stdout.index("{"):])
    answer["bench_s"] = round(time.monotonic() - started, 1)
    return answer


def _spread(result: dict, side: str) -> str:
    """The runs' range after a median of several teardowns, which vary from run to run."""
    runs = result.get(f"{side}_down_runs_s", [])
    return f" (runs {min(runs):.2f}-{max(runs):.2f})" if len(runs) > 1 else ""


def rows(results: dict) -> list[list[str]]:
    """(figure, overlaynet, floor, ratio, target) for every answer there is."""
    out = []
    for name in ("bringup-flannel", "bringup-calico", "bringup-1000"):
        r = results.get(name, {})
        if "up_ratio" in r:
            out.append([f"up, {r['pods']} pods ({r['cni']}), CNI exec", f"{r['overlaynet_up_s']:.2f} s",
                        f"{r['floor_up_s']:.2f} s", f"{r['up_ratio']:.1f}x", "<= 2x"])
            out.append([f"down, {r['pods']} pods ({r['cni']})", f"{r['overlaynet_down_s']:.2f} s{_spread(r, 'overlaynet')}",
                        f"{r['floor_down_s']:.2f} s{_spread(r, 'floor')}", f"{r['down_ratio']:.1f}x", "<= 2x"])
            out.append([f"agent RSS, {r['pods']} pods", f"{r['agent_rss_mib']} MiB", "", "", "< 150 MB"])
    cni = results.get("cni", {})
    for op in ("add", "del"):
        for path in ("compiled", "thin", "standalone"):
            if path in cni.get(f"{op}_ms", {}):
                value, floor = cni[f"{op}_ms"][path]["median"], cni[f"{op}_ms"]["floor"]["median"]
                out.append([f"CNI {op.upper()} median, {path}", f"{value:.1f} ms", f"{floor:.1f} ms",
                            f"{value / floor:.1f}x", "<= 10 ms" if op == "add" else ""])
    verify = results.get("verify", {})
    if "verify_s" in verify:
        out.append([f"verify, {verify['pods']} pods ({verify['probes']} probes)", f"{verify['verify_s']:.1f} s",
                    f"{verify['ping_processes_for_all_pairs_s']:.1f} s (a ping per pair)",
                    f"{verify['ratio_to_ping_processes']:.2f}x", "< 5 s"])
    for mode, r in results.get("datapath", {}).get("modes", {}).items():
        for path, where in (("same_node", "same node"), ("cross_node", "across nodes")):
            case, floor = r[path], r["floor"]
            out.append([f"iperf3 TCP pod→pod, {where} ({mode})", f"{case['gbit_s']:.1f} Gbit/s",
                        f"{floor['gbit_s']:.1f} Gbit/s (veth pair)", f"{case['throughput_ratio']:.2f}x", ""])
            out.append([f"ping RTT pod→pod, {where} ({mode})", f"{case['rtt_avg_us']:.0f} µs",
                        f"{floor['rtt_avg_us']:.0f} µs (veth pair)", f"{case['latency_ratio']:.1f}x", ""])
    return out


def table(lines: list[list[str]]) -> str:
    header = ["FIGURE", "OVERLAYNET", "FLOOR (same run)", "RATIO", "TARGET"]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [header, *lines])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    parser.add_argument("--only", action="append", choices=sorted(RUNS), help="run only these (repeatable)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/all.py: needs root (the benchmarks create network namespaces)", file=sys.stderr)
        return 2
    if not os.path.exists(os.path.join(REPO, "cni_plugins", "bin", "overlaynet-cni-shim")):
        print("bench: the compiled CNI front is not built (cni_plugins/bin/); bring-up will go through the "
              "Python plugin. Build it with scripts/setup.", file=sys.stderr)
    results = {}
    for name in args.only or RUNS:
        script, full, quick = RUNS[name]
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        results[name] = run(script, quick if args.quick else full)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, time.strftime("all-%Y%m%d-%H%M%S.json"))
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"quick": args.quick, "cpus": os.cpu_count(), "results": results}, handle, indent=2)
    print(table(rows(results)))
    for name, result in results.items():
        if "error" in result:
            print(f"{name}: failed: {' '.join(result['error'])}")
    print(f"\n(every figure against its floor measured in the same run, on {os.cpu_count()} CPUs; JSON: {path})")
    return 0 if not any("error" in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
