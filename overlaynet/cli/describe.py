"""``overlaynet describe``: a node or pod as the store records it, and the kernel state
behind it read live from its namespace (devices, addresses, routes, VXLAN peers)."""

from __future__ import annotations

import json
import os

from overlaynet import names
from overlaynet.cli.netpol import policy_lines
from overlaynet.cli.output import age
from overlaynet.control.dns import runs_cluster_dns
from overlaynet.control.records import CONTAINER_ANNOTATION
from overlaynet.datapath.modes import uses_ipam_blocks
from overlaynet.node import kubelet
from overlaynet.node.resolv import etc_netns_dir


def _section(title: str, lines: list[str]) -> list[str]:
    return [f"{title}:"] + [f"  {line}" for line in lines or ["<none>"]]


def _pairs(mapping: dict) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(mapping.items())]


def _device_lines(netns: str) -> list[str]:
    from overlaynet.kernel import observe

    addresses: dict[str, list[str]] = {}
    for address in observe.observe_addresses(netns):
        addresses.setdefault(address["dev"], []).append(address["cidr"])
    lines = []
    for link in observe.observe_links(netns):
        if link["name"] == "lo":
            continue
        details = [link["kind"] or "device", f"mtu {link['mtu']}", link.get("state", "")]
        if link.get("kind") == "vxlan":
            details.append(f"id {link['vni']} local {link['local']} dev {link['dev']} dstport {link['port']} "
                           f"{'learning' if link.get('learning') else 'nolearning'}")
        if link.get("master"):
            details.append(f"master {link['master']}")
        details.append(link.get("mac") or "")
        lines.append(f"{link['name']:<12} " + " ".join(d for d in details if d)
                     + (f"  {', '.join(addresses[link['name']])}" if addresses.get(link["name"]) else ""))
    return lines


def describe_node(manager, cluster: str, node_name: str) -> str:
    from overlaynet.kernel import observe

    record = manager.node(cluster, node_name)
    spec = manager.spec(cluster)
    netns = names.node_netns(cluster, node_name)
    meta, status = record["metadata"], record["status"]
    pods = [p for p in manager.pods(cluster) if p["spec"].get("nodeName") == node_name]
    lines = [
        f"Name:               {node_name}",
        f"Cluster:            {cluster} (cni {spec.cni})",
        f"Network namespace:  {netns}   (try: ip netns exec {netns} ip route)",
        f"Labels:             {', '.join(_pairs(meta.get('labels', {})))}",
        "Annotations:",
    ] + [f"  {k}: {v}" for k, v in sorted(meta.get("annotations", {}).items())] + [
        f"CreationTimestamp:  {meta.get('creationTimestamp')} ({age(meta.get('creationTimestamp'))} ago)",
        f"PodCIDR:            {record['spec']['podCIDR']}",
    ]
    lines += _section("Addresses", [f"{a['type']}: {a['address']}" for a in status["addresses"]])
    lines += _section("Conditions", [f"{c['type']}={c['status']} ({c.get('reason', '')})" for c in status["conditions"]])
    lines += _section(f"Pods ({len(pods)})", [
        f"{p['metadata']['namespace']}/{p['metadata']['name']:<32} {p['status'].get('podIP', '<none>')}" for p in pods])
    if uses_ipam_blocks(spec):
        from overlaynet.node.routes import node_infos

        info = next(n for n in node_infos(manager.store, spec) if n.name == node_name)
        lines += _section("IPAM blocks (affinity)", [str(b) for b in info.blocks])
        lines += _section("Borrowed addresses", [str(a) for a in info.borrowed])
    if spec.bgp == "bird":
        from overlaynet.node import bgp_mesh

        lines += _section("BGP sessions (birdc show protocols)", [
            f"{s['name']:<24} {s['state']:<6} {s.get('info', '')}" for s in bgp_mesh.sessions(manager, spec, node_name)])
    lines += _section("Devices (ip -d link / ip addr)", _device_lines(netns))
    lines += _section("Routes (ip route)", observe.format_routes(observe.observe_routes(netns)).splitlines())
    paths = kubelet.node_paths(manager.store.directory, cluster, node_name)
    try:
        conflist = json.dumps(kubelet.read_conflist(paths), indent=2).splitlines()
    except OSError:
        conflist = []
    lines += _section(f"CNI configuration ({paths.conflist})", conflist)
    vxlan = [link["name"] for link in observe.observe_links(netns) if link.get("kind") == "vxlan"]
    for device in vxlan:
        neighbours = [f"{n['ip']} lladdr {n['mac']} {n['state']}" for n in observe.observe_neighbours(netns, device)
                      if n.get("mac")]
        lines += _section(f"VXLAN neighbours (ip neigh show dev {device})", neighbours)
        entries = [f"{e['mac']} dst {e['dst']} {' '.join(e.get('flags', []))}".rstrip()
                   for e in observe.observe_fdb(netns, device) if e.get("dst")]
        lines += _section(f"VXLAN forwarding (bridge fdb show dev {device})", entries)
    return "\n".join(lines)


