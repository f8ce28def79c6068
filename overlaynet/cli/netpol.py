"""The CLI's NetworkPolicy verbs: ``get``/``describe`` of policies and namespaces, ``label``,
and ``netpol table`` (the pod x pod truth table, computed and optionally probed).

Like every CLI module it reads flags, calls the manager or the pure modules, and prints;
the decisions are ``policy.semantics``'s and the chain names ``node/netpol_sync``'s.
"""

from __future__ import annotations

import json

import click

from overlaynet import names
from overlaynet.api.manifests import DEFAULT_TEST_PORT
from overlaynet.api.netpol import EGRESS, INGRESS, NetworkPolicy, parse_label_changes
from overlaynet.api.objects import DEFAULT_NAMESPACE
from overlaynet.cli.output import age, table
from overlaynet.errors import InvalidInput, NotFoundError

POLICY_RESOURCES = ("networkpolicies", "networkpolicy", "netpol")
NAMESPACE_RESOURCES = ("namespaces", "namespace", "ns")
ALLOWED, DENIED = "✓", "x"
LEGEND = f"{ALLOWED} allowed, {DENIED} denied by policy (expected), - the pod itself"


def get_objects(manager, cluster: str, resource: str, object_name, output, scope, all_namespaces, selector=None,
                show_labels=False) -> None:
    """``get networkpolicy|namespace``, kubectl's columns."""
    from overlaynet.cli.commands import listed_objects, with_namespace_and_labels
    from overlaynet.control import policies

    if resource in POLICY_RESOURCES:
        kind = "networkpolicy.networking.k8s.io"
        objects = manager.store.list(cluster, policies.NETWORK_POLICY, scope)
    else:
        kind = "namespace"
        labels = policies.namespace_label_map(manager.store, cluster)
        written = {d["metadata"]["name"]: d for d in manager.store.list(cluster, policies.NAMESPACE)}
        objects = [written.get(n) or {"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": n, "labels": labels[n]}} for n in sorted(labels)]
    objects = listed_objects(kind, objects, object_name, scope, output, all_namespaces,
                             cluster_scoped=kind == "namespace", selector=selector)
    if objects is None:
        return
    if kind == "namespace":
        header = ["NAME", "STATUS", "AGE"] + (["LABELS"] if output == "wide" else [])
        rows = [[o["metadata"]["name"], "Active", age(o["metadata"].get("creationTimestamp"))]
                + ([",".join(f"{k}={v}" for k, v in sorted(o["metadata"]["labels"].items()))]
                   if output == "wide" else []) for o in objects]
    else:
        from overlaynet.api.netpol import parse_networkpolicy_document

        parsed = [parse_networkpolicy_document(o, "store") for o in objects]
        header = ["NAME", "POD-SELECTOR", "AGE"] + (["POLICY-TYPES"] if output == "wide" else [])
        rows = [[p.name, p.pod_selector.describe().replace("<none> (all)", "<none>"),
                 age(o["metadata"].get("creationTimestamp"))] + ([",".join(p.policy_types)] if output == "wide" else [])
                for p, o in zip(parsed, objects)]
    click.echo(table(*with_namespace_and_labels(header, rows, objects, all_namespaces and kind != "namespace",
                                                show_labels)))


def _peer_lines(peer, policy: NetworkPolicy) -> list[str]:
    if peer.ip_block is not None:
        excepts = ", ".join(map(str, peer.ip_block.excepts))
        return [f"IPBlock:  CIDR: {peer.ip_block.cidr} Except: {excepts or '<none>'}"]
    lines = []
    if peer.namespace_selector is not None:
        lines.append(f"NamespaceSelector: {peer.namespace_selector.describe()}")
    else:
        lines.append(f"Namespace: {policy.namespace} (the policy's own)")
    if peer.pod_selector is not None:
        lines.append(f"PodSelector: {peer.pod_selector.describe()}")
    return lines


