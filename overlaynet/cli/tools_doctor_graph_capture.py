"""``overlaynet doctor``, ``graph`` and ``capture``: the host's readiness, a running cluster's
topology as a picture, and packets on the wire decoded layer by layer.

An edge: each command observes through ``overlaynet.kernel`` (``preflight``, ``topology``,
``capture``), hands the facts to the pure ``overlaynet.tools`` module that judges, lays out or
decodes them, and prints. Running Graphviz's ``dot`` (argv, never a shell) and writing the
files a user asked for also happen here. Colour only on a terminal (click strips it elsewhere).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import click

from overlaynet import names
from overlaynet.api.objects import DEFAULT_NAMESPACE
from overlaynet.errors import HostError, InvalidInput

# Like the core commands' --name; those commands' helpers are imported where used, since
# overlaynet.cli.commands imports this module to register its commands.
cluster_option = click.option("--name", "cluster", metavar="CLUSTER", help="The cluster (default: the only one).")
_MARKS = {"ok": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "red")}


# -- doctor ------------------------------------------------------------------------------------


@click.command()
@click.option("-o", "--output", type=click.Choice(["json"]), help="json for scripts.")
@click.pass_context
def doctor(ctx, output):
    """Check this host (or VM) for what overlaynet and its labs need, each failure with its fix.

    Exit status 0 when nothing failed (warnings allowed), 1 otherwise.

    \b
    Example:
      sudo overlaynet doctor
      sudo overlaynet doctor -o json | jq '.checks[] | select(.status != "ok")'
    """
    from overlaynet.kernel import preflight
    from overlaynet.tools import doctor as doctoring

    report = doctoring.judge(preflight.observe_host())
    if output == "json":
        click.echo(json.dumps({"passed": report.passed, "summary": report.summary(),
                               "checks": [c.as_dict() for c in report.checks]}, indent=2))
    else:
        width = max(len(c.name) for c in report.checks) + 2
        for check in report.checks:
            mark, colour = _MARKS[check.status]
            click.echo(f"{click.style(mark, fg=colour)} {check.name:<{width}}{check.detail}")
            if check.fix:
                click.echo(f"  {'':<{width}}fix: {click.style(check.fix, bold=True)}")
        click.echo(report.summary())
    ctx.exit(0 if report.passed else 1)


# -- graph -------------------------------------------------------------------------------------

_GRAPH_FORMATS = ("text", "dot", "svg", "png", "json")
_TEXT_STYLES: dict[str, dict[str, Any]] = {"title": {"bold": True}, "bad": {"fg": "red"}, "dim": {"dim": True}}


def _style(text: str, role: str) -> str:
    return click.style(text, **_TEXT_STYLES[role])


@click.command()
@click.option("-o", "--output", type=click.Choice(_GRAPH_FORMATS),
              help="text (a tree, the default), dot (Graphviz source), svg or png (a picture), json (for scripts).")
@click.option("--file", "path", type=click.Path(dir_okay=False),
              help="Write here (default for svg/png: CLUSTER.svg or CLUSTER.png); the extension picks the format.")
@cluster_option
def graph(output, path, cluster):
    """Draw a running cluster: nodes, pods, bridges, VXLAN tunnels or routes, the four ranges.

    Built from the store and the kernel's real state, so a missing route, FDB entry or veth
    shows in red with what is missing.

    \b
    Example:
      overlaynet graph                      # a tree in the terminal
      overlaynet graph -o svg               # overlaynet.svg, open it in a browser
      overlaynet graph --file lab4.png
    """
    from overlaynet.cli.commands import require_privileges
    from overlaynet.tools import graph as graphing

    fmt = output or (_format_of(path) if path else "text")
    require_privileges("overlaynet graph")
    topology = _observe_topology(cluster)
    if fmt == "text":
        text = graphing.render_text(topology, _style if not path else graphing.plain)
    elif fmt == "json":
        text = json.dumps(topology.as_dict(), indent=2)
    else:
        text = graphing.render_dot(topology)
    if fmt in ("text", "dot", "json") and not path:
        click.echo(text)
        return
    path = path or f"{topology.cluster}.{fmt}"
    data = _draw(text, fmt) if fmt in ("svg", "png") else (text + "\n").encode()
    try:
        with open(path, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        raise HostError(f'graph: cannot write "{path}": {exc.strerror}') from None
    problems = topology.all_problems
    pods = sum(len(n.pods) for n in topology.nodes)
    click.echo(f"wrote {path} ({fmt}): {len(topology.nodes)} nodes, {pods} pods, "
               + (click.style(f"{len(problems)} problems", fg="red") if problems else "no problems"))
    for problem in problems:
        click.echo(f"  {click.style('✗', fg='red')} {problem}")


def _format_of(path: str) -> str:
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    formats = {"svg": "svg", "png": "png", "dot": "dot", "gv": "dot", "txt": "text", "json": "json"}
    if extension not in formats:
        raise InvalidInput(f'graph --file "{path}": the extension must be .svg, .png, .dot, .txt or .json (or give -o)')
    return formats[extension]


def _observe_topology(cluster: str | None):
    from overlaynet.cli.commands import _manager, _resolve_cluster
    from overlaynet.datapath.modes import get_mode, uses_ipam_blocks
    from overlaynet.ipam.blocks import BlockIPAM
    from overlaynet.kernel import cluster_view
    from overlaynet.tools import graph as graphing

    manager = _manager()
    name = _resolve_cluster(manager, cluster)
    spec = manager.spec(name)
    nodes, pods = manager.nodes(name), manager.pods(name, None)
    if uses_ipam_blocks(spec):
        ipam = BlockIPAM(manager.store, name, spec.cluster_cidr, spec.block_size)
        ranges = {n["metadata"]["name"]: [str(b) for b in ipam.node_blocks(n["metadata"]["name"])] for n in nodes}
        range_kind = "IPAM blocks"
    else:
        ranges = {n["metadata"]["name"]: [n["spec"]["podCIDR"]] for n in nodes}
        range_kind = "pod CIDR"
    kernel = {
        "underlay": cluster_view.observe_namespace(names.underlay_netns(name)),
        "nodes": {n["metadata"]["name"]: cluster_view.observe_namespace(names.node_netns(name, n["metadata"]["name"]))
                  for n in nodes},
        "pods": {f"{p['metadata']['namespace']}/{p['metadata']['name']}":
                 cluster_view.observe_pod_uplink(names.pod_netns(name, p["metadata"]["namespace"], p["metadata"]["name"]))
                 for p in pods if p["status"].get("podIP")},
    }
    return graphing.build_topology(spec, get_mode(spec.cni).description, nodes, pods, ranges, range_kind, kernel)


def _draw(dot_text: str, fmt: str) -> bytes:
    """Graphviz's ``dot`` lays the graph out (argv, never a shell)."""
    program = shutil.which("dot")
    if program is None:
        raise HostError(f"graph -o {fmt} needs Graphviz's dot: apt-get install -y graphviz "
                        "(or use -o text, or -o dot and draw it elsewhere)")
    try:
        result = subprocess.run([program, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, timeout=120,
                                check=False)
    except subprocess.TimeoutExpired:
        raise HostError("graph: dot did not finish within 120 s") from None
    if result.returncode != 0:
        raise HostError(f"graph: dot failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


# -- capture -----------------------------------------------------------------------------------

DEFAULT_FILTER = "ip or arp"  # IPv4, what the labs are about: the namespaces' IPv6 chatter stays out


@click.command()
@click.argument("target")
@click.option("-i", "--interface", metavar="IFACE", help="The interface (default: eth0; underlay0 for underlay).")
@click.option("--count", type=click.IntRange(min=0), default=10, show_default=True,
              help="Stop after this many packets (0: until --timeout).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Stop after this many seconds.")
@click.option("--filter", "bpf_filter", metavar="EXPR", default=DEFAULT_FILTER, show_default=True,
              help='A tcpdump (BPF) filter, e.g. "udp port 8472" or "icmp"; "" for every frame (IPv6 too).')
@click.option("-w", "--write", "pcap_path", type=click.Path(dir_okay=False),
              help="Keep the capture in this pcap file (for tshark -r or Wireshark).")
@click.option("-n", "--namespace", default=DEFAULT_NAMESPACE, show_default=True, help="A pod's namespace.")
@click.option("-o", "--output", type=click.Choice(["json"]), help="json for scripts.")
@cluster_option
def capture(target, interface, count, timeout, bpf_filter, pcap_path, namespace, output, cluster):
    """Capture packets in a node (node/NAME), a pod (NAME or pod/NAME), the node network
    (underlay) or the outside client (external), and decode each one layer by layer: for
    VXLAN the outer Ethernet/IP/UDP, the VNI, and the inner frame with the pods' addresses.

    \b
    Example:
      overlaynet capture node/node-1 --filter "udp port 8472" --count 4 -w vxlan.pcap
      overlaynet exec client-a -- ping -c 2 <a pod IP on another node>    # in another terminal
      tshark -r vxlan.pcap -V                                             # the same packets
    """
    from overlaynet.cli.commands import _manager, _resolve_cluster, require_privileges
    from overlaynet.kernel import capture as capturing
    from overlaynet.kernel import observe
    from overlaynet.tools import capture as decoding

    require_privileges("overlaynet capture")
    manager = _manager()
    name = _resolve_cluster(manager, cluster)
    netns, where, default_interface = _capture_target(manager, name, target, namespace)
    interface = names.check_ifname(interface or default_interface)
    present = [link["name"] for link in observe.observe_links(netns)]
    if interface not in present:
        raise InvalidInput(f'capture: {where} has no interface "{interface}" (it has: {", ".join(present)})')
    what = f"{where}, {interface}" + (f', filter "{bpf_filter}"' if bpf_filter else "")
    limit = (f"{count} packet{'s' if count != 1 else ''} or " if count else "") + f"{timeout:g} s"
    progress = sys.stderr.isatty() and output != "json"

    def ready() -> None:
        click.echo(f"Capturing on {what} (up to {limit}; Ctrl-C stops) ...", err=True)

    def show(packets: int, seconds: float) -> None:
        if progress:
            click.echo(f"\r  {packets} packet{'s' if packets != 1 else ''} so far, {seconds:.1f} s of {timeout:g} s", err=True,
                       nl=False)

    result = capturing.capture(netns, interface, count, timeout, bpf_filter, ready, show)
    if progress:
        click.echo("\r" + " " * 50 + "\r", err=True, nl=False)
    if pcap_path and result.pcap:
        try:
            with open(pcap_path, "wb") as handle:
                handle.write(result.pcap)
        except OSError as exc:
            raise HostError(f'capture -w "{pcap_path}": {exc.strerror}') from None
    packets = decoding.decode(result.pcap)
    if output == "json":
        click.echo(json.dumps({"target": where, "interface": interface, "filter": bpf_filter,
                               "pcap": pcap_path if result.pcap else None, "seconds": round(result.seconds, 3),
                               "packets": [p.as_dict() for p in packets]}, indent=2))
    elif packets:
        click.echo(decoding.render(packets))
    if not packets:
        click.echo(f"No packets captured on {what} in {result.seconds:.1f} s. Send some while it waits, "
                   f"e.g. in another terminal: overlaynet exec <pod> -- ping -c 3 <another pod's IP>", err=True)
        return
    kept = f"; kept in {pcap_path} (tshark -r {pcap_path})" if pcap_path else ""
    click.echo(f"{len(packets)} packet{'s' if len(packets) != 1 else ''} in {result.seconds:.1f} s{kept}", err=True)


def _capture_target(manager, cluster: str, target: str, namespace: str) -> tuple[str, str, str]:
    """(netns, the target in words, the default interface)."""
    if target == "underlay":
        manager.spec(cluster)
        return names.underlay_netns(cluster), "the underlay", names.UNDERLAY_BRIDGE
    if target == "external":
        manager.spec(cluster)
        return names.external_netns(cluster), "the external client", names.NODE_UPLINK
    if target.startswith("node/"):
        node = manager.node(cluster, target[5:])["metadata"]["name"]
        return names.node_netns(cluster, node), f"node {node}", names.NODE_UPLINK
    pod_name = target.removeprefix("pod/")
    record = manager.pod(cluster, namespace, pod_name)
    if not record["status"].get("podIP"):
        raise InvalidInput(f'pod "{pod_name}": is {record["status"]["phase"]}, it has no network namespace yet')
    return names.pod_netns(cluster, namespace, pod_name), f"pod {pod_name}", names.POD_INTERFACE