def describe_pod(manager, cluster: str, namespace: str, pod_name: str) -> str:
    from overlaynet.kernel import observe

    record = manager.pod(cluster, namespace, pod_name)
    meta, spec, status = record["metadata"], record["spec"], record["status"]
    owner = next((f"Deployment/{o['name']}" for o in meta.get("ownerReferences", [])), "<none>")
    lines = [
        f"Name:               {pod_name}",
        f"Namespace:          {namespace}",
        f"Node:               {spec.get('nodeName', '<none>')}/{status.get('hostIP', '<none>')}",
        f"Labels:             {', '.join(_pairs(meta.get('labels', {}))) or '<none>'}",
        f"Status:             {status['phase']}" + (f" ({status['reason']})" if status.get("reason") else ""),
        f"IP:                 {status.get('podIP', '<none>')}",
        f"Controlled By:      {owner}",
    ]
    if status.get("message"):
        lines.append(f"Message:            {status['message']}")
    ports = [f"{p['containerPort']}/{p.get('protocol', 'TCP')}" + (f" ({p['name']})" if p.get("name") else "")
             for c in spec.get("containers", []) for p in c.get("ports", []) or []]
    lines += _section("Declared ports", ports)
    lines.append("Test server:        TCP+UDP 8080 and every declared port (see README: The test server)"
                 + ("; port 53 answers the cluster DNS (CoreDNS)" if runs_cluster_dns(spec) else ""))
    lines += policy_lines(manager, cluster, record)
    if status.get("podIP"):
        netns = names.pod_netns(cluster, namespace, pod_name)
        lines.append(f"Network namespace:  {netns}   (try: ip netns exec {netns} ip addr)")
        lines.append(f"DNS:                {_dns_line(spec, netns)}")
        lines += _section("Devices (ip -d link / ip addr)", _device_lines(netns))
        lines += _section("Routes (ip route)", observe.format_routes(observe.observe_routes(netns)).splitlines())
    container_id = meta.get("annotations", {}).get(CONTAINER_ANNOTATION)
    if container_id:
        result = kubelet.cached_result(manager.store.directory, cluster, spec["nodeName"], container_id,
                                       names.POD_INTERFACE)
        lines.append(f"Sandbox:            {container_id[:12]}… (CNI_CONTAINERID)")
        lines += _section("CNI result (ADD, as cached by the runtime)",
                          json.dumps(result, indent=2).splitlines() if result else [])
    lines += _section("Conditions", [f"{c['type']}={c['status']}" + (f" ({c['reason']})" if c.get("reason") else "")
                                     for c in status.get("conditions", [])])
    if meta.get("annotations"):
        lines += _section("Annotations", [f"{k}: {json.dumps(v) if not isinstance(v, str) else v}"
                                          for k, v in sorted(meta["annotations"].items())])
    return "\n".join(lines)