def describe_policy(manager, cluster: str, namespace: str, name: str) -> str:
    """kubectl describe networkpolicy, plus the pods it selects now."""
    from overlaynet.control import policies
    from overlaynet.policy.semantics import peer_pods, selects

    found = [p for p in policies.stored_policies(manager.store, cluster, namespace) if p.name == name]
    if not found:
        raise NotFoundError(f'networkpolicy "{name}" not found in namespace "{namespace}" of cluster "{cluster}"')
    policy = found[0]
    view = policies.policy_view(manager.store, cluster)
    selected = [p.key for p in view.pods if selects(policy, p)]
    lines = [f"Name:         {policy.name}", f"Namespace:    {policy.namespace}", "Spec:",
             f"  PodSelector:     {policy.pod_selector.describe()}",
             f"  Selects now:     {', '.join(selected) or '<no pods>'}"]
    for direction, rules, peer_word in ((INGRESS, policy.ingress, "From"), (EGRESS, policy.egress, "To")):
        if direction not in policy.policy_types:
            lines.append(f"  Not affecting {direction.lower()} traffic")
            continue
        lines.append(f"  Allowing {direction.lower()} traffic:")
        if not rules:
            lines.append(f"    <none> (Selected pods are isolated for {direction.lower()} connectivity)")
        for index, rule in enumerate(rules):
            if index:
                lines.append("    ----------")
            ports = ", ".join(p.describe() for p in rule.ports) or "<any> (traffic allowed to all ports)"
            lines.append(f"    To Port: {ports}")
            if not rule.peers:
                lines.append(f"    {peer_word}: <any> (traffic not restricted by source)" if direction == INGRESS
                             else f"    {peer_word}: <any> (traffic not restricted by destination)")
            for peer in rule.peers:
                lines.append(f"    {peer_word}:")
                lines += [f"      {line}" for line in _peer_lines(peer, policy)]
                if peer.ip_block is None:
                    matched = ", ".join(p.key for p in peer_pods(view, policy, peer)) or "<no pods>"
                    lines.append(f"      Matches now: {matched}")
    lines.append(f"  Policy Types: {', '.join(policy.policy_types)}")
    return "\n".join(lines)


def policy_lines(manager, cluster: str, record: dict) -> list[str]:
    """``describe pod``'s NetworkPolicy section: the policies isolating it and its chains."""
    from overlaynet.control import policies
    from overlaynet.node import netpol_sync
    from overlaynet.policy import render as rendering
    from overlaynet.policy.semantics import policies_selecting

    view = policies.policy_view(manager.store, cluster)
    pod = policies.pod_endpoint(record)
    chosen = policies_selecting(view, pod)
    if not chosen[INGRESS] and not chosen[EGRESS]:
        return ["Network policy:     not isolated (no NetworkPolicy selects this pod: all traffic allowed)"]
    spec = manager.spec(cluster)
    interface = netpol_sync.pod_interface(spec, record) if pod.ip else None
    lines = ["Network policy:"]
    for direction, chain_of, key_chain in ((INGRESS, rendering.to_workload_chain, rendering.ingress_chain),
                                           (EGRESS, rendering.from_workload_chain, rendering.egress_chain)):
        found = chosen[direction]
        if not found:
            lines.append(f"  {direction}: not isolated")
            continue
        where = f"chain {chain_of(interface)}" if interface else "no chain yet (no address)"
        lines.append(f"  {direction}: isolated by {', '.join(p.name for p in found)} ({where})")
        lines += [f"    {p.name}: {key_chain(p)}" for p in found]
    if interface:
        netns = names.node_netns(cluster, record["spec"]["nodeName"])
        lines.append(f"  (try: ip netns exec {netns} iptables -L {rendering.to_workload_chain(interface)} -n -v)")
    return lines


def verdict_table(view, pods, port: int, protocol: str, measured: dict | None = None):
    """The FROM x TO grid: expected verdicts, and with ``measured`` the mismatches marked."""
    from overlaynet.policy.semantics import allowed

    header = ["FROM \\ TO"] + [p.key for p in pods]
    rows, mismatches = [], []
    for source in pods:
        row = [source.key]
        for target in pods:
            if source.key == target.key:
                row.append("-")
                continue
            expected = allowed(view, source, target, port, protocol)
            cell = ALLOWED if expected else DENIED
            if measured is not None and measured.get((source.key, target.key)) is not None \
                    and measured[(source.key, target.key)] != expected:
                observed = measured[(source.key, target.key)]
                cell = f"{cell}!"
                mismatches.append((source.key, target.key, expected, observed))
            row.append(cell)
        rows.append(row)
    return header, rows, mismatches


