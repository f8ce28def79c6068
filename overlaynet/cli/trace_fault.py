"""``overlaynet trace`` and ``overlaynet fault``: the CLI edge of ``tools.trace`` and
``tools.faults``.

What this module owns: finding what the pure tools need in the store and the kernel (a
node's live ``iptables-save``, its addresses, links, neighbour and FDB entries, the kernel's
route lookup), the order of a fault's life (recorded in the store as a ``Fault`` object
*before* the kernel is changed, forgotten only after it is undone), the same order for
``trace --live``'s one TRACE rule, and the words printed. Every fault lives inside a node's
namespace (or is a stopped BIRD), so ``down`` undoes it with the namespace; nothing outside
needs undoing.
What it never does: decide what a fault changes (``tools.faults`` plans it) or touch the
kernel other than through ``overlaynet.kernel``.
"""

from __future__ import annotations

import dataclasses
import json
import time

import click

from overlaynet import names
from overlaynet.api.objects import DEFAULT_NAMESPACE
from overlaynet.cli import netpol as netpol_cli
from overlaynet.cli.output import table
from overlaynet.datapath import topology
from overlaynet.datapath.modes import get_mode, uses_ipam_blocks
from overlaynet.datapath.plan import Plan
from overlaynet.datapath.topology import internal_ip
from overlaynet.errors import InvalidInput, NotFoundError
from overlaynet.tools import faults as planning
from overlaynet.tools import trace as tracing


def _manager():
    from overlaynet.cli.commands import _manager as manager

    return manager()


def _resolve_cluster(manager, name: str | None) -> str:
    from overlaynet.cli.commands import _resolve_cluster as resolve

    return resolve(manager, name)


def require_privileges(action: str) -> None:
    from overlaynet.cli.commands import require_privileges as require

    require(action)


# ``--name`` as every command spells it (cli.commands, which registers these commands, cannot
# be imported from here at import time).
cluster_option = click.option("--name", "cluster", metavar="CLUSTER", help="The cluster (default: the only one).")


# -- trace -----------------------------------------------------------------------------------


def _who(manager, cluster: str, spec) -> tuple[dict[str, str], dict[str, str]]:
    """address -> "pod default/web-1 on node-2" (pods, nodes, the external client), and
    node address -> node name."""
    nodes_by_ip = {internal_ip(n): n["metadata"]["name"] for n in manager.nodes(cluster)}
    who = {ip: f"node {name}" for ip, name in nodes_by_ip.items()}
    who[str(spec.external_client)] = "the external client"
    for pod in manager.pods(cluster, None):
        ip = pod["status"].get("podIP")
        if ip:
            who[ip] = f'pod {pod["metadata"]["namespace"]}/{pod["metadata"]["name"]} on {pod["spec"].get("nodeName")}'
    return who, nodes_by_ip


def _route_hop(cluster: str, node: str, src: tracing.Source, target: str, who: dict[str, str],
               nodes_by_ip: dict[str, str]) -> tracing.RouteHop:
    """The route ``node`` takes to ``target`` for a packet from ``src``, in words."""
    from overlaynet.kernel import observe, routes

    netns = names.node_netns(cluster, node)
    links = {link["name"]: link["kind"] or "" for link in observe.observe_links(netns)}
    arrives_on = None
    if src.kind != "node":  # a forwarded packet: the lookup it meets depends on where it came in
        arrives_on = routes.observe_route_get(netns, src.ip).get("dev")
    lookup = routes.observe_route_get(netns, target, src.ip if arrives_on else None, arrives_on)
    dev = lookup.get("dev")
    vxlan = links.get(dev or "") == "vxlan"
    return tracing.describe_route(lookup, links, observe.observe_neighbours(netns, dev) if vxlan else [],
                                  observe.observe_fdb(netns, dev) if vxlan else [], who, nodes_by_ip)


