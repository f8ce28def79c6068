"""The commands of the ``overlaynet`` CLI (click). Each command reads flags, calls the
controller or a kernel observer, and prints; errors travel up to ``overlaynet.cli.main``."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time

import click

from overlaynet import names
from overlaynet.api import model
from overlaynet.api.manifests import load_cluster, parse_manifests
from overlaynet.api.objects import DEFAULT_NAMESPACE
from overlaynet.cli import netpol as netpol_cli
from overlaynet.cli.output import age, document, table
from overlaynet.datapath.modes import KERNEL_FEATURES, KERNEL_VXLAN, get_mode, uses_ipam_blocks
from overlaynet.datapath.topology import internal_ip
from overlaynet.errors import HostError, InvalidInput, NotFoundError

OUTPUT_FORMATS = click.Choice(["wide", "json", "yaml", "name"])
_CAP_NET_ADMIN, _CAP_SYS_ADMIN = 12, 21


def _manager():
    from overlaynet.control.manager import ClusterManager
    from overlaynet.control.store import Store

    return ClusterManager(Store())


def _resolve_cluster(manager, name: str | None) -> str:
    """``--name`` (an empty one is refused, not taken as absent), or the only cluster there is."""
    if name is not None:
        names.check_cluster_name(name)
        return name
    existing = manager.store.cluster_names()
    if not existing:
        raise NotFoundError("no cluster exists (create one with `overlaynet up`)")
    if len(existing) > 1:
        raise InvalidInput(f"several clusters exist ({', '.join(existing)}): choose one with --name")
    return existing[0]


def require_privileges(action: str) -> None:
    """Creating namespaces needs CAP_SYS_ADMIN, configuring them CAP_NET_ADMIN."""
    with open("/proc/self/status") as status:
        line = next(l for l in status if l.startswith("CapEff:"))
    effective = int(line.split()[1], 16)
    missing = [name for bit, name in ((_CAP_SYS_ADMIN, "CAP_SYS_ADMIN (to create network namespaces)"),
                                      (_CAP_NET_ADMIN, "CAP_NET_ADMIN (to configure interfaces and routes)"))
               if not effective & (1 << bit)]
    if missing:
        raise HostError(f"{action} needs {' and '.join(missing)}; run it as root (e.g. with sudo)")


def check_kernel_features(spec: model.ClusterSpec) -> None:
    """Refuse, before anything is built, a mode whose kernel features this host lacks (a
    conflist of the user's needs none of ours)."""
    if spec.cni_config:
        return
    from overlaynet.kernel.apply import vxlan_supported

    probes = {KERNEL_VXLAN: vxlan_supported}
    mode = get_mode(spec.cni)
    for feature in mode.kernel_features:
        if not probes[feature]():
            raise HostError(f"this kernel has no {KERNEL_FEATURES[feature]}: the {mode.name} mode needs it")


def cluster_option(func):
    @click.option("--name", "cluster", metavar="CLUSTER", help="The cluster (default: the only one).")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="overlaynet", message="overlaynet %(version)s")
def cli() -> None:
    """See, learn and test Kubernetes pod networking with real kernel objects."""


# -- up / down / add node ------------------------------------------------------------------------


@cli.command()
@click.option("-f", "--file", "config", type=click.Path(dir_okay=False), help="A Cluster document.")
@click.option("--name", "cluster", metavar="CLUSTER", help=f"Cluster name (default {model.DEFAULT_CLUSTER_NAME}).")
@click.option("--nodes", type=int, help=f"Number of nodes (default {model.DEFAULT_NODE_COUNT}).")
@click.option("--cni", help=f"CNI mode (default {model.DEFAULT_CNI}), or the import path of a module that defines one.")
@click.option("--cluster-cidr", help=f"All pod addresses (default {model.DEFAULT_CLUSTER_CIDR}).")
@click.option("--node-cidr-mask-size", type=int, help=f"Prefix of each node's pod CIDR (default {model.DEFAULT_NODE_MASK}).")
@click.option("--service-cidr", help=f"ClusterIP range (default {model.DEFAULT_SERVICE_CIDR}).")
@click.option("--node-network", help=f"The nodes' underlay network (default {model.DEFAULT_NODE_NETWORK}).")
@click.option("--mtu", type=int, help=f"Underlay MTU (default {model.DEFAULT_UNDERLAY_MTU}).")
@click.option("--block-size", type=int, help=f"calico: IPAM block prefix (default {model.DEFAULT_BLOCK_SIZE}).")
@click.option("--bgp", "bgp", flag_value="bird", default=None, help="calico: learn block routes over a BIRD BGP mesh.")
@click.option("--cni-conflist", "cni_config", type=click.Path(dir_okay=False, exists=True, resolve_path=True),
              help="Wire pods with this network configuration list instead of ours.")
@click.option("--dns/--no-dns", default=None, help="The cluster DNS: CoreDNS pods and the kube-dns Service (default on).")
@click.option("--cluster-domain", help=f"The DNS domain of Services and pods (default {model.DEFAULT_CLUSTER_DOMAIN}).")
@click.option("--self-heal/--no-self-heal", "self_heal", default=None,
              help="Put back within a second what is deleted behind overlaynet's back (default off).")