def _load_balancer_lines(manager, cluster: str, service) -> list[str]:
    """The load-balancer address, external IPs, who announces them, and why an address is pending."""
    from overlaynet.node.speaker import LAYER2, announced

    speakers = {a.ip: a for a in announced(manager.store, cluster) if a.service == service.key}

    def by(ip: str) -> str:
        a = speakers.get(ip)
        if a is None:
            where = " on any node" if service.external_traffic_policy == "Local" else ""
            return f" (not announced: no ready endpoint{where})"
        if a.kind == LAYER2:
            return f" (announced by node {a.node}: it answers ARP for the address)"
        return f" (routed to node {a.node} {a.node_ip} by the external client's route)"

    lines = []
    if service.type == "LoadBalancer":
        ingress = service.ingress_ip + by(service.ingress_ip) if service.ingress_ip else "<pending>"
        lines.append(f"LoadBalancer Ingress: {ingress}")
        if service.load_balancer_source_ranges:
            lines.append(f"LoadBalancer Source Ranges: {', '.join(service.load_balancer_source_ranges)}")
        if service.health_check_node_port is not None:
            lines.append(f"HealthCheck NodePort: {service.health_check_node_port}")
    lines += [f"External IP:        {ip}{by(ip)}" for ip in service.external_ips]
    return lines


def _load_balancer_events(manager, cluster: str, service) -> list[str]:
    from overlaynet.control.loadbalancers import pending_reasons

    reason = pending_reasons(manager.store, cluster).get(service.key)
    return _section("Events", [f"Warning  AllocationFailed  {reason}"]) if reason else []


def describe_service(manager, cluster: str, namespace: str, name: str) -> str:
    from overlaynet.control.endpoints import build_endpoint_slices
    from overlaynet.errors import NotFoundError
    from overlaynet.node import proxier

    service = next((s for s in proxier.stored_services(manager, cluster)
                    if s.namespace == namespace and s.name == name), None)
    if service is None:
        raise NotFoundError(f'service "{name}" not found in namespace "{namespace}" of cluster "{cluster}"')
    result = build_endpoint_slices(service, manager.pods(cluster))
    slices = result.slices if service.selector is not None else [
        s for s in proxier.stored_slices(manager, cluster) if s.service_name == name and s.namespace == namespace]
    ready = [f"{address}" for s in slices for e in s.endpoints if e.conditions.is_ready for address in e.addresses]
    lines = [
        f"Name:               {name}",
        f"Namespace:          {namespace}",
        f"Selector:           {', '.join(_pairs(service.selector_dict)) if service.selector is not None else '<none>'}",
        f"Type:               {service.type}",
        f"IP:                 {service.cluster_ip}",
        f"Session Affinity:   {service.session_affinity}",
    ]
    if service.externally_accessible:
        lines.append(f"External Traffic Policy: {service.external_traffic_policy}")
    lines += _load_balancer_lines(manager, cluster, service)
    lines += _section("Ports", [f"{p.name or '<unset>'} {p.port}/{p.protocol} -> targetPort {p.target_port}"
                                + (f", nodePort {p.node_port}" if p.node_port else "") for p in service.ports])
    lines += _section("Endpoints (ready)", ready)
    notes = result.describe() if service.selector is not None else []
    if service.selector is not None and not ready:
        notes.append("no ready endpoints: connections to this Service are rejected (kube-proxy's REJECT rule)")
    lines += _section("Why endpoints are missing", notes) if notes else []
    lines += _load_balancer_events(manager, cluster, service)
    return "\n".join(lines)


def _dns_line(spec: dict, netns: str) -> str:
    """The pod's dnsPolicy and the resolv.conf the kubelet wrote for it (overlaynet.node.resolv)."""
    path = os.path.join(etc_netns_dir(netns), "resolv.conf")
    where = path if os.path.exists(path) else "none of its own: the node's /etc/resolv.conf"
    return f"dnsPolicy {spec.get('dnsPolicy', 'ClusterFirst')}, resolv.conf {where}"