def _trace_source(manager, cluster: str, spec, source: str, namespace: str, dst: str
                  ) -> tuple[tracing.Source, str]:
    """The packet's source and the node it enters."""
    from overlaynet.kernel import routes

    if source.startswith("node/"):
        record = manager.node(cluster, source[5:])
        node = record["metadata"]["name"]
        # A packet the node sends is routed before nat OUTPUT: the route chooses its source
        # (to a remote pod in flannel mode, flannel.1's address, not eth0's).
        chosen = routes.observe_route_get(names.node_netns(cluster, node), dst).get("prefsrc")
        return tracing.Source("node", node, chosen or internal_ip(record)), node
    if source == "external":
        client = str(spec.external_client)
        lookup = routes.observe_route_get(names.external_netns(cluster), dst)
        nodes_by_ip = {internal_ip(n): n["metadata"]["name"] for n in manager.nodes(cluster)}
        hop = lookup.get("gateway") or dst
        if hop not in nodes_by_ip:  # a LoadBalancer address: the node answering ARP for it sees the packet
            from overlaynet.node.speaker import announced
            hop = next((a.node_ip for a in announced(manager.store, cluster) if a.ip == hop), hop)
        if lookup["type"] == "error" or hop not in nodes_by_ip:
            via = f"via {lookup['gateway']}" if lookup.get("gateway") else lookup.get("error", "")
            example = next(iter(nodes_by_ip), "NODE-IP")
            raise InvalidInput(f"trace: the external client ({client}) routes {dst} {via}, which is not a node: no node "
                               f"sees the packet; from outside, trace a node's address, e.g. external {example}:NODEPORT")
        return tracing.Source("external", "client", client), nodes_by_ip[hop]
    pod_name = source.removeprefix("pod/")
    record = manager.pod(cluster, namespace, pod_name)
    ip, node = record["status"].get("podIP"), record["spec"].get("nodeName")
    if not ip or not node:
        raise InvalidInput(f'pod "{pod_name}": status.podIP is empty (the pod is {record["status"]["phase"]}): '
                           "it sends no packets yet")
    return tracing.Source("pod", f"{namespace}/{pod_name}", ip), node


@click.command()
@click.argument("source")
@click.argument("destination", metavar="DEST[:PORT]")
@click.option("--proto", type=click.Choice(tracing.PROTOCOLS), default="tcp", show_default=True)
@click.option("-n", "--namespace", default=DEFAULT_NAMESPACE, show_default=True, help="The source pod's namespace.")
@click.option("--live", is_flag=True, help="Send one real packet and show the rules the kernel matched "
              "(nf_tables: xtables-monitor --trace); the trace rule is removed afterwards.")
@click.option("-o", "--output", type=click.Choice(["json"]), help="json for scripts.")
@cluster_option
def trace(source, destination, proto, namespace, live, output, cluster):
    """Walk a packet from SOURCE (a pod, node/NAME or external) to DEST through the live
    iptables rules of the node it enters, then the route that node takes to it.

    \b
    Example:
      overlaynet trace client-a 10.96.0.2:80
      overlaynet trace external 172.20.0.12:30080
      overlaynet trace node/node-1 10.244.2.3 --proto icmp
      overlaynet trace client-a 10.96.0.2:80 --live
    """
    from overlaynet.kernel import iptables, observe

    require_privileges("overlaynet trace")
    manager = _manager()
    name = _resolve_cluster(manager, cluster)
    spec = manager.spec(name)
    dst, port = tracing.parse_destination(destination)
    src, node = _trace_source(manager, name, spec, source, namespace, dst)
    packet = tracing.plan_packet(src, dst, port, proto)
    source_pod = manager.pod(name, *src.name.split("/", 1)) if src.kind == "pod" else None
    packet = dataclasses.replace(packet, **netpol_cli.trace_interfaces(manager, spec, node, src.kind, source_pod))
    netns = names.node_netns(name, node)
    backend = manager.store.get_meta(name, "kube-proxy-backend") or iptables.backend()
    if live:
        _trace_live(manager, name, src, namespace, node, packet, backend, output)
        return
    local = [a["cidr"].split("/")[0] for a in observe.observe_addresses(netns)]
    branches = tracing.trace_rules(iptables.save(netns, backend), packet, local, node)
    who, nodes_by_ip = _who(manager, name, spec)
    hops: dict[str, tracing.RouteHop] = {}
    for index, branch in enumerate(branches):
        if branch.verdict in ("REJECT", "DROP"):
            continue
        target = tracing.destination_ip(branch)
        if target not in hops:
            hops[target] = _route_hop(name, node, src, target, who, nodes_by_ip)
        branches[index] = dataclasses.replace(branch, hop=hops[target])
    report = tracing.TraceReport(src, destination, proto, node, netns,
                                 "nat OUTPUT" if src.kind == "node" else "nat PREROUTING", branches)
    if output == "json":
        click.echo(json.dumps(tracing.as_dict(report), indent=2))
    else:
        click.echo(tracing.render_text(report, who))


