"""NetworkPolicies, Namespaces and labels in the store: what the API server does with them.

This module owns storing applied NetworkPolicies and Namespaces (kubectl's ``created`` /
``configured`` / ``unchanged`` lines), deleting them, ``label`` on pods and namespaces, and
the ``PolicyView`` every policy decision reads (``policy.semantics``, ``policy.render``,
``verify``, ``netpol table``, ``describe``). Namespaces exist implicitly once a pod names
them (the API server would refuse the pod; a course cluster should not make learners write a
Namespace first); a written Namespace adds labels. It never touches the kernel: the
enforcement is ``node/netpol_sync.py``'s, which the manager runs after every change here.
"""

from __future__ import annotations

import ipaddress

from overlaynet.api.manifests import ContainerPort, parse_document
from overlaynet.api.netpol import (
    Namespace,
    NetworkPolicy,
    namespace_labels,
    parse_namespace_document,
    parse_networkpolicy_document,
)
from overlaynet.api.objects import DEFAULT_NAMESPACE
from overlaynet.control.records import now
from overlaynet.control.store import Store
from overlaynet.errors import InvalidInput, NotFoundError
from overlaynet.policy.semantics import PodEndpoint, PolicyView

NETWORK_POLICY = "NetworkPolicy"
NAMESPACE = "Namespace"
_NAMESPACED_KINDS = ("Pod", "Deployment", "Service")


def stored_policies(store: Store, cluster: str, namespace: str | None = None) -> list[NetworkPolicy]:
    return [parse_networkpolicy_document(d, "store") for d in store.list(cluster, NETWORK_POLICY, namespace)]


def namespace_names(store: Store, cluster: str) -> list[str]:
    """Every namespace: written ones, ``default``, and those objects name."""
    found = {DEFAULT_NAMESPACE, *(d["metadata"]["name"] for d in store.list(cluster, NAMESPACE))}
    for kind in (*_NAMESPACED_KINDS, NETWORK_POLICY):
        found.update(d["metadata"]["namespace"] for d in store.list(cluster, kind))
    return sorted(found)


def namespace_label_map(store: Store, cluster: str) -> dict[str, dict[str, str]]:
    written = {d["metadata"]["name"]: d["metadata"].get("labels", {}) for d in store.list(cluster, NAMESPACE)}
    return {name: namespace_labels(name, written.get(name)) for name in namespace_names(store, cluster)}


def pod_endpoint(record: dict) -> PodEndpoint:
    meta, status = record["metadata"], record["status"]
    ip = status.get("podIP")
    ports: list[ContainerPort] = []
    for container in record["spec"].get("containers") or []:
        for port in container.get("ports") or []:
            ports.append(ContainerPort(port["containerPort"], port.get("protocol", "TCP"), port.get("name")))
    return PodEndpoint(meta["namespace"], meta["name"], tuple(sorted((meta.get("labels") or {}).items())),
                       ipaddress.IPv4Address(ip) if ip else None, record["spec"].get("nodeName"), tuple(ports))


def policy_view(store: Store, cluster: str) -> PolicyView:
    pods = tuple(sorted((pod_endpoint(r) for r in store.list(cluster, "Pod")), key=lambda p: p.key))
    return PolicyView(pods, namespace_label_map(store, cluster), tuple(stored_policies(store, cluster)))


def has_policies(store: Store, cluster: str) -> bool:
    return bool(store.list(cluster, NETWORK_POLICY))


def apply_objects(store: Store, cluster: str, objects: list[NetworkPolicy | Namespace]) -> list[str]:
    """Store policies and namespaces; kubectl's lines."""
    lines = []
    with store.transaction():
        for item in objects:
            document = item.to_document()
            meta = document["metadata"]
            kind = document["kind"]
            stored = store.get(cluster, kind, meta["name"], meta.get("namespace", ""))
            created = (stored or {}).get("metadata", {}).pop("creationTimestamp", None)
            verb = "created" if stored is None else ("unchanged" if stored == document else "configured")
            meta["creationTimestamp"] = created or now()
            store.put(cluster, document)
            prefix = "networkpolicy.networking.k8s.io" if kind == NETWORK_POLICY else "namespace"
            lines.append(f"{prefix}/{meta['name']} {verb}")
    return lines


def delete_policy(store: Store, cluster: str, namespace: str, name: str) -> None:
    if store.get(cluster, NETWORK_POLICY, name, namespace) is None:
        raise NotFoundError(f'networkpolicy "{name}" not found in namespace "{namespace}" of cluster "{cluster}"')
    store.delete(cluster, NETWORK_POLICY, name, namespace)


def delete_namespace(store: Store, cluster: str, name: str) -> None:
    """Delete a namespace and its policies; one that still holds workloads is refused."""
    if name not in namespace_names(store, cluster):
        raise NotFoundError(f'namespace "{name}" not found in cluster "{cluster}"')
    if name == DEFAULT_NAMESPACE:
        raise InvalidInput('namespace "default": the default namespace cannot be deleted')
    held = [f"{kind.lower()}/{d['metadata']['name']}" for kind in _NAMESPACED_KINDS
            for d in store.list(cluster, kind, name)]
    if held:
        raise InvalidInput(f'namespace "{name}": still holds {", ".join(held[:3])}'
                           f'{" ..." if len(held) > 3 else ""}: delete them first')
    with store.transaction():
        for document in store.list(cluster, NETWORK_POLICY, name):
            store.delete(cluster, NETWORK_POLICY, document["metadata"]["name"], name)
        store.delete(cluster, NAMESPACE, name)


def _changed(labels: dict[str, str], setting: dict[str, str], removing: list[str], kind: str, name: str,
             overwrite: bool) -> dict[str, str]:
    for key, value in setting.items():
        if key in labels and labels[key] != value and not overwrite:
            raise InvalidInput(f"{kind} \"{name}\": label {key} already has the value \"{labels[key]}\" "
                               "(pass --overwrite to change it)")
    updated = {**labels, **setting}
    for key in removing:
        updated.pop(key, None)
    return updated


def label_pod(store: Store, cluster: str, namespace: str, name: str, setting: dict[str, str],
              removing: list[str], overwrite: bool = False) -> str:
    record = store.get(cluster, "Pod", name, namespace)
    if record is None:
        raise NotFoundError(f'pod "{name}" not found in namespace "{namespace}" of cluster "{cluster}"')
    labels = record["metadata"].get("labels") or {}
    updated = _changed(labels, setting, removing, "pod", name, overwrite)
    if updated == labels:
        return f"pod/{name} not labeled"
    record["metadata"]["labels"] = updated
    # the pod's template as stored for `get -o yaml` and rescheduling keeps its labels in step
    parse_document({"kind": "Pod", "metadata": record["metadata"], "spec": record["spec"]}, "label")
    store.put(cluster, record)
    return f"pod/{name} labeled"


def label_namespace(store: Store, cluster: str, name: str, setting: dict[str, str], removing: list[str],
                    overwrite: bool = False) -> str:
    if name not in namespace_names(store, cluster):
        raise NotFoundError(f'namespace "{name}" not found in cluster "{cluster}"')
    document = store.get(cluster, NAMESPACE, name)
    labels = dict((document or {}).get("metadata", {}).get("labels") or namespace_labels(name))
    updated = _changed(labels, setting, removing, "namespace", name, overwrite)
    if updated == labels:
        return f"namespace/{name} not labeled"
    namespace = parse_namespace_document({"kind": "Namespace", "metadata": {"name": name, "labels": updated}}, "label")
    store.put(cluster, namespace.to_document())
    return f"namespace/{name} labeled"
