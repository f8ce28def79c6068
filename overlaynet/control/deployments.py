"""The Deployment controller: a Deployment's pods follow its replica count and template.

Like the ReplicaSet controller behind a Deployment, it counts the pods a Deployment owns
(``ownerReferences``), queues new pods for missing replicas under names never used before
(an ordinal counter kept in the store), queues the newest surplus pods and every pod of a
changed template for deletion (the ``Recreate`` strategy), and writes the Deployment's
status. It only decides and writes records: creating and deleting the pods is the pod
lifecycle's (``overlaynet.control.pods``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import cast

from overlaynet.api.manifests import DeploymentManifest, parse_document
from overlaynet.control.records import PodRequest, is_ready, now
from overlaynet.control.store import Store

__all__ = ["apply_manifest", "owned_pods", "reconcile", "refresh_status"]


def owned_pods(store: Store, cluster: str, namespace: str, deployment: str) -> list[dict]:
    return [p for p in store.list(cluster, "Pod", namespace)
            if any(o.get("kind") == "Deployment" and o.get("name") == deployment
                   for o in p["metadata"].get("ownerReferences", []))]


def _pod_request(manifest: DeploymentManifest, pod_name: str) -> PodRequest:
    labels = dict(manifest.template.labels) | {"pod-template-hash": manifest.template_hash}
    template = replace(manifest.template, labels=tuple(sorted(labels.items())))
    return PodRequest(manifest.namespace, pod_name, template, owner=manifest.name)


def apply_manifest(store: Store, cluster: str, manifest: DeploymentManifest,
                   creates: list[PodRequest], deletes: list[dict]) -> tuple[str, dict]:
    """Queue the pods to create and delete for the replica count and template (the pod
    ordinal counter is stored at once); the kubectl line and the Deployment record to store."""
    existing = store.get(cluster, "Deployment", manifest.name, manifest.namespace)
    owned = owned_pods(store, cluster, manifest.namespace, manifest.name)
    template_hash = manifest.template_hash
    current = [p for p in owned if p["metadata"]["labels"].get("pod-template-hash") == template_hash]
    deletes.extend(p for p in owned if p not in current)  # a changed template: Recreate
    surplus = len(current) - manifest.replicas
    if surplus > 0:
        current.sort(key=lambda p: p["metadata"]["creationTimestamp"], reverse=True)
        deletes.extend(current[:surplus])
    # Like a ReplicaSet, never reuse a pod name: a replacement is a new pod.
    taken = {p["metadata"]["name"] for p in owned}
    counter = f"pod-ordinal/{manifest.namespace}/{manifest.name}"
    ordinal = int(store.get_meta(cluster, counter, "0"))
    for _ in range(max(0, -surplus)):
        while manifest.pod_name(ordinal) in taken:
            ordinal += 1
        taken.add(manifest.pod_name(ordinal))
        creates.append(_pod_request(manifest, manifest.pod_name(ordinal)))
        ordinal += 1
    store.set_meta(cluster, counter, str(ordinal))
    record = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": manifest.name, "namespace": manifest.namespace,
                     "creationTimestamp": (existing or {}).get("metadata", {}).get("creationTimestamp", now())},
        "spec": {"replicas": manifest.replicas, "selector": {"matchLabels": dict(manifest.selector)},
                 "template": {"metadata": {"labels": dict(manifest.template.labels)},
                              "spec": manifest.template.spec}},
        "status": {},
    }
    if existing is None:
        verb = "created"
    elif existing["spec"] == record["spec"]:
        verb = "unchanged"
    else:
        verb = "configured"
    return f"deployment.apps/{manifest.name} {verb}", record


def reconcile(store: Store, cluster: str) -> tuple[list[PodRequest], list[dict]]:
    """What brings every Deployment back to its replica count (after a pod or node went away):
    the pods to create and those to delete."""
    creates: list[PodRequest] = []
    deletes: list[dict] = []
    for record in store.list(cluster, "Deployment"):
        apply_manifest(store, cluster, cast(DeploymentManifest, parse_document(record, "store")), creates, deletes)
    return creates, deletes


def refresh_status(store: Store, cluster: str) -> None:
    with store.transaction():
        for record in store.list(cluster, "Deployment"):
            meta = record["metadata"]
            pods = owned_pods(store, cluster, meta["namespace"], meta["name"])
            ready = sum(1 for p in pods if is_ready(p))
            record["status"] = {"replicas": len(pods), "readyReplicas": ready,
                                "availableReplicas": ready, "updatedReplicas": len(pods)}
            store.put(cluster, record)