def _trace_live(manager, cluster: str, src: tracing.Source, namespace: str, node: str, packet, backend: str,
                output: str | None) -> None:
    """One real packet: the trace rule recorded in the store before it goes in, so a ``trace
    --live`` killed half-way has its rule removed by the next one (``down`` removes it with
    the node's namespace)."""
    from overlaynet.kernel import live_trace

    node_ns = names.node_netns(cluster, node)
    if src.kind == "pod":
        source_ns = names.pod_netns(cluster, namespace, src.name.split("/", 1)[1])
    elif src.kind == "node":
        source_ns = node_ns
    else:
        source_ns = names.external_netns(cluster)
    store = manager.store
    with store.cluster_lock(cluster):
        store.set_meta(cluster, f"trace-live/{node}", tracing.live_rule(packet))
        try:
            text = live_trace.trace_one_packet(
                node_ns, tracing.live_rule(packet),
                lambda: live_trace.send_probe(source_ns, packet.dst, packet.dport, packet.proto), backend)
        finally:
            store.set_meta(cluster, f"trace-live/{node}", "")
    steps = tracing.parse_monitor(text)
    routed = steps and steps[-1].dst and steps[-1].verdict != "DROP"  # nft shows a REJECT as DROP
    hop = _route_hop(cluster, node, src, steps[-1].dst, *_who(manager, cluster, manager.spec(cluster))) \
        if routed else None
    if output == "json":
        click.echo(json.dumps({"source": {"kind": src.kind, "name": src.name, "ip": src.ip}, "node": node,
                               "live": tracing.live_as_dict(steps),
                               "route": None if hop is None else {"kind": hop.kind, "route": hop.route,
                                                                  "text": hop.text, "nextNode": hop.next_node}},
                              indent=2))
    else:
        click.echo(tracing.render_live(src, node, steps, hop))


# -- fault -----------------------------------------------------------------------------------


def _node_plan(manager, spec, node: str) -> tuple[Plan, list]:
    """What the node should hold (its plan, with the routes of the blocks when the mode has
    them and no BGP), and every node as planning sees it."""
    from overlaynet.control.records import node_info
    from overlaynet.node import routes as node_routes

    mode = get_mode(spec.cni)
    with_blocks = uses_ipam_blocks(spec) and spec.bgp != "bird"
    infos = node_routes.node_infos(manager.store, spec) if with_blocks else \
        [node_info(r) for r in manager.nodes(spec.name)]
    this = next(i for i in infos if i.name == node)
    plan = topology.plan_node(spec, mode, this, infos)
    if with_blocks:
        plan += mode.plan_blocks(spec, this)
    return plan, infos


def _carry_out(manager, spec, actions, backend: str) -> None:
    from overlaynet.kernel import bird as kernel_bird
    from overlaynet.kernel import faults as kernel_faults
    from overlaynet.node import bgp_mesh
    from overlaynet.node import routes as node_routes

    for action in actions:
        if isinstance(action, planning.StopBird):
            kernel_bird.stop_bird(bgp_mesh.bird_files(manager.store.directory, spec.name, action.node)[2])
        elif isinstance(action, planning.StartBird):
            bgp_mesh.sync(manager.store, manager.runtime.bird, spec, node_routes.node_infos(manager.store, spec))
        else:
            kernel_faults.carry_out(action, backend)


def _backend(manager, cluster: str) -> str:
    from overlaynet.kernel import iptables

    return manager.store.get_meta(cluster, "kube-proxy-backend") or iptables.backend()