def up(config, cluster, nodes, cni, cluster_cidr, node_cidr_mask_size, service_cidr, node_network, mtu,
       block_size, bgp, cni_config, dns, cluster_domain, self_heal):
    """Create a cluster: underlay, nodes, CNI devices and the test-server agent.

    \b
    Example:
      overlaynet up                                   # 3 nodes, Flannel-like VXLAN, named overlaynet
      overlaynet up --name lab --nodes 2 --cni calico --bgp
      overlaynet up -f examples/cluster.yaml
    """
    flags = {"nodes": nodes, "cni": cni, "cluster_cidr": cluster_cidr, "node_cidr_mask_size": node_cidr_mask_size,
             "service_cidr": service_cidr, "node_network": node_network, "mtu": mtu, "block_size": block_size,
             "bgp": bgp, "cni_config": cni_config, "dns": dns, "cluster_domain": cluster_domain,
             "self_heal": self_heal}
    if config:
        spec = load_cluster(config, cluster)
        overrides = {k: v for k, v in flags.items() if v is not None}
        if overrides:
            spec = model.build_spec(**{**model.document_arguments(spec.name, spec.to_document()["spec"]), **overrides})
    else:
        spec = model.build_spec(name=model.DEFAULT_CLUSTER_NAME if cluster is None else cluster,
                                **{k: v for k, v in flags.items() if v is not None})
    require_privileges("overlaynet up")
    from overlaynet.kernel import observe

    model.check_host_overlap(spec, observe.host_networks())
    check_kernel_features(spec)
    if spec.bgp == "bird":
        from overlaynet.kernel import bird

        bird.bird_version()  # refuses, naming the package, when BIRD is not installed
    manager = _manager()
    started = time.monotonic()
    click.echo(f'Creating cluster "{spec.name}": {len(spec.nodes)} nodes, cni {spec.cni} '
               f"({get_mode(spec.cni).description}) ...")
    manager.up(spec)
    click.echo(f"✓ underlay {spec.node_network}, cluster CIDR {spec.cluster_cidr} "
               f"(/{spec.node_cidr_mask_size} per node), service CIDR {spec.service_cidr}")
    if spec.dns:
        click.echo(f"✓ cluster DNS: kube-system/kube-dns at {spec.dns_service_ip}, domain {spec.cluster_domain}")
    if spec.self_heal:
        click.echo("✓ self-heal: routes, neighbours, FDB entries, devices, kube-proxy's chains, BIRD and the agent "
                   "come back within a second when deleted or killed behind overlaynet's back; repairs are logged "
                   f"in {manager.store.runtime_path(spec.name, 'agent.log')}")
    for node in manager.nodes(spec.name):
        click.echo(f"✓ {node['metadata']['name']:<12} {internal_ip(node):<15} podCIDR {node['spec']['podCIDR']}")
    if spec.bgp == "bird":
        from overlaynet.node import bgp_mesh

        report = bgp_mesh.mesh_report(manager, spec, timeout=10.0)
        click.echo(f"{'✓' if report.ok else '!'} BIRD mesh (AS {model.DEFAULT_BGP_AS}): {report}")
    click.echo(f'Cluster "{spec.name}" is up in {time.monotonic() - started:.2f}s. Try:\n'
               "  overlaynet apply -f examples/web.yaml\n  overlaynet get pods -o wide\n  overlaynet verify")


@cli.command()
@cluster_option
@click.option("--all", "everything", is_flag=True, help="Remove every cluster.")
def down(cluster, everything):
    """Remove a cluster and everything it owns, also after a crash.

    \b
    Example:
      overlaynet down --name lab
      overlaynet down --all
    """
    require_privileges("overlaynet down")
    manager = _manager()
    targets = manager.store.cluster_names() if everything else [_resolve_cluster(manager, cluster)]
    for name in targets:
        removed = manager.down(name)
        click.echo(f'Cluster "{name}" removed ({removed["namespaces"]} network namespaces).')


@cli.command("add")
@click.argument("kind", type=click.Choice(["node"]))
@click.argument("node_name")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="A node label (repeatable).")
@cluster_option
def add(kind, node_name, labels, cluster):
    """Add a node to a running cluster.

    \b
    Example:
      overlaynet add node node-4 --label zone=b
    """
    require_privileges("overlaynet add node")
    names.check_label("node", node_name)
    parsed = []
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep or not key:
            raise InvalidInput(f'node "{node_name}": --label {label!r} must be KEY=VALUE')
        parsed.append((key, value))
    manager = _manager()
    record = manager.add_node(_resolve_cluster(manager, cluster), model.NodeSpec(node_name, tuple(sorted(parsed))))
    click.echo(f"node/{node_name} created ({internal_ip(record)}, podCIDR {record['spec']['podCIDR']})")


# -- apply / delete ------------------------------------------------------------------------------


@cli.command()
@click.option("-f", "--filename", "files", multiple=True, required=True, type=click.Path(dir_okay=False))
@click.option("-n", "--namespace", help="Namespace for objects that name none.")
@cluster_option
def apply(files, namespace, cluster):
    """Create or update Pods and Deployments from Kubernetes YAML.

    \b
    Example:
      overlaynet apply -f examples/web.yaml -f examples/web-svc.yaml
    """
    manifests = [m for path in files for m in parse_manifests(path, namespace)]
    require_privileges("overlaynet apply")
    manager = _manager()
    for line in manager.apply(_resolve_cluster(manager, cluster), manifests):
        click.echo(line)


@cli.command()
@click.argument("kind", required=False, type=click.Choice(
    ["pod", "pods", "po", "deployment", "deployments", "deploy", "node", "nodes", "no", "service", "services", "svc",
     "networkpolicy", "networkpolicies", "netpol", "namespace", "namespaces", "ns"]))
