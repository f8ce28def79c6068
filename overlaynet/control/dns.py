"""The cluster DNS add-on: kubeadm's CoreDNS Deployment and kube-dns Service, and the records
pushed to the servers whenever Services, EndpointSlices or pods change.

What this module owns:
- ``addon_manifests``: what ``up`` applies when the Cluster document has ``dns: true`` (the
  default), as kubeadm installs it: a ``coredns`` Deployment in ``kube-system`` (2 replicas,
  labels ``k8s-app: kube-dns``, ports 53/UDP ``dns`` and 53/TCP ``dns-tcp``, ``dnsPolicy:
  Default``) and the ``kube-dns`` Service at the service CIDR's tenth address. They are
  ordinary objects: the scheduler places the pods, the EndpointSlice controller and
  kube-proxy carry the Service, ``get pods -A`` shows them, and they can be scaled or deleted.
- ``runs_cluster_dns``: which pods run the DNS server: those with a container whose image is
  CoreDNS's (``.../coredns:<tag>``), whatever their namespace; they answer DNS on their
  declared port 53 (UDP and TCP) and, like every pod, the test server on 8080.
- ``sync_zone``: the records (``dns_records``, pure) pushed to the agent (op ``dns_zone``),
  which every DNS pod's server answers from; called after every sync of the Services.

What it never does: answer a query (``overlaynet.agent.dnsserver`` does) or touch the kernel.
"""

from __future__ import annotations

import time

from overlaynet.api.manifests import Manifest, parse_document
from overlaynet.api.model import ClusterSpec
from overlaynet.api.services import parse_endpointslice_document, parse_service_document
from overlaynet.control import dns_records
from overlaynet.control.ownership import agent_socket
from overlaynet.control.seams import Runtime
from overlaynet.control.store import Store

__all__ = ["COREDNS_IMAGE", "DNS_NAMESPACE", "DNS_SERVICE", "addon_documents", "addon_manifests",
           "runs_cluster_dns", "sync_zone"]

DNS_NAMESPACE = "kube-system"
DNS_SERVICE = "kube-dns"
DNS_DEPLOYMENT = "coredns"
COREDNS_IMAGE = "registry.k8s.io/coredns/coredns:v1.11.3"  # kubeadm 1.31's
REPLICAS = 2
DNS_PORT = 53
SOURCE = "the cluster DNS add-on"
SERVICE_LABELS = {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}


def runs_cluster_dns(pod_spec: dict) -> bool:
    """Does the pod run CoreDNS (a container image named ``coredns``, any registry and tag)?"""
    for container in pod_spec.get("containers") or []:
        image = str(container.get("image") or "")
        repository = image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
        if repository == "coredns":
            return True
    return False


def addon_documents(spec: ClusterSpec) -> list[dict]:
    """The Deployment and the Service kubeadm's CoreDNS add-on creates (its ``coredns`` manifests, trimmed)."""
    labels = {"k8s-app": "kube-dns"}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": DNS_DEPLOYMENT, "namespace": DNS_NAMESPACE, "labels": labels},
        "spec": {"replicas": REPLICAS, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {
                     "dnsPolicy": "Default",  # CoreDNS itself resolves through the node's resolv.conf
                     "containers": [{"name": "coredns", "image": COREDNS_IMAGE,
                                     "args": ["-conf", "/etc/coredns/Corefile"],
                                     "ports": [{"containerPort": 53, "name": "dns", "protocol": "UDP"},
                                               {"containerPort": 53, "name": "dns-tcp", "protocol": "TCP"}]}]}}},
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": DNS_SERVICE, "namespace": DNS_NAMESPACE, "labels": SERVICE_LABELS},
        "spec": {"selector": labels, "clusterIP": str(spec.dns_service_ip),
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]},
    }
    return [deployment, service]


def addon_manifests(spec: ClusterSpec) -> list[Manifest]:
    return [parse_document(document, SOURCE) for document in addon_documents(spec)]


def sync_zone(store: Store, runtime: Runtime, spec: ClusterSpec) -> None:
    """Compute the records from what the store holds and hand them to the agent's DNS servers."""
    if not spec.dns:
        return
    cluster = spec.name
    services = [parse_service_document(doc, "store") for doc in store.list(cluster, "Service")]
    slices = [parse_endpointslice_document(doc, "store") for doc in store.list(cluster, "EndpointSlice")]
    records = dns_records.plan_records(spec.cluster_domain, str(spec.dns_service_ip), services, slices,
                                       store.list(cluster, "Pod"))
    # The SOA serial: seconds, as CoreDNS's kubernetes plugin derives it from the last change.
    runtime.agent(cluster, agent_socket(store, cluster)).dns_zone(
        spec.cluster_domain, [r.as_list() for r in records], int(time.time()))