def _inject(cluster: str | None, node: str, plan_fault) -> None:
    """Plan the fault, record it, then make it; on a failure undo what was made."""
    require_privileges("overlaynet fault")
    manager = _manager()
    name = _resolve_cluster(manager, cluster)
    spec = manager.spec(name)
    manager.node(name, node)  # a clear error for a node that does not exist
    store = manager.store
    with store.cluster_lock(name):
        fault_id = f"fault-{int(store.get_meta(name, 'fault-cursor', '0')) + 1}"
        fault = plan_fault(manager, spec, fault_id)
        planning.check_not_active(fault, store.list(name, planning.FAULT_KIND))
        record = planning.fault_record(fault_id, fault, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        with store.transaction():
            store.set_meta(name, "fault-cursor", fault_id.split("-")[1])
            store.put(name, record)
        backend = _backend(manager, name)
        try:
            _carry_out(manager, spec, fault.inject, backend)
        except BaseException:
            _carry_out(manager, spec, fault.undo, backend)
            store.delete(name, planning.FAULT_KIND, fault_id)
            raise
        record["status"]["phase"] = "Active"
        store.put(name, record)
    click.echo(f"{fault_id}: node {node}: {fault.change}")
    click.echo(f"  find it with: {fault.hint}")
    click.echo(f"  undo it with: overlaynet fault clear {fault_id}")


@click.group()
def fault() -> None:
    """Break a node on purpose, as the break-it labs do, and undo it (clear).

    Each fault is recorded before it is made, so `fault clear` and `down` undo it,
    also after a crash. Find it with ip link, ip route, bridge fdb, ip neigh,
    iptables-save or ping -s inside `overlaynet exec node/NAME -- ...`.

    \b
    Example:
      overlaynet fault mtu node-2 --mtu 1400
      overlaynet fault list
      overlaynet fault clear --all
    """


@fault.command("mtu")
@click.argument("node")
@click.option("--mtu", type=int, required=True, help="The MTU to set.")
@cluster_option
def fault_mtu(node, mtu, cluster):
    """Set the MTU of NODE's flannel.1 (or, without a tunnel, its eth0).

    \b
    Example:
      overlaynet fault mtu node-2 --mtu 1400
      overlaynet exec client-a -- ping -c1 -M do -s 1422 <a pod on node-3>
    """
    _inject(cluster, node, lambda m, spec, _: planning.plan_mtu(
        node, names.node_netns(spec.name, node), _node_plan(m, spec, node)[0], mtu))


@fault.command("route")
@click.argument("node")
@click.argument("cidr", metavar="DEST-CIDR")
@cluster_option
def fault_route(node, cidr, cluster):
    """Delete NODE's route to a peer's pod CIDR or block.

    \b
    Example:
      overlaynet fault route node-1 10.244.1.0/24
      overlaynet exec node/node-1 -- ip route
    """
    _inject(cluster, node, lambda m, spec, _: planning.plan_route(
        node, _node_plan(m, spec, node)[0], cidr, spec.bgp == "bird"))


def _peer_plan(manager, spec, node: str, peer: str):
    manager.node(spec.name, peer)
    if peer == node:
        raise InvalidInput(f'node "{node}": PEER must be another node')
    _, infos = _node_plan(manager, spec, node)
    by_name = {i.name: i for i in infos}
    return get_mode(spec.cni).plan_peer(spec, by_name[node], by_name[peer])


@fault.command("fdb")
@click.argument("node")
@click.argument("peer")
@cluster_option
def fault_fdb(node, peer, cluster):
    """Delete NODE's VXLAN FDB entry for PEER (where PEER's VTEP MAC is sent).

    \b
    Example:
      overlaynet fault fdb node-1 node-2
      overlaynet exec node/node-1 -- bridge fdb show dev flannel.1
    """
    _inject(cluster, node, lambda m, spec, _: planning.plan_fdb(node, peer, _peer_plan(m, spec, node, peer), spec.cni))


@fault.command("neigh")
@click.argument("node")
@click.argument("peer")
@cluster_option
def fault_neigh(node, peer, cluster):
    """Delete NODE's neighbour entry for PEER's VTEP address.

    \b
    Example:
      overlaynet fault neigh node-1 node-2
      overlaynet exec node/node-1 -- ip neigh show dev flannel.1
    """
    _inject(cluster, node, lambda m, spec, _: planning.plan_neigh(node, peer, _peer_plan(m, spec, node, peer),
                                                                   spec.cni))


@fault.command("masquerade")
@click.argument("node")
@cluster_option
def fault_masquerade(node, cluster):
    """Append a stray MASQUERADE for pod-to-pod traffic to NODE's nat POSTROUTING.

    \b
    Example:
      overlaynet fault masquerade node-1
      overlaynet verify
    """
    _inject(cluster, node, lambda m, spec, fault_id: planning.plan_masquerade(
        node, names.node_netns(spec.name, node), str(spec.cluster_cidr), fault_id))


@fault.command("bird")
@click.argument("node")
@cluster_option
def fault_bird(node, cluster):
    """Stop NODE's BIRD (a cluster made with --bgp).

    \b
    Example:
      overlaynet fault bird node-2
      overlaynet exec node/node-1 -- ip route
    """
    _inject(cluster, node, lambda m, spec, _: planning.plan_bird(node, spec.name, spec.bgp))


@fault.command("list")
@click.option("-o", "--output", type=click.Choice(["json"]), help="json for scripts.")
@cluster_option
def fault_list(output, cluster):
    """The faults made and not yet cleared.

    \b
    Example:
      overlaynet fault list
    """
    manager = _manager()
    name = _resolve_cluster(manager, cluster)
    manager.spec(name)
    records = manager.store.list(name, planning.FAULT_KIND)
    if output == "json":
        click.echo(json.dumps([{"id": r["metadata"]["name"], **{k: r["spec"][k] for k in ("type", "node", "change")},
                                "phase": r["status"]["phase"]} for r in records], indent=2))
        return
    if not records:
        click.echo(f'No faults in cluster "{name}".', err=True)
        return
    rows = [[r["metadata"]["name"], r["spec"]["node"], r["spec"]["type"], r["status"]["phase"], r["spec"]["change"]]
            for r in _by_number(records)]
    click.echo(table(["ID", "NODE", "TYPE", "PHASE", "CHANGE"], rows))


def _by_number(records: list[dict]) -> list[dict]:
    return sorted(records, key=lambda r: int(r["metadata"]["name"].split("-")[1]))


@fault.command("clear")
@click.argument("fault_id", metavar="[ID]", required=False)
@click.option("--all", "everything", is_flag=True, help="Clear every fault of the cluster.")
@cluster_option
def fault_clear(fault_id, everything, cluster):
    """Undo a fault (or --all): the MTU restored, the deleted object re-created from the
    node's plan, the stray rule removed, BIRD started again.

    \b
    Example:
      overlaynet fault clear fault-1
      overlaynet fault clear --all
    """
    if fault_id and everything:
        raise InvalidInput("fault clear takes an ID or --all, not both")
    if not fault_id and not everything:
        raise InvalidInput("fault clear needs an ID (see `overlaynet fault list`) or --all")
    require_privileges("overlaynet fault clear")
    manager = _manager()
    name = _resolve_cluster(manager, cluster)
    spec = manager.spec(name)
    store = manager.store
    with store.cluster_lock(name):
        records = _by_number(store.list(name, planning.FAULT_KIND))
        if fault_id:
            records = [r for r in records if r["metadata"]["name"] == fault_id]
            if not records:
                raise NotFoundError(f'fault "{fault_id}" not found in cluster "{name}" (see overlaynet fault list)')
        backend = _backend(manager, name)
        for record in reversed(records):
            undone = planning.fault_of(record)
            _carry_out(manager, spec, undone.undo, backend)
            store.delete(name, planning.FAULT_KIND, record["metadata"]["name"])
            click.echo(f"{record['metadata']['name']} cleared: node {undone.node}: {planning.undo_words(undone)}")
    if not records:
        click.echo(f'No faults in cluster "{name}".', err=True)