@click.argument("object_names", nargs=-1)
@click.option("-f", "--filename", "files", multiple=True, type=click.Path(dir_okay=False))
@click.option("-n", "--namespace", help="The objects' namespace.")
@cluster_option
def delete(kind, object_names, files, namespace, cluster):
    """Delete pods, deployments or nodes (by name, or the objects of -f files).

    \b
    Example:
      overlaynet delete pod client-a
      overlaynet delete deployment web
      overlaynet delete -f examples/web.yaml
    """
    if not files and not (kind and object_names):
        raise InvalidInput("delete needs KIND NAME... or -f FILE")
    require_privileges("overlaynet delete")
    manager = _manager()
    name = _resolve_cluster(manager, cluster)
    canonical = {"po": "pod", "de": "deployment", "no": "node", "se": "service", "sv": "service",
                 "ne": "networkpolicy", "na": "namespace", "ns": "namespace"}
    targets = [(canonical[kind[:2]], n, namespace or DEFAULT_NAMESPACE) for n in object_names] if kind else []
    for path in files:
        for manifest in parse_manifests(path, namespace):
            manifest_kind = {"PodManifest": "pod", "DeploymentManifest": "deployment", "Service": "service",
                             "NetworkPolicy": "networkpolicy", "Namespace": "namespace"}.get(type(manifest).__name__)
            if manifest_kind:
                targets.append((manifest_kind, manifest.name, manifest.namespace))
    missing: list[NotFoundError] = []
    for target_kind, target, target_namespace in targets:
        try:
            if target_kind == "pod":
                manager.delete_pod(name, target_namespace, target)
            elif target_kind == "deployment":
                manager.delete_deployment(name, target_namespace, target)
            elif target_kind == "service":
                manager.delete_service(name, target_namespace, target)
            elif target_kind == "networkpolicy":
                manager.delete_policy(name, target_namespace, target)
            elif target_kind == "namespace":
                manager.delete_namespace(name, target)
            else:
                manager.remove_node(name, target)
        except NotFoundError as exc:  # as kubectl: the others are still deleted, the exit says so
            missing.append(exc)
            continue
        full = {"deployment": "deployment.apps", "networkpolicy": "networkpolicy.networking.k8s.io"}
        click.echo(f"{full.get(target_kind, target_kind)}/{target} deleted")
    if missing:
        for exc in missing[:-1]:
            click.echo(f"error: {exc}", err=True)
        raise missing[-1]


# -- get / describe ------------------------------------------------------------------------------


def listed_objects(kind: str, objects: list[dict], object_name: str | None, scope: str | None, output: str | None,
                   all_namespaces: bool, cluster_scoped: bool, selector: str | None = None) -> list[dict] | None:
    """What every ``get`` does before its table: the objects ``-l`` selects, the named object
    (or NotFound), ``-o json|yaml|name``, kubectl's "No resources found". The objects to
    tabulate, or None when there is nothing more to print."""
    if selector is not None:
        from overlaynet.api.netpol import parse_selector_string

        chosen = parse_selector_string(selector)
        objects = [o for o in objects if chosen.matches(o["metadata"].get("labels") or {})]
    if object_name:
        objects = [o for o in objects if o["metadata"]["name"] == object_name]
        if not objects:
            where = f' in namespace "{scope}"' if not cluster_scoped and scope else ""
            raise NotFoundError(f'{kind.split(".")[0]} "{object_name}" not found{where}')
    if output in ("json", "yaml"):
        click.echo(document(objects, output, single=bool(object_name)))
        return None
    if output == "name":
        click.echo("\n".join(f"{kind}/{o['metadata']['name']}" for o in objects))
        return None
    if not objects:
        where = "" if cluster_scoped else (" in any namespace" if all_namespaces else f" in {scope} namespace")
        click.echo(f"No resources found{where}.", err=True)
        return None
    return objects


