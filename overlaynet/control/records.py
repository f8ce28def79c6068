"""The shapes of the Kubernetes objects the control plane stores: Node and Pod records.

This module owns how a Node or a Pod looks in the store (``kubectl get -o yaml`` shows these
dictionaries): the keys the agent serves them under, the annotations that tie them to their
kernel objects, the status a kubelet writes as a pod starts and its probes report, and the
typed views the planners take (``node_info``, ``sandbox_of``). Everything here is pure: it
builds and changes dictionaries and never touches the store or the kernel.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from typing import Any

from overlaynet import names
from overlaynet.api.manifests import PodTemplate, pod_probes
from overlaynet.api.model import NodeSpec
from overlaynet.control.scheduler import Decision
from overlaynet.datapath.topology import NodeInfo, internal_ip
from overlaynet.kernel import netns
from overlaynet.node.kubelet import Sandbox

__all__ = [
    "CONTAINER_ANNOTATION", "NETNS_ANNOTATION", "NODE_SERVER_PORTS", "PodRequest", "is_ready", "mark_running", "node_info",
    "node_key", "node_ready", "node_record", "now", "pod_key", "pod_record", "pod_sandbox", "sandbox_of",
    "set_ready",
]

NETNS_ANNOTATION = "overlaynet.dev/netns"
CONTAINER_ANNOTATION = "overlaynet.dev/container-id"  # the sandbox id CNI calls are keyed by


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


NODE_SERVER_PORTS = ((8080, "TCP"), (8080, "UDP"))  # what every node serves (verify probes it)


def node_key(node: str) -> str:
    """The agent's key for what a node serves."""
    return f"node/{node}"


def pod_key(namespace: str, name: str) -> str:
    """The agent's key for what a pod serves."""
    return f"pod/{namespace}/{name}"


@dataclass
class PodRequest:
    """A pod to create: from a Pod manifest, or from a Deployment (its ``owner``)."""

    namespace: str
    name: str
    template: PodTemplate
    owner: str | None = None  # the Deployment's name


def node_info(record: dict) -> NodeInfo:
    address = internal_ip(record)
    return NodeInfo(
        name=record["metadata"]["name"],
        ip=ipaddress.IPv4Address(address),
        pod_cidr=ipaddress.IPv4Network(record["spec"]["podCIDR"]),
        annotations=tuple(sorted(record["metadata"].get("annotations", {}).items())),
    )


def node_record(node_spec: NodeSpec, cidr: ipaddress.IPv4Network, ip: ipaddress.IPv4Address,
                annotations: dict[str, str]) -> dict:
    """A node as it joins: addressed, not Ready yet."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node_spec.name, "labels": node_spec.label_dict(), "annotations": annotations,
                     "creationTimestamp": now()},
        "spec": {"podCIDR": str(cidr), "podCIDRs": [str(cidr)]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": str(ip)}, {"type": "Hostname", "address": node_spec.name}],
            "conditions": [{"type": "Ready", "status": "False", "reason": "NodeStarting"}],
            "nodeInfo": {"containerRuntimeVersion": "overlaynet", "kubeProxyVersion": "", "operatingSystem": "linux"},
        },
    }


def node_ready(record: dict) -> None:
    record["status"]["conditions"] = [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "message": "overlaynet node is ready", "lastTransitionTime": now()}]


def pod_sandbox(cluster: str, namespace: str, name: str, node: str, container_id: str) -> Sandbox:
    """A pod's CNI attachment: its namespace's path on ``node``, under ``container_id``."""
    return Sandbox(namespace, name, node, netns.path(names.pod_netns(cluster, namespace, name)), container_id)


def sandbox_of(cluster: str, record: dict) -> Sandbox:
    """The CNI attachment of a scheduled pod, as recorded when its sandbox was made."""
    meta = record["metadata"]
    return pod_sandbox(cluster, meta["namespace"], meta["name"], record["spec"]["nodeName"],
                   meta["annotations"][CONTAINER_ANNOTATION])


def pod_record(cluster: str, request: PodRequest, node: NodeInfo | None, container_id: str,
               decision: Decision) -> dict:
    """A pod as the scheduler leaves it: Pending, bound to ``node`` or with the reason it is not."""
    spec = dict(request.template.spec)
    metadata: dict[str, Any] = {"name": request.name, "namespace": request.namespace,
                                "labels": dict(request.template.labels), "creationTimestamp": now()}
    if request.owner:
        metadata["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "Deployment", "name": request.owner}]
    if node is None:
        status: dict[str, Any] = {"phase": "Pending", "reason": decision.reason, "message": decision.message,
                  "conditions": [{"type": "PodScheduled", "status": "False", "reason": decision.reason,
                                  "message": decision.message}]}
    else:
        spec["nodeName"] = node.name
        metadata["annotations"] = {NETNS_ANNOTATION: names.pod_netns(cluster, request.namespace, request.name),
                                   CONTAINER_ANNOTATION: container_id}
        status = {"phase": "Pending", "reason": "ContainerCreating", "hostIP": str(node.ip),
                  "conditions": [{"type": "PodScheduled", "status": "True"}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}


def mark_running(record: dict) -> None:
    """Running; Ready at once, or (with a readiness probe) once the probe first passes."""
    started = now()
    ready = not any(p.kind == "readiness" for p in pod_probes(record["spec"]))
    status = record["status"]
    status.pop("reason", None)
    status.update(phase="Running", startTime=started, conditions=[
        {"type": "PodScheduled", "status": "True"},
        {"type": "Initialized", "status": "True"},
    ])
    status["containerStatuses"] = [
        {"name": c.get("name"), "ready": ready, "restartCount": 0, "state": {"running": {"startedAt": started}}}
        for c in record["spec"].get("containers", [])
    ]
    set_ready(record, ready, started)


def set_ready(record: dict, ready: bool, when: str) -> None:
    conditions = [c for c in record["status"]["conditions"] if c["type"] not in ("ContainersReady", "Ready")]
    value = "True" if ready else "False"
    reason = {} if ready else {"reason": "ContainersNotReady"}
    conditions += [{"type": "ContainersReady", "status": value, **reason},
                   {"type": "Ready", "status": value, "lastTransitionTime": when, **reason}]
    record["status"]["conditions"] = conditions
    for container in record["status"].get("containerStatuses", []):
        container["ready"] = ready


def is_ready(record: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in record["status"].get("conditions", []))
