"""Kubernetes YAML in, validated manifest values out (pure: the only I/O is reading the file).

Accepted kinds: ``Pod`` (v1), ``Deployment`` (apps/v1), ``Service`` (v1) and ``EndpointSlice``
(discovery.k8s.io/v1, parsed by ``overlaynet.api.services``), ``NetworkPolicy``
(networking.k8s.io/v1) and ``Namespace`` (v1, both parsed by ``overlaynet.api.netpol``),
``List`` of those, and our own ``Cluster`` document (for ``up -f``). Multi-document files are
read in order. Fields that cannot apply to an emulated network (``image``, ``command``, ``resources``) are accepted and
ignored; readiness and liveness probes are validated here and run by the agent, so the YAML of a real cluster applies unchanged; fields that would
change networking in ways not emulated (``hostNetwork``, SCTP) are refused by name.

Errors name the file, the object and the field: ``web.yaml: Pod "web-1": spec.containers[0]
.ports[0].containerPort 70000 is out of range 1-65535``; YAML syntax errors give the line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import yaml

from overlaynet import names
from overlaynet.api import model, netpol, pod_dns, probes, services
from overlaynet.api.objects import Where, object_namespace
from overlaynet.errors import InvalidInput

# The port every test server answers on, TCP and UDP, whatever the pod declares (like agnhost
# netexec's --http-port); declared containerPorts are served as well.
DEFAULT_TEST_PORT = 8080


@dataclass(frozen=True)
class ContainerPort:
    port: int
    protocol: str = "TCP"
    name: str | None = None


@dataclass(frozen=True)
class PodTemplate:
    labels: tuple[tuple[str, str], ...]
    ports: tuple[ContainerPort, ...]
    node_name: str | None
    node_selector: tuple[tuple[str, str], ...]
    spec: dict = field(compare=False, hash=False)  # as written, for get -o yaml


@dataclass(frozen=True)
class PodManifest:
    namespace: str
    name: str
    template: PodTemplate


@dataclass(frozen=True)
class DeploymentManifest:
    namespace: str
    name: str
    replicas: int
    selector: tuple[tuple[str, str], ...]
    template: PodTemplate

    @property
    def template_hash(self) -> str:
        canonical = json.dumps({"labels": self.template.labels, "spec": self.template.spec}, sort_keys=True)
        return names.generated_suffix(canonical, 10)

    def pod_name(self, ordinal: int) -> str:
        """``<deployment>-<template hash>-<5 chars>`` like a ReplicaSet's pods, but reproducible."""
        suffix = names.generated_suffix(f"{self.namespace}/{self.name}/{self.template_hash}/{ordinal}", 5)
        return f"{self.name}-{self.template_hash}-{suffix}"


Manifest = (PodManifest | DeploymentManifest | services.Service | services.EndpointSlice
            | netpol.NetworkPolicy | netpol.Namespace)


def load_documents(path: str, text: str | None = None) -> list[dict]:
    """Read a multi-document YAML file; syntax errors give the file and line."""
    if text is None:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise InvalidInput(f"{path}: cannot read: {exc.strerror}") from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise InvalidInput(f"{path}{line}: malformed YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:  # e.g. a ReaderError (a control character): its text has several lines
        raise InvalidInput(f"{path}: malformed YAML: {' '.join(str(exc).split())}") from None
    flat: list[dict] = []
    for index, document in enumerate(documents, 1):
        if not isinstance(document, dict):
            raise InvalidInput(f"{path}: document {index} is not a mapping (a Kubernetes object)")
        if document.get("kind") == "List":
            items = document.get("items") or []
            flat.extend(i for i in items if isinstance(i, dict))
        else:
            flat.append(document)
    return flat


def parse_manifests(path: str, namespace: str | None = None, text: str | None = None) -> list[Manifest]:
    return [parse_document(document, path, namespace, index)
            for index, document in enumerate(load_documents(path, text), 1)]


def parse_document(document: dict, source: str, namespace: str | None = None, index: int = 1) -> Manifest:
    """Validate one Kubernetes object (a Pod or a Deployment) from ``source``."""
    kind = document.get("kind")
    metadata = document.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, dict) else None
    where = Where(source, str(kind) if kind else f"document {index}", str(name or ""))
    if kind == "Pod":
        return _parse_pod(document, where, namespace)
    if kind == "Deployment":
        return _parse_deployment(document, where, namespace)
    if kind == "Service":
        return services.parse_service_document(document, source, namespace)
    if kind == "EndpointSlice":
        return services.parse_endpointslice_document(document, source, namespace)
    if kind == "NetworkPolicy":
        return netpol.parse_networkpolicy_document(document, source, namespace)
    if kind == "Namespace":
        return netpol.parse_namespace_document(document, source)
    if kind == "Cluster":
        raise where.error("a Cluster document describes a cluster: use `overlaynet up -f`, not apply")
    if not kind:
        raise where.error("kind is missing")
    raise where.error(f'kind "{kind}" is not supported (supported: Pod, Deployment, Service, EndpointSlice, '
                      'NetworkPolicy, Namespace, List)')