@click.command("label")
@click.argument("kind", type=click.Choice(["pod", "pods", "po", "namespace", "namespaces", "ns"]))
@click.argument("object_name")
@click.argument("changes", nargs=-1, required=True)
@click.option("-n", "--namespace", default=DEFAULT_NAMESPACE, show_default=True, help="The pod's namespace.")
@click.option("--overwrite", is_flag=True, help="Allow changing the value of a label that is already set.")
@click.option("--name", "cluster", metavar="CLUSTER", help="The cluster (default: the only one).")
def label(kind, object_name, changes, namespace, overwrite, cluster):
    """Set (KEY=VALUE) or remove (KEY-) labels of a pod or a namespace, as kubectl label.

    Services' endpoints and NetworkPolicies follow the new labels at once.

    \b
    Example:
      overlaynet label pod client role=frontend
      overlaynet label ns team-a team=blue
      overlaynet label pod client role-
    """
    from overlaynet.cli.commands import _manager, _resolve_cluster, require_privileges

    canonical = "pod" if kind.startswith("po") else "namespace"
    setting, removing = parse_label_changes(list(changes), canonical, object_name)
    require_privileges("overlaynet label")
    manager = _manager()
    name = _resolve_cluster(manager, cluster)
    click.echo(manager.label(name, canonical, namespace, object_name, setting, removing, overwrite))


@click.group("netpol")
def netpol() -> None:
    """NetworkPolicy tools: the truth table of who may talk to whom."""


@netpol.command("table")
@click.option("-n", "--namespace", help="Only pods of this namespace (default: every namespace).")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_TEST_PORT, show_default=True,
              help="The destination port (every pod serves 8080, TCP and UDP).")
@click.option("--protocol", type=click.Choice(["TCP", "UDP"], case_sensitive=False), default="TCP", show_default=True)
@click.option("--probe", is_flag=True, help="Also try every pair with a real connection and mark mismatches (!).")
@click.option("--timeout", type=float, default=1.0, show_default=True, help="Seconds per probe (--probe).")
@click.option("-f", "--filename", "files", multiple=True, type=click.Path(dir_okay=False),
              help="Without a cluster: a Cluster document (optional) and manifests of pods and policies.")
@click.option("-o", "--output", type=click.Choice(["json"]), help="json for scripts.")
@click.option("--name", "cluster", metavar="CLUSTER", help="The cluster (default: the only one).")
@click.pass_context
def netpol_table(ctx, namespace, port, protocol, probe, timeout, files, output, cluster):
    """The pod x pod table of allowed connections to PORT/PROTOCOL, as the policies say.

    Rows are sources, columns destinations (as the upstream conformance tests print them).
    With --probe each pair is also tried for real (the destination must serve the port) and a
    cell whose measurement disagrees ends with "!"; the exit status is then 1. With -f the table
    is computed from files alone (no root, no cluster: the pods get the addresses a cluster
    made from the same files would give them; without a Cluster document, no DNS add-on pods).

    \b
    Example:
      overlaynet netpol table
      overlaynet netpol table -n shop --port 80 --protocol UDP --probe
      overlaynet netpol table -f cluster.yaml -f pods.yaml -f policies.yaml --port 80
    """
    from overlaynet.cli.commands import _manager, _resolve_cluster, offline_inputs, require_privileges
    from overlaynet.control import policies

    protocol = protocol.upper()
    if files:
        if probe or cluster:
            raise InvalidInput("netpol table: -f computes the table from files; --probe and --name need a cluster")
        from overlaynet.control.offline import run_offline

        spec, manifests = offline_inputs(files, addons=False)  # the table of the files' pods only
        with run_offline(spec, manifests) as offline:
            view = policies.policy_view(offline.store, spec.name)
        name = spec.name
    else:
        manager = _manager()
        name = _resolve_cluster(manager, cluster)
        manager.spec(name)
        view = policies.policy_view(manager.store, name)
    pods = [p for p in view.pods if p.ip is not None and (namespace is None or p.namespace == namespace)]
    if not pods:
        raise InvalidInput(f'cluster "{name}": no running pods{f" in namespace {namespace}" if namespace else ""}')
    measured = None
    if probe:
        require_privileges("overlaynet netpol table --probe")
        measured = probe_pairs(manager, name, pods, port, protocol, timeout)
    header, rows, mismatches = verdict_table(view, pods, port, protocol, measured)
    if output == "json":
        from overlaynet.policy.semantics import allowed

        pairs = [{"from": a.key, "to": b.key, "allowed": allowed(view, a, b, port, protocol),
                  **({"connected": measured.get((a.key, b.key))} if measured is not None else {})}
                 for a in pods for b in pods if a.key != b.key]
        click.echo(json.dumps({"cluster": name, "port": port, "protocol": protocol, "pairs": pairs,
                               "mismatches": len(mismatches)}, indent=2))
    else:
        click.echo(f"{protocol}/{port}: {LEGEND}" + ("; ! the probe disagreed" if probe else ""))
        click.echo(table(header, rows))
        for source, target, expected, observed in mismatches:
            click.echo(f"✗ {source} -> {target}: policy says {'allowed' if expected else 'denied'}, "
                       f"the probe {'connected' if observed else 'did not connect'}")
        if probe and not mismatches:
            click.echo(f"All {len(pods) * (len(pods) - 1)} pairs behaved as the policies say.")
    ctx.exit(1 if mismatches else 0)


