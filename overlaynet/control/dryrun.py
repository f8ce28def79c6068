"""A cluster as it would be, without building it: the pure path behind ``overlaynet render``.

Given a Cluster document and application manifests, this module places the nodes (node
IPAM), the pods (the scheduler) and their addresses (host-local or blocks, as the mode's IPAM
is) in the order ``up`` and ``apply`` would, and returns Kubernetes-shaped node
and pod objects, every pod Running and Ready. Nothing here needs root or touches the kernel.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

from overlaynet.api.manifests import DeploymentManifest, Manifest, PodManifest, PodTemplate
from overlaynet.api.model import ClusterSpec
from overlaynet.control import scheduler
from overlaynet.datapath.modes import IPAM_BLOCKS, get_mode
from overlaynet.ipam import allocators


def simulate(spec: ClusterSpec, manifests: list[Manifest]) -> tuple[list[dict], list[dict]]:
    nodes, used_cidrs, used_ips, cursor = [], [], [], 0
    for node_spec in spec.nodes:
        cidr, cursor = allocators.allocate_node_cidr(spec.cluster_cidr, spec.node_cidr_mask_size, used_cidrs, cursor)
        ip = allocators.allocate_node_ip(spec.node_network, used_ips)
        used_cidrs.append(cidr)
        used_ips.append(ip)
        nodes.append({"kind": "Node", "metadata": {"name": node_spec.name, "labels": node_spec.label_dict()},
                      "spec": {"podCIDR": str(cidr)},
                      "status": {"addresses": [{"type": "InternalIP", "address": str(ip)}]}})
    requests: list[tuple[str, str, PodTemplate]] = []
    for manifest in manifests:
        if isinstance(manifest, PodManifest):
            requests.append((manifest.namespace, manifest.name, manifest.template))
        elif isinstance(manifest, DeploymentManifest):
            labels = dict(manifest.template.labels) | {"pod-template-hash": manifest.template_hash}
            template = PodTemplate(tuple(sorted(labels.items())), manifest.template.ports, manifest.template.node_name,
                                   manifest.template.node_selector, manifest.template.spec)
            requests += [(manifest.namespace, manifest.pod_name(i), template) for i in range(manifest.replicas)]
    return nodes, _place(spec, nodes, requests)


def _place(spec: ClusterSpec, nodes: list[dict], requests: list[tuple[str, str, PodTemplate]]) -> list[dict]:
    placed: Counter[str] = Counter()
    addresses: dict[str, list[ipaddress.IPv4Address]] = {n["metadata"]["name"]: [] for n in nodes}
    mode = get_mode(spec.cni)
    pool = None
    if mode.ipam == IPAM_BLOCKS:
        from overlaynet.ipam.blocks import PoolState

        pool = PoolState(spec.cluster_cidr, spec.block_size)
    pods = []
    for namespace, name, template in requests:
        candidates = []
        for node in nodes:
            node_name = node["metadata"]["name"]
            capacity = mode.pod_capacity(spec, ipaddress.IPv4Network(node["spec"]["podCIDR"]))
            candidates.append(scheduler.Candidate(node_name, node["metadata"]["labels"], True,
                                                  capacity - placed[node_name], placed[node_name]))
        decision = scheduler.schedule(template.node_name, dict(template.node_selector), candidates)
        pod = {"kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": dict(template.labels)},
               "spec": dict(template.spec), "status": {"phase": "Pending"}}
        if decision.node is not None:
            node = next(n for n in nodes if n["metadata"]["name"] == decision.node)
            if pool is None:
                taken = addresses[decision.node]
                ip = allocators.allocate_pod_ip(decision.node, ipaddress.IPv4Network(node["spec"]["podCIDR"]), taken,
                                          taken[-1] if taken else None)
            else:
                ip = pool.allocate(decision.node, f"{namespace}.{name}")
            addresses[decision.node].append(ip)
            placed[decision.node] += 1
            pod["spec"]["nodeName"] = decision.node
            pod["status"] = {"phase": "Running", "podIP": str(ip),
                             "conditions": [{"type": "Ready", "status": "True"}]}
        pods.append(pod)
    return pods