def _metadata(document: dict, where: Where, namespace: str | None) -> tuple[str, str, dict]:
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        raise where.error("metadata is required")
    name = metadata.get("name")
    if not name:
        raise where.error("metadata.name is required")
    where.check(lambda: names.check_subdomain("object", name, "metadata.name"))
    labels = _string_map(metadata.get("labels"), where, "metadata.labels")
    return object_namespace(metadata, where, namespace), name, labels


def _string_map(value, where: Where, field_path: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise where.error(f"{field_path} must be a mapping of strings")
    return {k: str(v) for k, v in value.items()}


def _parse_template(spec, labels: dict[str, str], where: Where, field_path: str) -> PodTemplate:
    if not isinstance(spec, dict):
        raise where.error(f"{field_path} is required")
    if spec.get("hostNetwork"):
        raise where.error(f"{field_path}.hostNetwork is not supported: overlaynet pods always get their own netns")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise where.error(f"{field_path}.containers must list at least one container")
    ports: list[ContainerPort] = []
    port_names: set[str] = set()
    for c_index, container in enumerate(containers):
        c_path = f"{field_path}.containers[{c_index}]"
        if not isinstance(container, dict) or not container.get("name"):
            raise where.error(f"{c_path}.name is required")
        where.check(lambda: names.check_label("container", container["name"], f"{c_path}.name"))
        declared = container.get("ports") or []
        if not isinstance(declared, list):
            raise where.error(f"{c_path}.ports must be a list")
        for p_index, port in enumerate(declared):
            p_path = f"{c_path}.ports[{p_index}]"
            ports.append(_parse_port(port, where, p_path, port_names))
        try:
            probes.container_probes(c_path, container)
        except InvalidInput as exc:
            raise where.error(str(exc)) from None
    node_name = spec.get("nodeName")
    if node_name is not None:
        where.check(lambda: names.check_label("node", node_name, f"{field_path}.nodeName"))
    node_selector = _string_map(spec.get("nodeSelector"), where, f"{field_path}.nodeSelector")
    try:
        pod_dns.parse_pod_dns(spec, field_path)  # dnsPolicy, dnsConfig, hostname, subdomain
    except InvalidInput as exc:
        raise where.error(str(exc)) from None
    return PodTemplate(
        labels=tuple(sorted(labels.items())),
        ports=tuple(ports),
        node_name=node_name,
        node_selector=tuple(sorted(node_selector.items())),
        spec=spec,
    )


def _parse_port(port, where: Where, p_path: str, port_names: set[str]) -> ContainerPort:
    if not isinstance(port, dict) or "containerPort" not in port:
        raise where.error(f"{p_path}.containerPort is required")
    number = port["containerPort"]
    if isinstance(number, bool) or not isinstance(number, int):
        raise where.error(f"{p_path}.containerPort {number!r} is not a number")
    if not 1 <= number <= 65535:
        raise where.error(f"{p_path}.containerPort {number} is out of range 1-65535")
    protocol = port.get("protocol", "TCP")
    if protocol not in ("TCP", "UDP"):
        raise where.error(f'{p_path}.protocol "{protocol}" is not supported (supported: TCP, UDP)')
    port_name = port.get("name")
    if port_name is not None:
        if not isinstance(port_name, str) or len(port_name) > 15 or not names.is_label(port_name) \
                or not re.search("[a-z]", port_name):
            raise where.error(f'{p_path}.name "{port_name}" must be an IANA service name '
                              "(at most 15 lower case alphanumerics or '-', with a letter)")
        if port_name in port_names:
            raise where.error(f'{p_path}.name "{port_name}" is declared twice')
        port_names.add(port_name)
    return ContainerPort(number, protocol, port_name)


def _parse_pod(document: dict, where: Where, namespace: str | None) -> PodManifest:
    pod_namespace, name, labels = _metadata(document, where, namespace)
    return PodManifest(pod_namespace, name, _parse_template(document.get("spec"), labels, where, "spec"))


def _parse_deployment(document: dict, where: Where, namespace: str | None) -> DeploymentManifest:
    deploy_namespace, name, _ = _metadata(document, where, namespace)
    spec = document.get("spec")
    if not isinstance(spec, dict):
        raise where.error("spec is required")
    replicas = spec.get("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise where.error(f"spec.replicas {replicas!r} must be a whole number >= 0")
    selector = spec.get("selector")
    match_labels = _string_map(selector.get("matchLabels") if isinstance(selector, dict) else None,
                               where, "spec.selector.matchLabels")
    if not match_labels:
        raise where.error("spec.selector.matchLabels is required (apps/v1)")
    template = spec.get("template")
    if not isinstance(template, dict):
        raise where.error("spec.template is required")
    template_metadata = template.get("metadata") or {}
    if not isinstance(template_metadata, dict):
        raise where.error("spec.template.metadata must be a mapping")
    template_labels = _string_map(template_metadata.get("labels"), where, "spec.template.metadata.labels")
    if any(template_labels.get(k) != v for k, v in match_labels.items()):
        raise where.error("spec.selector.matchLabels does not match spec.template.metadata.labels")
    return DeploymentManifest(
        namespace=deploy_namespace,
        name=name,
        replicas=replicas,
        selector=tuple(sorted(match_labels.items())),
        template=_parse_template(template.get("spec"), template_labels, where, "spec.template.spec"),
    )


def pod_probes(spec: dict) -> list[probes.ProbeSpec]:
    """The readiness and liveness probes of a (validated) pod spec, every container's."""
    return [probe for index, container in enumerate(spec.get("containers") or [])
            for probe in probes.container_probes(f"spec.containers[{index}]", container)]


def served_ports(template: PodTemplate) -> tuple[tuple[int, str], ...]:
    """What a pod's test server listens on: every declared port plus 8080 over TCP and UDP."""
    ports = {(DEFAULT_TEST_PORT, "TCP"), (DEFAULT_TEST_PORT, "UDP")}
    ports.update((p.port, p.protocol) for p in template.ports)
    return tuple(sorted(ports))


def load_cluster(path: str, name: str | None = None) -> model.ClusterSpec:
    """Read a ``Cluster`` document (the only document of its file) into a validated spec."""
    documents = load_documents(path)
    clusters = [d for d in documents if d.get("kind") == "Cluster"]
    if len(clusters) != 1:
        raise InvalidInput(f"{path}: expected exactly one document of kind Cluster, found {len(clusters)}")
    document = clusters[0]
    metadata = document.get("metadata") or {}
    spec = document.get("spec") or {}
    if not isinstance(metadata, dict):
        raise InvalidInput(f"{path}: Cluster: metadata must be a mapping")
    if not isinstance(spec, dict):
        raise InvalidInput(f"{path}: Cluster: spec must be a mapping")
    known = {"nodes", "cni", "clusterCIDR", "nodeCIDRMaskSize", "serviceCIDR", "nodeNetwork", "mtu",
             "blockSize", "bgp", "cniConfig"}
    known.add("loadBalancerPool")  # LoadBalancer Services' addresses (api/loadbalancer.py)
    known.update(("dns", "clusterDomain"))  # the cluster DNS (control/dns.py)
    known.add("selfHeal")  # the reconciliation loop (control/heal.py)
    unknown = sorted(set(spec) - known)
    cluster_name = name if name is not None else (metadata.get("name") or model.DEFAULT_CLUSTER_NAME)
    if unknown:
        raise InvalidInput(f'{path}: cluster "{cluster_name}": unknown field spec.{unknown[0]} '
                           f"(known: {', '.join(sorted(known))})")
    try:
        return model.build_spec(**model.document_arguments(cluster_name, spec))
    except InvalidInput as exc:
        raise InvalidInput(f"{path}: {exc}") from None