def probe_pairs(manager, cluster: str, pods, port: int, protocol: str, timeout: float) -> dict:
    """(source, destination) -> connected, measured through the agent's prober."""
    probes, index = [], {}
    for source in pods:
        for target in pods:
            if source.key == target.key:
                continue
            index[len(probes)] = (source.key, target.key)
            probes.append({"id": len(probes), "netns": names.pod_netns(cluster, source.namespace, source.name),
                           "dst": str(target.ip), "port": port, "protocol": protocol.lower()})
    results = manager.agent(cluster).probe(probes, timeout=timeout)
    return {index[r["id"]]: bool(r.get("ok")) for r in results}


def judge_verify_policies(manager, cluster: str, report, targets) -> bool:
    """``verify``: judge the probes against the cluster's policies; False when it has none."""
    from overlaynet.control import policies
    from overlaynet.tools.verify_policy import judge_policies

    if not policies.has_policies(manager.store, cluster):
        return False
    endpoints = {t.service: {f"{t.service.split('/')[0]}/{name}" for name, _, _ in t.endpoints} for t in targets}
    judge_policies(report, policies.policy_view(manager.store, cluster), endpoints)
    return True


def policy_rules(manager, spec, node: str):
    """What the policy agent loads into ``node`` now; None for a cluster that never had a policy."""
    from overlaynet.node import netpol_sync

    if manager.store.get_meta(spec.name, netpol_sync.SYNCED) is None:
        return None
    return netpol_sync.render_node(manager.store, spec, node)


def trace_interfaces(manager, spec, node: str, source_kind: str, source_pod: dict | None) -> dict:
    """The devices ``trace`` gives its packet so the policy chains' ``-i``/``-o``/physdev
    matches can be followed: where it enters ``node`` and where each local pod is reached."""
    from overlaynet.node import netpol_sync

    if spec.cni not in netpol_sync.ENFORCING_MODES or spec.cni_config:
        return {}
    bridged = spec.cni == "flannel"
    local = {r["status"]["podIP"]: ("cni0" if bridged else netpol_sync.pod_interface(spec, r))
             for r in manager.pods(spec.name) if r["spec"].get("nodeName") == node and r["status"].get("podIP")}
    found: dict = {"out_interface": "flannel.1" if bridged else names.NODE_UPLINK,
                   "out_by_destination": tuple(sorted(local.items()))}
    if source_kind == "pod" and source_pod is not None:
        veth = netpol_sync.pod_interface(spec, source_pod)
        found.update(in_interface="cni0" if bridged else veth, physdev_in=veth if bridged else None)
    elif source_kind == "external":
        found["in_interface"] = names.NODE_UPLINK
    return found