def _external_ip(service: dict) -> str:
    """kubectl's EXTERNAL-IP: load-balancer ingress then externalIPs; ``<pending>`` for a
    LoadBalancer without an address, ``<none>`` for other types without externalIPs."""
    ingress = [i["ip"] for i in ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress", [])]
    addresses = ingress + list(service["spec"].get("externalIPs", []))
    if addresses:
        return ",".join(addresses)
    return "<pending>" if service["spec"]["type"] == "LoadBalancer" else "<none>"


def _node_status(node: dict) -> str:
    return "Ready" if node["status"]["conditions"][0]["status"] == "True" else "NotReady"


def _pod_ready(pod: dict) -> str:
    statuses = pod["status"].get("containerStatuses") or []
    total = len(pod["spec"].get("containers", [])) or 1
    return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"


def _pod_status(pod: dict) -> str:
    """kubectl's STATUS column: ContainerCreating while being wired, else the phase."""
    status = pod["status"]
    return "ContainerCreating" if status.get("reason") == "ContainerCreating" else status["phase"]


@cli.command()
@click.argument("resource", type=click.Choice(["nodes", "node", "no", "pods", "pod", "po", "deployments",
                                               "deployment", "deploy", "services", "service", "svc",
                                               "endpointslices", "endpointslice", "endpoints", "ep",
                                               "clusters", "cluster", "networkpolicies", "networkpolicy", "netpol",
                                               "namespaces", "namespace", "ns"]))
@click.argument("object_name", required=False)
@click.option("-o", "--output", type=OUTPUT_FORMATS, help="wide, json, yaml or name.")
@click.option("-n", "--namespace", help="Only this namespace (default: default).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@click.option("-l", "--selector", metavar="SELECTOR", help="Only objects with these labels: app=web,tier!=db, "
                                                           "env in (a,b), key, !key.")
@click.option("--show-labels", is_flag=True, help="A LABELS column, last.")
@cluster_option
def get(resource, object_name, output, namespace, all_namespaces, selector, show_labels, cluster):
    """List nodes, pods, deployments or clusters, in kubectl's shapes.

    \b
    Example:
      overlaynet get pods -o wide
      overlaynet get pods -l app=web --show-labels
      overlaynet get nodes -o json
      overlaynet get endpointslices
    """
    manager = _manager()
    if resource.startswith("cluster"):
        _get_clusters(manager, object_name, output)
        return
    name = _resolve_cluster(manager, cluster)
    manager.spec(name)  # a clear error for a cluster that does not exist
    scope = None if all_namespaces else (namespace or DEFAULT_NAMESPACE)
    if resource in netpol_cli.POLICY_RESOURCES + netpol_cli.NAMESPACE_RESOURCES:
        netpol_cli.get_objects(manager, name, resource, object_name, output, scope, all_namespaces, selector,
                               show_labels)
        return
    if resource in ("nodes", "node", "no"):
        kind, objects = "node", manager.nodes(name)
    elif resource in ("pods", "pod", "po"):
        kind, objects = "pod", manager.pods(name, scope)
    elif resource in ("services", "service", "svc"):
        kind, objects = "service", manager.store.list(name, "Service", scope)
    elif resource in ("endpointslices", "endpointslice", "endpoints", "ep"):
        kind, objects = "endpointslice.discovery.k8s.io", manager.store.list(name, "EndpointSlice", scope)
    else:
        kind, objects = "deployment.apps", manager.deployments(name, scope)
    objects = listed_objects(kind, objects, object_name, scope, output, all_namespaces, cluster_scoped=kind == "node",
                             selector=selector)
    if objects is None:
        return
    wide = output == "wide"
    cni = manager.spec(name).cni
    if kind == "node":
        spec = manager.spec(name)
        if wide and uses_ipam_blocks(spec):
            from overlaynet.node.routes import node_infos

            blocks = {n.name: ",".join(map(str, n.blocks)) or "<none>" for n in node_infos(manager.store, spec)}
            ranges, range_header = [blocks[o["metadata"]["name"]] for o in objects], "BLOCKS"
        else:
            ranges, range_header = [o["spec"]["podCIDR"] for o in objects], "POD-CIDR"
        header = ["NAME", "STATUS", "ROLES", "AGE"] + (["INTERNAL-IP", range_header, "CNI", "NETNS"] if wide else [])
        rows = [[o["metadata"]["name"], _node_status(o), "<none>", age(o["metadata"].get("creationTimestamp"))]
                + ([internal_ip(o), pod_range, cni, names.node_netns(name, o["metadata"]["name"])]
                   if wide else []) for o, pod_range in zip(objects, ranges)]
    elif kind == "pod":
        header = ["NAME", "READY", "STATUS", "RESTARTS", "AGE"] + (["IP", "NODE", "NETNS"] if wide else [])
        rows = [[o["metadata"]["name"], _pod_ready(o), _pod_status(o),
                 str(sum(c.get("restartCount", 0) for c in o["status"].get("containerStatuses", []))),
                 age(o["metadata"].get("creationTimestamp"))]
                + ([o["status"].get("podIP", "<none>"), o["spec"].get("nodeName", "<none>"),
                    names.pod_netns(name, o["metadata"]["namespace"], o["metadata"]["name"])
                    if o["status"].get("podIP") else "<none>"] if wide else []) for o in objects]
    elif kind == "service":
        header = ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"] + (["SELECTOR"] if wide else [])
        rows = [[o["metadata"]["name"], o["spec"]["type"], o["spec"].get("clusterIP", "<none>"), _external_ip(o),
                 ",".join(f"{p['port']}{':' + str(p['nodePort']) if p.get('nodePort') else ''}/{p['protocol']}"
                          for p in o["spec"]["ports"])]
                + ([",".join(f"{k}={v}" for k, v in (o["spec"].get("selector") or {}).items()) or "<none>"]
                   if wide else []) for o in objects]
    elif kind.startswith("endpointslice"):
        header = ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS"]
        rows = [[o["metadata"]["name"], o.get("addressType", "IPv4"),
                 ",".join(str(p.get("port")) for p in o.get("ports") or []) or "<unset>",
                 ",".join(a for e in o.get("endpoints") or [] for a in e.get("addresses", [])
                          if (e.get("conditions") or {}).get("ready", True)) or "<none>"] for o in objects]
    else:
        header = ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"] + (["SELECTOR"] if wide else [])
        rows = [[o["metadata"]["name"], f"{o['status'].get('readyReplicas', 0)}/{o['spec']['replicas']}",
                 str(o["status"].get("updatedReplicas", 0)), str(o["status"].get("availableReplicas", 0)),
                 age(o["metadata"].get("creationTimestamp"))]
                + ([",".join(f"{k}={v}" for k, v in o["spec"]["selector"]["matchLabels"].items())] if wide else [])
                for o in objects]
    click.echo(table(*with_namespace_and_labels(header, rows, objects, all_namespaces and kind != "node",
                                                show_labels)))


def with_namespace_and_labels(header: list[str], rows: list[list[str]], objects: list[dict], namespaced: bool,
                              show_labels: bool) -> tuple[list[str], list[list[str]]]:
    """kubectl's extra columns: NAMESPACE first with ``-A``, LABELS last with ``--show-labels``."""
    if namespaced:
        header = ["NAMESPACE"] + header
        rows = [[o["metadata"]["namespace"]] + row for o, row in zip(objects, rows)]
    if show_labels:
        header = header + ["LABELS"]
        rows = [row + [",".join(f"{k}={v}" for k, v in sorted((o["metadata"].get("labels") or {}).items()))
                       or "<none>"] for o, row in zip(objects, rows)]
    return header, rows


def _get_clusters(manager, object_name, output) -> None:
    clusters = manager.store.cluster_names()
    if object_name:
        clusters = [c for c in clusters if c == object_name]
        if not clusters:
            raise NotFoundError(f'cluster "{object_name}" does not exist')
    if output in ("json", "yaml"):
        click.echo(document([manager.store.get_cluster(c)["document"] for c in clusters], output, bool(object_name)))
        return
    if not clusters:
        click.echo("No clusters found.", err=True)
        return
    rows = []
    for name in clusters:
        spec, phase = manager.spec(name), manager.store.get_cluster(name)["phase"]
        rows.append([name, phase, spec.cni, str(len(manager.nodes(name))), str(len(manager.pods(name))),
                     str(spec.cluster_cidr), str(spec.service_cidr), str(spec.node_network)])
    click.echo(table(["NAME", "PHASE", "CNI", "NODES", "PODS", "CLUSTER-CIDR", "SERVICE-CIDR", "NODE-NETWORK"], rows))


@cli.command()
@click.argument("kind", type=click.Choice(["node", "nodes", "no", "pod", "pods", "po", "service", "services", "svc",
                                           "networkpolicy", "networkpolicies", "netpol"]))
@click.argument("object_name")
@click.option("-n", "--namespace", default=DEFAULT_NAMESPACE, show_default=True)
@cluster_option
def describe(kind, object_name, namespace, cluster):
    """Show a node, pod or service with the state behind it (devices, routes, peers, endpoints).

    \b
    Example:
      overlaynet describe node node-1
      overlaynet describe pod client-a
      overlaynet describe svc web
    """
    from overlaynet.cli import describe as describing

    manager = _manager()
    name = _resolve_cluster(manager, cluster)
    if kind.startswith("no"):
        click.echo(describing.describe_node(manager, name, object_name))
    elif kind.startswith("po"):
        click.echo(describing.describe_pod(manager, name, namespace, object_name))
    elif kind.startswith("net"):
        click.echo(netpol_cli.describe_policy(manager, name, namespace, object_name))
    else:
        click.echo(describing.describe_service(manager, name, namespace, object_name))


def _served_port(text: str) -> tuple[int, str]:
    """``8080`` or ``8080/tcp`` or ``53/udp`` -> (port, "TCP"|"UDP")."""
    number, _, protocol = text.partition("/")
    protocol = (protocol or "tcp").upper()
    if not number.isdigit() or not 1 <= int(number) <= 65535 or protocol not in ("TCP", "UDP"):
        raise InvalidInput(f'testserver serve: --port "{text}": expected PORT or PORT/tcp or PORT/udp, PORT 1-65535')
    return int(number), protocol


@cli.command()
@click.argument("action", type=click.Choice(["stop", "start", "status", "serve"]))
@click.argument("pod_name", required=False)
@click.option("-n", "--namespace", help="The pod's namespace (default: default).")
@click.option("--netns", "netns_name", metavar="NETNS",
              help="serve: the network namespace to serve in (one you made with `ip netns add`).")
@click.option("--port", "ports", multiple=True, metavar="PORT[/udp]",
              help="serve: a port to listen on (repeatable; default: 8080/tcp).")
@click.option("--hostname", help="serve: what / and /hostname answer (default: the NETNS name).")
@cluster_option
def testserver(action, pod_name, namespace, netns_name, ports, hostname, cluster):
    """Stop or start a pod's test server (its sockets close: TCP is refused, probes fail),
    or serve the same test server in a namespace you made by hand.

    Inside `overlaynet exec POD -- ...` the pod is implied:
    `overlaynet exec web-1 -- overlaynet testserver stop`.

    `serve` answers GET /, /hostname, /clientip (the peer's address as this end sees it),
    /echo?msg=X and /healthz over TCP, and `hostname`, `clientip`, `echo X` over UDP, until
    Ctrl-C or SIGTERM.

    \b
    Example:
      overlaynet testserver stop web-1
      overlaynet exec web-1 -- overlaynet testserver start
      overlaynet testserver serve --netns my-pod --port 8080 --port 5353/udp
    """
    from overlaynet.control.records import pod_key

    if action == "serve":
        _serve_by_hand(pod_name, netns_name, ports, hostname)
        return
    if netns_name or ports or hostname:
        raise InvalidInput(f"testserver {action}: --netns, --port and --hostname are for `testserver serve`")
    manager = _manager()
    name = _resolve_cluster(manager, cluster if cluster is not None else os.environ.get("OVERLAYNET_CLUSTER"))
    if pod_name is None:
        implied = os.environ.get("OVERLAYNET_POD")
        if not implied:
            raise InvalidInput("testserver needs a POD (or run it inside `overlaynet exec POD -- ...`)")
        namespace, pod_name = implied.split("/", 1)
    namespace = namespace or DEFAULT_NAMESPACE
    manager.pod(name, namespace, pod_name)
    agent = manager.agent(name)
    if action == "status":
        served = next(k for k in agent.list() if k["key"] == pod_key(namespace, pod_name))
        click.echo(f"pod/{pod_name}: test server {'serving' if served['serving'] else 'stopped'}")
        return
    agent.set_serving(pod_key(namespace, pod_name), action == "start")
    click.echo(f"pod/{pod_name}: test server {'started' if action == 'start' else 'stopped'}")


def _serve_by_hand(pod_name, netns_name, ports, hostname) -> None:
    from overlaynet.agent import testserver as server
    from overlaynet.kernel import netns

    if pod_name is not None:
        raise InvalidInput(f'testserver serve: takes --netns, not a pod ("{pod_name}"); a pod\'s server is already running')
    if not netns_name:
        raise InvalidInput("testserver serve: --netns is required (the namespace to serve in)")
    names.check_netns_name(netns_name)
    served = tuple(sorted({_served_port(port) for port in ports or ("8080",)}))
    if not netns.exists(netns_name):
        raise NotFoundError(f'testserver serve: netns "{netns_name}" does not exist (ip netns list shows them)')
    listening = ", ".join(f"{port}/{protocol.lower()}" for port, protocol in served)

    def ready() -> None:
        click.echo(f'netns/{netns_name}: test server listening on {listening} (Ctrl-C stops it)')

    server.serve_in_foreground(netns_name, hostname or netns_name, served, on_ready=ready)


# -- rules ------------------------------------------------------------------------------------


def _render_node(spec, node: dict, services, slices):
    from overlaynet.node import proxier

    return proxier.render_node(spec, node, services, slices)


def _table_sections(payload: str, tables: list[str]) -> list[str]:
    """The lines of the chosen tables of a restore payload or an iptables-save text."""
    lines, keep = [], False
    for line in payload.splitlines():
        if line.startswith("*"):
            keep = line[1:] in tables
        if keep:
            lines.append(line)
        if line == "COMMIT":
            keep = False
    return lines


@cli.command()
@click.argument("node_name")
@click.option("--table", type=click.Choice(["nat", "filter"]), help="Only this table (default: nat and filter).")
@click.option("--diff", is_flag=True, help="Compare the live rules with what overlaynet would load now.")
@cluster_option
def rules(node_name, table, diff, cluster):
    """The live iptables rules of a node's namespace, with the Service each chain belongs to.

    \b
    Example:
      overlaynet rules node-1 --table nat
      overlaynet rules node-1 --diff
    """
    from overlaynet.kernel import iptables
    from overlaynet.node import proxier

    require_privileges("overlaynet rules")
    manager = _manager()
    name = _resolve_cluster(manager, cluster)
    spec = manager.spec(name)
    rendered = _render_node(spec, manager.node(name, node_name), proxier.stored_services(manager, name),
                            proxier.stored_slices(manager, name))
    policy = netpol_cli.policy_rules(manager, spec, node_name)  # None: the cluster never had a policy
    backend = manager.store.get_meta(name, "kube-proxy-backend") or iptables.backend()
    netns = names.node_netns(name, node_name)
    tables = [table] if table else ["nat", "filter"]
    live = iptables.save(netns, backend)
    click.echo(f"# node {node_name} (netns {netns}), iptables backend: {backend}")
    if diff:
        synced = manager.store.get_meta(name, "kube-proxy-backend") is not None  # kube-proxy has run here
        expected = (rendered.payload if synced else "") + (policy.payload if policy else "")
        click.echo("\n".join(_rules_diff(live, expected, tables)) or "# live rules match the rendered ones")
        return
    owners = {chain: f"service {owner}" for chain, owner in rendered.chain_owners().items()}
    owners.update(policy.chain_owners() if policy else {})
    for line in _table_sections(live, tables):
        chain = line[1:].split()[0] if line.startswith(":") else None
        click.echo(f"{line}   # {owners[chain]}" if chain in owners else line)


def _rules_diff(live: str, rendered: str, tables: list[str]) -> list[str]:
    """A unified diff of kube-proxy's and the policies' chains, live against rendered, after iptables-save's
    normalisations (address forms, match order, defaults) so only real differences show."""
    import difflib

    from overlaynet.proxy.rules import owned_rule_lines

    return list(difflib.unified_diff(owned_rule_lines(live, tables), owned_rule_lines(rendered, tables), "live",
                                     "rendered", lineterm=""))


@cli.command("render")
@click.option("-f", "--filename", "files", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="A Cluster document and application manifests (repeatable).")
@click.option("--node", "node_name", required=True, help="The node whose rules to print.")
@click.option("--table", type=click.Choice(["nat", "filter"]), help="Only this table (default: nat and filter).")
def render_rules(files, node_name, table):
    """The kube-proxy rules (and NetworkPolicy chains) a node would get, without root and without a cluster.

    \b
    Example:
      overlaynet render -f examples/cluster.yaml -f examples/web.yaml -f examples/web-svc.yaml --node node-1
    """
    from overlaynet.control.offline import run_offline
    from overlaynet.node import proxier

    spec, manifests = offline_inputs(files)
    with run_offline(spec, manifests) as manager:
        nodes = manager.nodes(spec.name)
        node = next((n for n in nodes if n["metadata"]["name"] == node_name), None)
        if node is None:
            raise NotFoundError(f'node "{node_name}" is not in cluster "{spec.name}" '
                                f"(nodes: {', '.join(n['metadata']['name'] for n in nodes)})")
        services = proxier.stored_services(manager, spec.name)
        slices = proxier.stored_slices(manager, spec.name)
        policy = netpol_cli.policy_rules(manager, spec, node_name)  # with NetworkPolicies: the cali-* chains
    ruleset = _render_node(spec, node, services, slices)
    click.echo(f"# kube-proxy (iptables mode) for node {node_name} ({internal_ip(node)}) of cluster "
               f'"{spec.name}": {len(services)} services; load with iptables-restore --noflush')
    for jump in ruleset.jumps:
        click.echo(f"# and, outside the restore, if missing: iptables -t {jump.table} {jump.rule.replace('-A', '-I', 1)}")
    click.echo("\n".join(_table_sections(ruleset.payload, [table] if table else ["nat", "filter"])))
    if policy is not None and table in (None, "filter"):
        click.echo(f"# NetworkPolicy chains for node {node_name}; load with iptables-restore --noflush, then the jumps:")
        click.echo("\n".join(_table_sections(policy.payload, ["filter"])))
        click.echo("\n".join(_table_sections(policy.moves, ["filter"])))


def offline_inputs(files, addons: bool = True) -> tuple[model.ClusterSpec, list]:
    """A Cluster document (default: the default cluster, without its DNS add-on unless
    ``addons``) and the manifests of ``files``."""
    from overlaynet.api.manifests import load_documents, parse_document

    spec, manifests = model.build_spec(dns=addons), []
    for path in files:
        for index, raw in enumerate(load_documents(path), 1):
            if raw.get("kind") == "Cluster":
                spec = load_cluster(path)
            else:
                manifests.append(parse_document(raw, path, None, index))
    return spec, manifests


# -- exec / verify -------------------------------------------------------------------------------


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-n", "--namespace", default=DEFAULT_NAMESPACE, show_default=True)
@cluster_option
def exec(target, command, namespace, cluster):  # noqa: A001 - kubectl's verb
    """Run a command inside a pod's network namespace, a node's (node/NAME), or the outside
    client's on the node network (external); a pod named "external" is pod/external.

    \b
    Example:
      overlaynet exec client-a -- ping -c1 10.244.1.2
      overlaynet exec node/node-1 -- ip route
      overlaynet exec external -- curl -s http://172.20.0.11:30080/hostname
    """
    require_privileges("overlaynet exec")
    manager = _manager()
    name = _resolve_cluster(manager, cluster)
    if target.startswith("node/"):
        netns = names.node_netns(name, manager.node(name, target[5:])["metadata"]["name"])
    elif target == "external":
        manager.spec(name)
        netns = names.external_netns(name)
    else:
        pod_name = target[4:] if target.startswith("pod/") else target
        record = manager.pod(name, namespace, pod_name)
        if not record["status"].get("podIP"):
            raise InvalidInput(f'pod "{pod_name}": is {_pod_status(record)}, it has no network namespace yet')
        netns = names.pod_netns(name, namespace, pod_name)
        # What `overlaynet testserver stop|start` run inside needs to find this pod's server.
        os.environ.update(OVERLAYNET_CLUSTER=name, OVERLAYNET_POD=f"{namespace}/{pod_name}",
                          OVERLAYNET_STATE_DIR=manager.store.directory)
    # `overlaynet` and `python3` inside mean this installation's, as in an activated venv.
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", os.defpath)])
    argv = ["ip", "netns", "exec", netns, *command]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise HostError(f"cannot run {argv[0]}: {exc.strerror}") from None


@cli.group()
def cni() -> None:
    """overlaynet's CNI plugins, for a container runtime or cnitool of your own."""


@cni.command("install")
@click.option("--dir", "directory", default="/opt/cni/bin", show_default=True, type=click.Path(file_okay=False),
              help="Where to write the plugins (a CNI_PATH directory).")
def cni_install(directory):
    """Write overlaynet-flannel, -calico and -ipam into DIR, bound to the Python overlaynet runs
    in, so any runtime can exec them whatever its PATH.

    \b
    Example:
      overlaynet cni install --dir /opt/cni/bin
      echo '{"cniVersion": "1.0.0"}' | CNI_COMMAND=VERSION /opt/cni/bin/overlaynet-flannel
    """
    from overlaynet.cni import launch

    try:
        written = launch.install_plugins(directory)
    except OSError as exc:
        raise HostError(f'cni install: cannot write into "{directory}": {exc.strerror}') from None
    for path in written:
        click.echo(f"{path} (runs under {sys.executable})")


@cli.command()
@click.option("-o", "--output", type=click.Choice(["json"]), help="json for scripts.")
@click.option("--timeout", type=float, default=2.0, show_default=True, help="Seconds per probe.")
@cluster_option
@click.pass_context
def verify(ctx, output, timeout, cluster):
    """Prove the Kubernetes network model pair by pair: no NAT anywhere.

    \b
    Example:
      overlaynet verify
      overlaynet verify -o json
    """
    import concurrent.futures

    from overlaynet.node import proxier
    from overlaynet.tools import verify as verifying

    require_privileges("overlaynet verify")
    manager = _manager()
    name = _resolve_cluster(manager, cluster)
    spec = manager.spec(name)
    node_eps, pod_eps = verifying.endpoints(name, manager.nodes(name), manager.pods(name))
    if not pod_eps:
        raise InvalidInput(f'cluster "{name}": no running pods to verify (apply some, e.g. examples/web.yaml)')
    started = time.monotonic()
    probes, index = verifying.plan_probes(node_eps, pod_eps)
    targets = verifying.service_targets(proxier.stored_services(manager, name),
                                        proxier.stored_slices(manager, name), manager.pods(name))
    external = verifying.Endpoint("external", "client", names.external_netns(name), str(spec.external_client), "")
    from overlaynet.control.dns import DNS_NAMESPACE, DNS_SERVICE

    # kube-dns answers DNS, not the test server's requests: the DNS rule (e) checks it.
    targets = [t for t in targets if not t.service.startswith(f"{DNS_NAMESPACE}/{DNS_SERVICE}:")]
    service_probes, service_index = verifying.plan_service_probes(targets, node_eps, pod_eps, external, len(probes))
    dns_probes, dns_index = _dns_probes(manager, spec, pod_eps, len(probes) + len(service_probes))
    # Rule (c) reads every pod's eth0 from the kernel (~2 ms a pod): in a thread while the
    # agent probes, not after it.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        addresses = pool.submit(_eth0_addresses, pod_eps)
        results = manager.agent(name).probe(probes + service_probes + dns_probes, timeout=timeout)
        own = addresses.result()
    report = verifying.build_report(index, results[:len(probes)], own)
    report.checks += verifying.judge_services(service_index, results[len(probes):len(probes) + len(service_probes)])
    report.checks += verifying.judge_dns(dns_index, results[len(probes) + len(service_probes):])
    policed = netpol_cli.judge_verify_policies(manager, name, report, targets)
    elapsed = time.monotonic() - started
    if output == "json":
        click.echo(json.dumps({"cluster": name, "cni": spec.cni, "passed": report.passed, "seconds": round(elapsed, 3),
                               "summary": report.summary(), "dnsSkipped": None if spec.dns else verifying.DNS_SKIPPED,
                               "checks": [c.as_dict() for c in report.checks]}, indent=2))
    else:
        _print_report(verifying, report, pod_eps, node_eps, elapsed, name, spec.cni, policed)
        if not spec.dns:
            click.echo(verifying.DNS_SKIPPED)
    ctx.exit(0 if report.passed else 1)


def _eth0_addresses(pod_eps) -> dict[str, list[str]]:
    """verify's rule (c): the addresses each pod's eth0 has, read from its namespace."""
    from overlaynet.kernel import observe

    return {pod.name: [a["cidr"].split("/")[0] for a in observe.observe_addresses(pod.netns)
                       if a["dev"] == names.POD_INTERFACE] for pod in pod_eps}


def _dns_probes(manager, spec, pod_eps, first_id: int) -> tuple[list[dict], dict]:
    """verify's DNS queries: every Service name, and one that does not exist (none without DNS)."""
    from overlaynet.control import dns_records
    from overlaynet.node import proxier
    from overlaynet.tools import verify as verifying

    if not spec.dns:
        return [], {}
    services = proxier.stored_services(manager, spec.name)
    records = dns_records.plan_records(spec.cluster_domain, str(spec.dns_service_ip), services,
                                       proxier.stored_slices(manager, spec.name), manager.pods(spec.name))
    addresses: dict[str, list[str]] = {}
    for record in records:
        if record.type == "A":
            addresses.setdefault(record.name.rstrip("."), []).append(record.data)
    expected = {name: ",".join(sorted(addresses[name])) for name in
                (f"{s.name}.{s.namespace}.svc.{spec.cluster_domain}" for s in services) if name in addresses}
    missing = next(f"no-such-service-{i}.default.svc.{spec.cluster_domain}" for i in range(len(addresses) + 1)
                   if f"no-such-service-{i}.default.svc.{spec.cluster_domain}" not in addresses)
    return verifying.plan_dns_probes(expected, missing, pod_eps, str(spec.dns_service_ip), first_id)


def _print_report(verifying, report, pod_eps, node_eps, elapsed, cluster, cni, policed=False) -> None:
    titles = {"pod-pod": "(a) pod -> pod, no NAT", "node-pod": "(b) node -> pod, no NAT",
              "pod-node": "(b) pod -> node, no NAT", "self": "(c) pod's own IP == IP others see == podIP",
              **verifying.SERVICE_RULES, **verifying.DNS_RULES}
    services = len({c.target.name.split(":")[0] for c in report.checks if c.rule.startswith("svc-")})
    protocols = "TCP, UDP, ICMP and DNS" if any(c.rule in verifying.DNS_RULES for c in report.checks) \
        else "TCP, UDP and ICMP"
    click.echo(f'Verifying cluster "{cluster}" ({cni}): {len(pod_eps)} pods on {len(node_eps)} nodes'
               + (f", {services} service ports" if services else "")
               + f", {len(report.checks)} checks over {protocols}")
    summary = report.summary()
    extra = [s for s in (verifying.DENIED, verifying.POLICY) if any(s in c for c in summary.values())]
    rows = [[titles[rule], str(c["ok"]), str(c["nat"]), str(c["fail"])] + [str(c.get(s, 0)) for s in extra]
            + ["PASS" if c["nat"] == c["fail"] == 0 else "FAIL"] for rule, c in summary.items()]
    names_of = {verifying.DENIED: "DENIED (EXPECTED)", verifying.POLICY: "NOT JUDGED (POLICY)"}
    click.echo(table(["RULE", "OK", "NAT", "FAILED"] + [names_of[s] for s in extra] + ["RESULT"], rows))
    header, grid = verifying.matrix(report, pod_eps)
    click.echo("\npod -> pod matrix (✓ = TCP, UDP and ICMP reached the pod and it saw the sender's own IP"
               + ("; x = denied by NetworkPolicy, as expected; ~ = some protocols denied, as expected" if policed
                  else "") + "):")
    click.echo(table(header, grid))
    for check in report.failures[:50]:
        click.echo(f"✗ {check.describe()}")
    if len(report.failures) > 50:
        click.echo(f"... and {len(report.failures) - 50} more failures (-o json lists all)")
    verdict = "PASSED" if report.passed else f"FAILED ({len(report.failures)} checks)"
    click.echo(f"\nKubernetes network model: {verdict} in {elapsed:.2f}s")


@cli.command()
@click.option("-o", "--output", type=click.Choice(["json"]), help="json for scripts.")
@cluster_option
@click.pass_context
def reconcile(ctx, output, cluster):
    """Repair what was changed behind overlaynet's back, and print what it was.

    One pass, as the real components resync: the nodes' devices, addresses, routes, neighbour
    and FDB entries and each pod's attachment are put back where the kernel lost them, the
    agent and BIRD started again if they died, kube-proxy's rules rewritten in full. What
    cannot be put back (a pod whose namespace was deleted) is reported with what to do;
    exit 1 then.

    \b
    Example:
      ip -n demo.node.node-1 route del 10.244.2.0/24
      overlaynet reconcile
    """
    require_privileges("overlaynet reconcile")
    manager = _manager()
    name = _resolve_cluster(manager, cluster)
    repairs = manager.reconcile(name)
    unrepaired = [r for r in repairs if not r.repaired]
    if output == "json":
        click.echo(json.dumps({"cluster": name, "repairs": [dataclasses.asdict(r) for r in repairs]}, indent=2))
    elif not repairs:
        click.echo(f'cluster "{name}": nothing to repair: the kernel matches the cluster\'s state')
    else:
        for repair in repairs:
            click.echo(f"{'fixed' if repair.repaired else 'NOT FIXED'}  {repair.where}: {repair.what}")
        click.echo(f'\ncluster "{name}": {len(repairs) - len(unrepaired)} repaired, {len(unrepaired)} not')
    ctx.exit(1 if unrepaired else 0)


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell):
    """Print the shell completion script for SHELL (commands, options, choices).

    \b
    Example:
      overlaynet completion bash > /etc/bash_completion.d/overlaynet   # then open a new shell
      eval "$(overlaynet completion bash)"                            # this shell only
    """
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    click.echo(completer(cli, {}, "overlaynet", "_OVERLAYNET_COMPLETE").source())


# The learner's tools, each in its own module; registered last, as they import this one's helpers.
from overlaynet.cli.lab import lab  # noqa: E402
from overlaynet.cli.tools_doctor_graph_capture import capture, doctor, graph  # noqa: E402
from overlaynet.cli.trace_fault import fault, trace  # noqa: E402

for command in (trace, graph, capture, fault, doctor, lab, netpol_cli.label, netpol_cli.netpol):
    cli.add_command(command)
