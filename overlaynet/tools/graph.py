"""``overlaynet graph``: a running cluster's topology, as a tree in the terminal or as
Graphviz DOT for a picture (pure).

What this module owns: ``build_topology``, which joins what the store records (nodes and their
pod ranges, pods and their addresses) with what the kernel holds (``kernel.cluster_view``:
which links, routes, neighbour and FDB entries exist), so that a missing object shows as a
problem on the element it breaks; and the two renderings, ``render_text`` and ``render_dot``.

How the pictures are read from the kernel, whatever the CNI mode (no mode is named here):
- a pod hangs on the node-side device its ``eth0`` is a veth pair with (found by the peer's
  ifindex), and on that device's bridge when it has one (flannel's ``cni0``), else directly on
  the node, which routes to it (calico's ``cali…`` veths with ``/32`` routes);
- from each node to each peer, for each of the peer's pod ranges (its pod CIDR, or its IPAM
  blocks), the node's route to that range: through a VXLAN device it is a tunnel, whole only
  when the gateway's neighbour entry gives a MAC and the FDB sends that MAC to the peer's
  address; through the peer's address it is a plain route (learned over BGP when BIRD put it
  there). A missing route, neighbour or FDB entry is named as the problem.

What it never does: read the kernel or the store, run Graphviz, or print.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from overlaynet import names
from overlaynet.api.model import ClusterSpec
from overlaynet.datapath.topology import internal_ip


@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    ip: str | None
    status: str
    host_device: str | None = None  # the node side of its veth pair
    bridge: str | None = None  # the bridge that device is on, if any
    problem: str | None = None


@dataclass(frozen=True)
class Device:
    """A bridge or VXLAN device of a node."""

    name: str
    kind: str  # "bridge" or "vxlan"
    addresses: tuple[str, ...] = ()
    vni: int | None = None
    port: int | None = None
    up: bool = True


@dataclass(frozen=True)
class PeerPath:
    """How a node reaches one pod range of a peer."""

    peer: str
    pod_range: str
    kind: str  # "vxlan", "route" or "none"
    via: str  # in words: "flannel.1 (VNI 1) to 172.20.0.12", "via 172.20.0.12 dev eth0 (BGP)"
    device: str | None = None
    problem: str | None = None
    gap: str = ""  # the problem in two or three words, for a picture's edge label


@dataclass(frozen=True)
class NodeView:
    name: str
    ip: str
    netns: str
    pod_ranges: tuple[str, ...]
    devices: tuple[Device, ...]
    pods: tuple[PodView, ...]
    paths: tuple[PeerPath, ...]
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Topology:
    cluster: str
    cni: str
    description: str
    node_network: str
    gateway: str
    external: str
    cluster_cidr: str
    service_cidr: str
    range_kind: str  # "pod CIDR" or "IPAM blocks"
    underlay_netns: str
    nodes: tuple[NodeView, ...]
    unscheduled: tuple[PodView, ...]  # pods on no node yet (Pending)
    problems: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """The whole topology for scripts (``graph -o json``), with every problem listed."""
        return {**dataclasses.asdict(self), "problems": self.all_problems}

    @property
    def all_problems(self) -> list[str]:
        found = list(self.problems)
        for node in self.nodes:
            found += [f"node {node.name}: {p}" for p in node.problems]
            found += [f"pod {p.name}: {p.problem}" for p in node.pods if p.problem]
            found += [f"{node.name} -> {path.peer} ({path.pod_range}): {path.problem}"
                      for path in node.paths if path.problem]
        return found


def build_topology(spec: ClusterSpec, description: str, nodes: Sequence[dict], pods: Sequence[Mapping],
                   pod_ranges: Mapping[str, Sequence[str]], range_kind: str, kernel: Mapping) -> Topology:
    """``kernel``: ``{"underlay": <namespace>, "nodes": {node: <namespace>}, "pods": {"ns/name": <uplink>}}``,
    each as ``kernel.cluster_view`` observes it."""
    underlay = kernel["underlay"]
    problems = [] if underlay["exists"] else [f"the underlay namespace {names.underlay_netns(spec.name)} is gone"]
    ports = {link["name"]: link for link in underlay["links"] if link.get("master") == names.UNDERLAY_BRIDGE}
    ips = {n["metadata"]["name"]: internal_ip(n) for n in nodes}
    views = []
    for record in nodes:
        name = record["metadata"]["name"]
        on_node = [p for p in pods if p["spec"].get("nodeName") == name]
        views.append(_node_view(spec, name, ips, pod_ranges, on_node, kernel["nodes"][name], kernel["pods"], ports,
                                underlay["exists"]))
    unscheduled = tuple(PodView(p["metadata"]["namespace"], p["metadata"]["name"], None, _status(p))
                        for p in pods if not p["spec"].get("nodeName"))
    return Topology(spec.name, spec.cni, description, str(spec.node_network), str(spec.underlay_gateway),
                    str(spec.external_client), str(spec.cluster_cidr), str(spec.service_cidr), range_kind,
                    names.underlay_netns(spec.name), tuple(views), unscheduled, tuple(problems))


def _status(pod: Mapping) -> str:
    status = pod["status"]
    return status.get("reason") if status.get("reason") == "ContainerCreating" else status.get("phase", "Unknown")


def _node_view(spec: ClusterSpec, name: str, ips: Mapping[str, str], pod_ranges: Mapping[str, Sequence[str]],
               pods: Sequence[Mapping], observed: Mapping, uplinks: Mapping, ports: Mapping, underlay: bool) -> NodeView:
    netns = names.node_netns(spec.name, name)
    problems = []
    if not observed["exists"]:
        problems.append(f"its namespace {netns} is gone")
    links = {link["name"]: link for link in observed["links"]}
    by_index = {link["index"]: link for link in observed["links"]}
    if observed["exists"]:
        uplink = links.get(names.NODE_UPLINK)
        if uplink is None:
            problems.append("has no eth0")
        elif not uplink["up"]:
            problems.append("eth0 is down")
    port = names.node_underlay_port(name)
    if underlay and port not in ports:
        problems.append(f"eth0 is not plugged into {names.UNDERLAY_BRIDGE} (no port {port})")
    elif underlay and not ports[port]["up"]:
        problems.append(f"its port {port} on {names.UNDERLAY_BRIDGE} is down")
    addresses: dict[str, list[str]] = {}
    for address in observed["addresses"]:
        addresses.setdefault(address["dev"], []).append(address["cidr"])
    devices = tuple(Device(link["name"], link["kind"], tuple(addresses.get(link["name"], [])), link.get("vni"),
                           link.get("port"), link["up"])
                    for link in observed["links"] if link.get("kind") in ("bridge", "vxlan"))
    problems += [f"{d.name} is down" for d in devices if not d.up]
    pod_views = tuple(_pod_view(spec, p, uplinks, by_index) for p in pods)
    paths = tuple(path for peer in ips if peer != name for pod_range in pod_ranges.get(peer, ())
                  for path in [_peer_path(peer, ips[peer], pod_range, observed, links)])
    return NodeView(name, ips[name], netns, tuple(pod_ranges.get(name, ())), devices, pod_views, paths,
                    tuple(problems))


def _pod_view(spec: ClusterSpec, pod: Mapping, uplinks: Mapping, by_index: Mapping) -> PodView:
    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    ip, status = pod["status"].get("podIP"), _status(pod)
    if not ip:
        return PodView(namespace, name, None, status)
    uplink = uplinks.get(f"{namespace}/{name}")
    if uplink is None:
        return PodView(namespace, name, ip, status,
                       problem=f"no eth0 (namespace {names.pod_netns(spec.name, namespace, name)} or device gone)")
    host = by_index.get(uplink["peer_index"])
    if host is None:
        return PodView(namespace, name, ip, status, problem="the node side of its veth pair is gone")
    problem = None if uplink["up"] and host["up"] else f"its veth ({host['name']}) is down"
    return PodView(namespace, name, ip, status, host["name"], host.get("master"), problem)


def _covering_route(routes: Sequence[Mapping], pod_range: str) -> Mapping | None:
    wanted = ipaddress.IPv4Network(pod_range)
    exact = [r for r in routes if r["dst"] == pod_range]
    if exact:
        return exact[0]
    covering = [r for r in routes if ipaddress.IPv4Network(r["dst"]).prefixlen > 0
                and wanted.subnet_of(ipaddress.IPv4Network(r["dst"]))]
    return max(covering, key=lambda r: ipaddress.IPv4Network(r["dst"]).prefixlen, default=None)


def _peer_path(peer: str, peer_ip: str, pod_range: str, observed: Mapping, links: Mapping) -> PeerPath:
    route = _covering_route(observed["routes"], pod_range)
    if route is None:
        return PeerPath(peer, pod_range, "none", "no route", problem=f"no route to {pod_range}", gap="no route")
    if route.get("type", "unicast") != "unicast":
        return PeerPath(peer, pod_range, "none", route["type"], problem=f"{route['type']} route for {pod_range}",
                        gap=f"{route['type']} route")
    device = links.get(route.get("dev"))
    if device and device.get("kind") == "vxlan":
        label = f"{device['name']} (VNI {device.get('vni')})"
        neighbour = next((n for n in observed["vxlan"].get(device["name"], {}).get("neighbours", [])
                          if n["ip"] == route.get("gateway") and n.get("mac")), None)
        if neighbour is None:
            return PeerPath(peer, pod_range, "vxlan", label, device["name"],
                            f"no neighbour entry for {route.get('gateway')} on {device['name']} (ip neigh)",
                            "no neighbour entry")
        fdb = [e for e in observed["vxlan"][device["name"]]["fdb"] if e["mac"] == neighbour["mac"] and e.get("dst")]
        if not fdb:
            return PeerPath(peer, pod_range, "vxlan", label, device["name"],
                            f"no FDB entry for {neighbour['mac']} on {device['name']} (bridge fdb)", "no FDB entry")
        if fdb[0]["dst"] != peer_ip:
            return PeerPath(peer, pod_range, "vxlan", label, device["name"],
                            f"the FDB sends {neighbour['mac']} to {fdb[0]['dst']}, not {peer_ip}",
                            "FDB to another node")
        return PeerPath(peer, pod_range, "vxlan", f"encapsulated to {peer_ip}", device["name"])
    via = f"via {route.get('gateway')} dev {route.get('dev')}" + (" (BGP)" if route.get("proto") == "bird" else "")
    if route.get("gateway") != peer_ip:
        return PeerPath(peer, pod_range, "route", via, problem=f"the route to {pod_range} goes {via}, not via {peer_ip}",
                        gap="route via another node")
    return PeerPath(peer, pod_range, "route", via)


# -- text ---------------------------------------------------------------------------------------


def plain(text: str, _role: str) -> str:
    """No styling: the text as it is (for a file)."""
    return text


def render_text(topology: Topology, style: Callable[[str, str], str] = plain) -> str:
    """A tree: ranges, then the underlay with each node, its devices, its pods and its paths to
    the peers. ``style(text, role)`` may colour a part (roles: ``title``, ``bad``, ``dim``)."""
    def bad(problem: str | None) -> str:
        return f"  {style('✗ ' + problem, 'bad')}" if problem else ""

    t = topology
    lines = [style(f'cluster "{t.cluster}": cni {t.cni} ({t.description})', "title"),
             f"  node network  {t.node_network:<18} real: the nodes' eth0 on bridge {names.UNDERLAY_BRIDGE}",
             f"  cluster CIDR  {t.cluster_cidr:<18} virtual: every pod's address comes from it",
             f"  {t.range_kind + ('s' if t.range_kind == 'pod CIDR' else ''):<12}  "
             + ", ".join(f"{n.name} {' '.join(n.pod_ranges) or '<none yet>'}" for n in t.nodes)
             + ("  (one per node, from the cluster CIDR)" if t.range_kind == "pod CIDR"
                else "  (claimed by each node from the cluster CIDR)"),
             f"  service CIDR  {t.service_cidr:<18} virtual: ClusterIPs live only in iptables rules",
             (f"{names.UNDERLAY_BRIDGE} {t.gateway}: the node network's bridge (netns {t.underlay_netns})"
              + "".join(bad(p) for p in t.problems))]
    for index, node in enumerate(t.nodes):
        last_node = index == len(t.nodes) - 1 and not t.unscheduled
        stem, indent = ("└── ", "    ") if last_node else ("├── ", "│   ")
        lines.append(f"{stem}{style(node.name, 'title')}  eth0 {node.ip}  {t.range_kind} "
                     f"{' '.join(node.pod_ranges) or '<none yet>'}{''.join(bad(p) for p in node.problems)}")
        children = _node_children(node, style, bad)
        for child_index, (line, grandchildren) in enumerate(children):
            last = child_index == len(children) - 1
            lines.append(f"{indent}{'└── ' if last else '├── '}{line}")
            for g_index, grandchild in enumerate(grandchildren):
                lines.append(f"{indent}{'    ' if last else '│   '}"
                             f"{'└── ' if g_index == len(grandchildren) - 1 else '├── '}{grandchild}")
    if t.unscheduled:
        lines.append(f"└── not on a node: {', '.join(f'{p.name} ({p.status})' for p in t.unscheduled)}")
    problems = t.all_problems
    lines.append(style(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found", "bad")
                 if problems else style("no problems found", "dim"))
    return "\n".join(lines)


def _pod_line(pod: PodView, style: Callable[[str, str], str], bad: Callable[[str | None], str]) -> str:
    via = f"  {style(pod.host_device, 'dim')}" if pod.host_device else ""
    return f"pod {pod.name:<22} {pod.ip or '(' + pod.status + ')':<15}{via}{bad(pod.problem)}"


def _node_children(node: NodeView, style: Callable[[str, str], str],
                   bad: Callable[[str | None], str]) -> list[tuple[str, list[str]]]:
    children: list[tuple[str, list[str]]] = []
    for device in (d for d in node.devices if d.kind == "bridge"):
        pods = [_pod_line(p, style, bad) for p in node.pods if p.bridge == device.name]
        children.append((f"{device.name} (bridge) {' '.join(device.addresses)}", pods))
    routed = [_pod_line(p, style, bad) for p in node.pods if not p.bridge]
    if routed:
        children.append(("pods routed by the node (a /32 route each, no bridge)"
                         if any(p.host_device for p in node.pods if not p.bridge) else "pods", routed))
    for device in (d for d in node.devices if d.kind == "vxlan"):
        tunnels = [f"→ {p.peer:<10} {p.pod_range:<18} {p.via}{bad(p.problem)}"
                   for p in node.paths if p.device == device.name]
        children.append((f"{device.name} (VXLAN, VNI {device.vni}, UDP {device.port})", tunnels))
    routes = [f"→ {p.peer:<10} {p.pod_range:<18} {p.via}{bad(p.problem)}" for p in node.paths if p.device is None]
    if routes:
        children.append(("routes to the peers' pods", routes))
    return children


# -- DOT ----------------------------------------------------------------------------------------

_OK_COLOUR, _BAD_COLOUR, _TUNNEL_COLOUR, _ROUTE_COLOUR = "#4a4a4a", "#d62728", "#1f77b4", "#2ca02c"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _id(*parts: str) -> str:
    return _quote("/".join(parts))


def render_dot(topology: Topology) -> str:
    """Graphviz DOT, top to bottom: the ranges, the underlay bridge, the nodes as boxes holding
    their devices and pods, tunnels (blue, dashed) or routes (green) between nodes; anything
    broken in red with its problem."""
    t = topology
    title = f"cluster {t.cluster}: cni {t.cni} ({t.description})"
    ranges = "\n".join([f"node network {t.node_network} (real)", f"cluster CIDR {t.cluster_cidr} (virtual)"]
                       + [f"{t.range_kind} {n.name}: {' '.join(n.pod_ranges) or '-'}" for n in t.nodes]
                       + [f"service CIDR {t.service_cidr} (virtual)"])
    underlay = "\n".join([f"{names.UNDERLAY_BRIDGE} {t.gateway}", f"the node network {t.node_network}"]
                         + [f"✗ {p}" for p in t.problems])
    out = [f"digraph {_quote(t.cluster)} {{",
           ('  graph [rankdir=TB, fontname="Helvetica", fontsize=12, nodesep=0.25, ranksep=0.55, labelloc=t, '
            f"newrank=true, label={_quote(title)}];"),
           ('  node [fontname="Helvetica", fontsize=10, shape=box, style="rounded,filled", fillcolor=white, '
            f'color="{_OK_COLOUR}"];'),
           f'  edge [fontname="Helvetica", fontsize=9, arrowhead=none, color="{_OK_COLOUR}"];',
           f'  ranges [shape=note, style=filled, fillcolor="#fff8dc", label={_quote(ranges)}];',
           (f'  underlay [fillcolor="#e8e8e8", penwidth=2, color="{_BAD_COLOUR if t.problems else _OK_COLOUR}", '
            f"label={_quote(underlay)}];")]
    problems = t.all_problems
    if problems:
        out.append(f'  problems [shape=note, style=filled, fillcolor="#fde8e8", color="{_BAD_COLOUR}", '
                   f'fontcolor="{_BAD_COLOUR}", label={_quote(chr(10).join(f"✗ {p}" for p in problems))}];')
    out.append("  { rank=same; ranges; underlay;" + (" problems;" if problems else "") + " }")
    for node in t.nodes:
        out += _dot_node(node)
    out.append("  { rank=same; " + " ".join(_id(n.name, "eth0") + ";" for n in t.nodes) + " }")
    out += _dot_paths(t.nodes)
    out.append("}")
    return "\n".join(out)


def _dot_node(node: NodeView) -> list[str]:
    broken = bool(node.problems)
    label = f"{node.name}   ({' '.join(node.pod_ranges) or 'no pod range yet'})"
    out = [f"  subgraph {_quote('cluster_' + node.name)} {{",
           (f"    label={_quote(label)}; style=rounded; color=\"{_BAD_COLOUR if broken else '#888888'}\"; "
            'fontname="Helvetica-Bold";')]
    eth0 = _id(node.name, "eth0")
    eth0_label = "\n".join([f"eth0 {node.ip}"] + [f"✗ {p}" for p in node.problems])
    out.append(f"    {eth0} [fillcolor=\"#eef3fb\", color=\"{_BAD_COLOUR if broken else _OK_COLOUR}\", "
               f"label={_quote(eth0_label)}];")
    for device in node.devices:
        detail = " ".join(device.addresses) if device.kind == "bridge" else f"VXLAN VNI {device.vni}, UDP {device.port}"
        out.append(f"    {_id(node.name, device.name)} [fillcolor=\"{'#eaf5ea' if device.kind == 'bridge' else '#e6f0fa'}\", "
                   f"color=\"{_OK_COLOUR if device.up else _BAD_COLOUR}\", label={_quote(device.name + chr(10) + detail)}];")
        out.append(f"    {eth0} -> {_id(node.name, device.name)};")
    routed = [pod for pod in node.pods if not pod.bridge]
    if routed:  # pods on no bridge: the node routes to each (a /32 per pod), as calico does
        out.append(f'    {_id(node.name, "routes")} [fillcolor="#f3eefb", label="routing table\\na /32 route per pod"];')
        out.append(f"    {eth0} -> {_id(node.name, 'routes')};")
    for pod in node.pods:
        pod_id = _id("pod", pod.namespace, pod.name)
        text = f"{pod.name}\n{pod.ip or pod.status}" + (f"\n✗ {pod.problem}" if pod.problem else "")
        out.append(f"    {pod_id} [shape=ellipse, fillcolor=\"#fdf1e6\", "
                   f"color=\"{_BAD_COLOUR if pod.problem else _OK_COLOUR}\", label={_quote(text)}];")
        parent = _id(node.name, pod.bridge if pod.bridge else "routes")
        if pod.host_device:
            out.append(f"    {parent} -> {pod_id} [xlabel={_quote(pod.host_device)}];")
        else:
            out.append(f"    {parent} -> {pod_id} [style=dotted, color=\"{_BAD_COLOUR}\"];")
    out.append("  }")
    out.append(f"  underlay -> {eth0} [penwidth=2];")
    return out


def _dot_paths(nodes: Sequence[NodeView]) -> list[str]:
    """One edge per pair of nodes, both ways; red when either way is broken, its label then
    saying which way and what is missing."""
    devices = {node.name: {d.name for d in node.devices} for node in nodes}
    by_pair: dict[tuple[str, str], list[tuple[str, PeerPath]]] = {}
    for node in nodes:
        for path in node.paths:
            by_pair.setdefault(tuple(sorted((node.name, path.peer))), []).append((node.name, path))  # type: ignore[arg-type]
    out = []
    for (a, b), paths in sorted(by_pair.items()):
        tunnel = {p.device for _, p in paths}
        device = tunnel.pop() if len(tunnel) == 1 else None
        ends = [_id(n, device) if device and device in devices[n] else _id(n, "eth0") for n in (a, b)]
        kinds = {p.kind for _, p in paths}
        broken = [(n, p) for n, p in paths if p.problem]
        if broken:
            colour, style = _BAD_COLOUR, "dashed" if "vxlan" in kinds else "solid"
            label = "\n".join(f"{n} → {p.peer} {p.pod_range}: ✗ {p.gap}" for n, p in broken)
        else:
            vxlan = kinds == {"vxlan"}
            colour, style = (_TUNNEL_COLOUR, "dashed") if vxlan else (_ROUTE_COLOUR, "solid")
            label = "VXLAN" if vxlan else ("routes (BGP)" if all(p.via.endswith("(BGP)") for _, p in paths)
                                            else "routes")
        out.append(f"  {ends[0]} -> {ends[1]} [dir=both, arrowhead=normal, arrowtail=normal, arrowsize=0.6, "
                   f'constraint=false, style={style}, penwidth=1.5, color="{colour}", fontcolor="{colour}", '
                   f'label="{label}"];')
    return out
