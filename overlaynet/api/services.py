"""Service (v1) and EndpointSlice (discovery.k8s.io/v1) documents in, validated values out (pure).

What this module owns:
- parsing and validating ``Service`` and ``EndpointSlice`` objects into frozen dataclasses, with
  errors that name the file, the object and the field as every kind's do (``objects.Where``)
  (``web.yaml: Service "web": spec.ports[1].port 70000 is out of range 1-65535``);
- allocating what the API server allocates for a Service: its ClusterIP from the service CIDR
  and its NodePorts from 30000-32767 (pure: the caller says what is in use).

What it never does: touch the store or the kernel, or decide endpoints (``endpoints.py``) or
rules (``proxy/render.py``). ``manifests.parse_document`` dispatches ``kind: Service`` and
``kind: EndpointSlice`` here (``parse_service_document``, ``parse_endpointslice_document``).

Supported: ``type`` ClusterIP, NodePort and LoadBalancer (``spec.loadBalancerIP``,
``loadBalancerSourceRanges``, ``allocateLoadBalancerNodePorts``, ``status.loadBalancer.ingress``;
the address itself comes from ``api/loadbalancer.py``), ``externalIPs``, headless (``clusterIP: None``), several named ports,
``targetPort`` by number or by container port name, TCP and UDP, ``sessionAffinity: ClientIP``
(with ``sessionAffinityConfig.clientIP.timeoutSeconds``, default 10800), ``externalTrafficPolicy``
and ``internalTrafficPolicy`` (Cluster/Local), ``publishNotReadyAddresses``, and Services without a
selector whose endpoints come from hand-written EndpointSlices. Refused by name, so nothing is
silently not emulated: the ``ExternalName`` type, SCTP, IPv6 and dual-stack. ``appProtocol``, ``ipFamilies: [IPv4]`` and ``ipFamilyPolicy: SingleStack`` are
accepted.

Allocation follows the API server's rules but deterministically (the lowest free address and
port rather than a random one, so a lab reads the same every time): the network address, the
first host (Kubernetes reserves it for ``kubernetes.default``) and the broadcast address are never
handed out; a requested ``spec.clusterIP`` / ``nodePort`` is honoured after checking that it is in
range and free; requested values in a batch are placed before any dynamic allocation, so a
dynamic pick never steals an address another object of the same apply asked for.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from overlaynet import names
from overlaynet.api.objects import Where, object_namespace
from overlaynet.errors import CapacityError

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
PROTOCOLS = ("TCP", "UDP")
TRAFFIC_POLICIES = ("Cluster", "Local")
AFFINITIES = ("None", "ClientIP")
HEADLESS = "None"  # spec.clusterIP of a headless Service
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds (3 h), Kubernetes' default
MAX_AFFINITY_TIMEOUT = 86400  # Kubernetes' validation limit (1 day)
NODE_PORT_RANGE = (30000, 32767)  # kube-apiserver --service-node-port-range
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"

_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class ServicePort:
    name: str  # "" when the port is unnamed (as the API stores it)
    port: int
    target_port: int | str  # a number, or the name of a container port
    protocol: str = "TCP"
    node_port: int | None = None  # None: not a NodePort service, or not yet allocated
    app_protocol: str | None = None


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    ports: tuple[ServicePort, ...]
    type: str = "ClusterIP"
    cluster_ip: str | None = None  # None: not yet allocated; "None": headless
    selector: tuple[tuple[str, str], ...] | None = None  # None: endpoints are hand-written
    session_affinity: str = "None"
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    publish_not_ready_addresses: bool = False
    external_ips: tuple[str, ...] = ()  # spec.externalIPs
    load_balancer_ip: str | None = None  # spec.loadBalancerIP: the address asked for
    load_balancer_source_ranges: tuple[str, ...] = ()  # spec.loadBalancerSourceRanges, normalised CIDRs
    allocate_load_balancer_node_ports: bool = True  # spec.allocateLoadBalancerNodePorts
    health_check_node_port: int | None = None  # spec.healthCheckNodePort (LoadBalancer, Local policy)
    ingress_ip: str | None = None  # status.loadBalancer.ingress[0].ip: None while <pending>
    labels: tuple[tuple[str, str], ...] = ()  # metadata.labels
    source: str = field(default="", compare=False)  # the file it came from, for errors

    @property
    def key(self) -> str:
        """``namespace/name``, kube-proxy's NamespacedName."""
        return f"{self.namespace}/{self.name}"

    @property
    def headless(self) -> bool:
        return self.cluster_ip == HEADLESS

    @property
    def selector_dict(self) -> dict[str, str] | None:
        return dict(self.selector) if self.selector is not None else None

    def port_name_string(self, port: ServicePort) -> str:
        """kube-proxy's ServicePortName.String(): ``ns/name`` plus ``:port`` for a named port."""
        return f"{self.namespace}/{self.name}:{port.name}" if port.name else f"{self.namespace}/{self.name}"

    def where(self) -> Where:
        return Where(self.source, "Service", self.name)

    @property
    def has_node_ports(self) -> bool:
        """NodePorts are allocated: type NodePort, or LoadBalancer with allocateLoadBalancerNodePorts."""
        return self.type == "NodePort" or (self.type == "LoadBalancer" and self.allocate_load_balancer_node_ports)

    @property
    def externally_accessible(self) -> bool:
        """apiservice.ExternallyAccessible: external traffic policy applies to this service."""
        return self.type in ("NodePort", "LoadBalancer") or bool(self.external_ips)

    def to_document(self) -> dict:
        """The Service as the API server shows it after defaulting and allocation.

        ``parse_service_document(s.to_document(), ...)`` gives back ``s``.
        """
        spec: dict = {"type": self.type}
        if self.cluster_ip is not None:
            spec["clusterIP"] = self.cluster_ip
            spec["clusterIPs"] = [self.cluster_ip]
        if self.selector is not None:
            spec["selector"] = dict(self.selector)
        ports = []
        for port in self.ports:
            item: dict = {}
            if port.name:
                item["name"] = port.name
            item.update(protocol=port.protocol, port=port.port, targetPort=port.target_port)
            if port.node_port is not None:
                item["nodePort"] = port.node_port
            if port.app_protocol:
                item["appProtocol"] = port.app_protocol
            ports.append(item)
        spec["ports"] = ports
        spec["sessionAffinity"] = self.session_affinity
        if self.session_affinity == "ClientIP":
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": self.affinity_timeout}}
        if self.externally_accessible:
            spec["externalTrafficPolicy"] = self.external_traffic_policy
        if self.external_ips:
            spec["externalIPs"] = list(self.external_ips)
        if self.type == "LoadBalancer":
            spec["allocateLoadBalancerNodePorts"] = self.allocate_load_balancer_node_ports
            if self.load_balancer_ip:
                spec["loadBalancerIP"] = self.load_balancer_ip
            if self.load_balancer_source_ranges:
                spec["loadBalancerSourceRanges"] = list(self.load_balancer_source_ranges)
            if self.health_check_node_port is not None:
                spec["healthCheckNodePort"] = self.health_check_node_port
        spec["internalTrafficPolicy"] = self.internal_traffic_policy
        if self.publish_not_ready_addresses:
            spec["publishNotReadyAddresses"] = True
        spec["ipFamilies"] = ["IPv4"]
        spec["ipFamilyPolicy"] = "SingleStack"
        metadata: dict = {"name": self.name, "namespace": self.namespace}
        if self.labels:
            metadata["labels"] = dict(self.labels)
        document = {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}
        if self.type == "LoadBalancer":
            ingress = [{"ip": self.ingress_ip, "ipMode": "VIP"}] if self.ingress_ip else []
            document["status"] = {"loadBalancer": {"ingress": ingress} if ingress else {}}
        return document


@dataclass(frozen=True)
class EndpointPort:
    name: str = ""
    port: int | None = None
    protocol: str = "TCP"
    app_protocol: str | None = None


@dataclass(frozen=True)
class EndpointConditions:
    """As written; ``None`` is "unset". The effective values follow the API contract, which is
    how kube-proxy reads them: unset ready and serving mean true, unset terminating false."""

    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None

    @property
    def is_ready(self) -> bool:
        return self.ready is None or self.ready

    @property
    def is_serving(self) -> bool:
        return self.serving is None or self.serving

    @property
    def is_terminating(self) -> bool:
        return bool(self.terminating)


@dataclass(frozen=True)
class TargetRef:
    kind: str
    namespace: str
    name: str


@dataclass(frozen=True)
class SliceEndpoint:
    """One endpoint of an EndpointSlice (discovery.k8s.io/v1 ``endpoints[]``)."""

    addresses: tuple[str, ...]
    conditions: EndpointConditions = EndpointConditions()
    node_name: str | None = None
    target_ref: TargetRef | None = None
    hostname: str | None = None
    zone: str | None = None


@dataclass(frozen=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str | None  # the kubernetes.io/service-name label; kube-proxy ignores slices without it
    ports: tuple[EndpointPort, ...]
    endpoints: tuple[SliceEndpoint, ...]
    address_type: str = "IPv4"
    managed_by: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    source: str = field(default="", compare=False)

    @property
    def service_key(self) -> str | None:
        return f"{self.namespace}/{self.service_name}" if self.service_name else None

    def to_document(self) -> dict:
        labels = dict(self.labels)
        if self.service_name:
            labels[SERVICE_NAME_LABEL] = self.service_name
        if self.managed_by:
            labels[MANAGED_BY_LABEL] = self.managed_by
        endpoints = []
        for endpoint in self.endpoints:
            item: dict = {"addresses": list(endpoint.addresses)}
            conditions = {k: v for k, v in (("ready", endpoint.conditions.ready),
                                            ("serving", endpoint.conditions.serving),
                                            ("terminating", endpoint.conditions.terminating)) if v is not None}
            item["conditions"] = conditions
            if endpoint.hostname:
                item["hostname"] = endpoint.hostname
            if endpoint.node_name:
                item["nodeName"] = endpoint.node_name
            if endpoint.zone:
                item["zone"] = endpoint.zone
            if endpoint.target_ref:
                item["targetRef"] = {"kind": endpoint.target_ref.kind, "namespace": endpoint.target_ref.namespace,
                                     "name": endpoint.target_ref.name}
            endpoints.append(item)
        ports = []
        for port in self.ports:
            item = {"name": port.name, "protocol": port.protocol}
            if port.port is not None:
                item["port"] = port.port
            if port.app_protocol:
                item["appProtocol"] = port.app_protocol
            ports.append(item)
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": self.name, "namespace": self.namespace, "labels": labels},
                "addressType": self.address_type, "endpoints": endpoints, "ports": ports}


# --------------------------------------------------------------------------- parsing


def parse_service_document(document: dict, source: str, namespace: str | None = None) -> Service:
    """Validate one ``kind: Service`` object read from ``source``."""
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    where = Where(source, "Service", str(name or ""))
    if document.get("kind", "Service") != "Service":
        raise where.error(f'kind "{document.get("kind")}" is not a Service')
    api_version = document.get("apiVersion", "v1")
    if api_version != "v1":
        raise where.error(f'apiVersion "{api_version}" is not supported for Service (supported: v1)')
    svc_namespace, svc_name = _metadata(document, where, namespace, dns1035=True)
    spec = document.get("spec")
    if not isinstance(spec, dict):
        raise where.error("spec is required")

    svc_type = spec.get("type", "ClusterIP")
    if svc_type == "ExternalName":
        raise where.error('spec.type "ExternalName" is not supported: it is a DNS alias, '
                          "and overlaynet's cluster DNS serves no CNAME records")
    if svc_type not in SERVICE_TYPES:
        raise where.error(f'spec.type "{svc_type}" is not supported (supported: {", ".join(SERVICE_TYPES)})')

    if spec.get("externalName"):
        raise where.error("spec.externalName may only be set when spec.type is ExternalName")
    external_ips = _parse_external_ips(spec.get("externalIPs"), where)
    lb = _parse_load_balancer_fields(spec, document.get("status"), where, svc_type)
    families = spec.get("ipFamilies")
    if families is not None and list(families) != ["IPv4"]:
        raise where.error(f"spec.ipFamilies {families!r} is not supported: overlaynet is IPv4 only")
    family_policy = spec.get("ipFamilyPolicy")
    if family_policy not in (None, "SingleStack"):
        raise where.error(f'spec.ipFamilyPolicy "{family_policy}" is not supported: overlaynet is IPv4 single-stack')

    cluster_ip = _parse_cluster_ip(spec, where, svc_type)
    headless = cluster_ip == HEADLESS
    ports = _parse_ports(spec.get("ports"), where, svc_type, headless)

    selector = spec.get("selector")
    if selector is not None:
        if not isinstance(selector, dict) or not all(isinstance(k, str) for k in selector):
            raise where.error("spec.selector must be a mapping of strings")
        # An empty selector selects nothing, as in Kubernetes: the endpoints are hand-written.
        selector_items = tuple(sorted((k, str(v)) for k, v in selector.items())) if selector else None
    else:
        selector_items = None

    affinity = spec.get("sessionAffinity", "None")
    if affinity not in AFFINITIES:
        raise where.error(f'spec.sessionAffinity "{affinity}" is not supported (supported: {", ".join(AFFINITIES)})')
    timeout = DEFAULT_AFFINITY_TIMEOUT
    config = spec.get("sessionAffinityConfig")
    if config is not None:
        if affinity != "ClientIP":
            raise where.error('spec.sessionAffinityConfig may only be set when spec.sessionAffinity is "ClientIP"')
        client_ip = config.get("clientIP") if isinstance(config, dict) else None
        if not isinstance(client_ip, dict):
            raise where.error("spec.sessionAffinityConfig.clientIP must be a mapping")
        timeout = client_ip.get("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 < timeout <= MAX_AFFINITY_TIMEOUT:
            raise where.error(f"spec.sessionAffinityConfig.clientIP.timeoutSeconds {timeout!r} must be a whole "
                              f"number of seconds in 1-{MAX_AFFINITY_TIMEOUT}")

    etp = spec.get("externalTrafficPolicy")
    if etp is not None:
        if etp not in TRAFFIC_POLICIES:
            raise where.error(f'spec.externalTrafficPolicy "{etp}" is not supported (supported: Cluster, Local)')
        if svc_type == "ClusterIP" and not external_ips:
            raise where.error("spec.externalTrafficPolicy may only be set when spec.type is NodePort or "
                              "LoadBalancer, or with spec.externalIPs (a ClusterIP service has no external traffic)")
    itp = spec.get("internalTrafficPolicy", "Cluster")
    if itp not in TRAFFIC_POLICIES:
        raise where.error(f'spec.internalTrafficPolicy "{itp}" is not supported (supported: Cluster, Local)')

    publish = spec.get("publishNotReadyAddresses", False)
    if not isinstance(publish, bool):
        raise where.error(f"spec.publishNotReadyAddresses {publish!r} must be true or false")

    return Service(
        namespace=svc_namespace,
        name=svc_name,
        ports=ports,
        type=svc_type,
        cluster_ip=cluster_ip,
        selector=selector_items,
        session_affinity=affinity,
        affinity_timeout=timeout,
        external_traffic_policy=etp or "Cluster",
        internal_traffic_policy=itp,
        publish_not_ready_addresses=publish,
        external_ips=external_ips,
        **lb,
        labels=_labels(metadata, where),
        source=source,
    )


def _labels(metadata, where: Where) -> tuple[tuple[str, str], ...]:
    labels = (metadata.get("labels") if isinstance(metadata, dict) else None) or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) for k in labels):
        raise where.error("metadata.labels must be a mapping of strings")
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _parse_external_ips(value, where: Where) -> tuple[str, ...]:
    if value is None or value == []:
        return ()
    if not isinstance(value, list):
        raise where.error("spec.externalIPs must be a list of IPv4 addresses")
    result: list[str] = []
    for index, item in enumerate(value):
        try:
            address = ipaddress.IPv4Address(str(item))
        except ValueError:
            raise where.error(f'spec.externalIPs[{index}] "{item}" is not an IPv4 address') from None
        if address.is_unspecified or address.is_loopback or address.is_multicast or address.is_link_local:
            raise where.error(f"spec.externalIPs[{index}] {address} may not be unspecified, loopback, "
                              "multicast or link-local")
        if str(address) in result:
            raise where.error(f"spec.externalIPs[{index}] {address} is a duplicate")
        result.append(str(address))
    return tuple(result)


def _parse_load_balancer_fields(spec: dict, status, where: Where, svc_type: str) -> dict:
    """The LoadBalancer fields as ``Service`` keyword arguments; set on another type, an error
    (as the API server's validation says)."""
    is_lb = svc_type == "LoadBalancer"
    for key in ("loadBalancerIP", "loadBalancerSourceRanges", "allocateLoadBalancerNodePorts", "healthCheckNodePort",
                "loadBalancerClass"):
        if spec.get(key) not in (None, "", []) and not is_lb:
            raise where.error(f"spec.{key} may only be set when spec.type is LoadBalancer")
    if spec.get("loadBalancerClass"):
        raise where.error("spec.loadBalancerClass is not supported: overlaynet's service controller handles "
                          "every LoadBalancer Service")
    if not is_lb:
        return {}
    requested = spec.get("loadBalancerIP") or None
    if requested is not None:
        try:
            requested = str(ipaddress.IPv4Address(str(requested)))
        except ValueError:
            raise where.error(f'spec.loadBalancerIP "{requested}" is not an IPv4 address') from None
    ranges = spec.get("loadBalancerSourceRanges") or []
    if not isinstance(ranges, list):
        raise where.error("spec.loadBalancerSourceRanges must be a list of CIDRs")
    parsed_ranges: list[str] = []
    for index, item in enumerate(ranges):
        try:
            # kube-proxy normalises with net.ParseCIDR (host bits dropped), as ip_network(strict=False).
            network = ipaddress.IPv4Network(str(item).strip(), strict=False)
        except ValueError:
            raise where.error(f'spec.loadBalancerSourceRanges[{index}] "{item}" is not an IPv4 CIDR '
                              "(e.g. 172.20.0.0/24)") from None
        parsed_ranges.append(str(network))
    allocate_ports = spec.get("allocateLoadBalancerNodePorts", True)
    if not isinstance(allocate_ports, bool):
        raise where.error(f"spec.allocateLoadBalancerNodePorts {allocate_ports!r} must be true or false")
    health = spec.get("healthCheckNodePort")
    if health is not None:
        if isinstance(health, bool) or not isinstance(health, int) or not 1 <= health <= 65535:
            raise where.error(f"spec.healthCheckNodePort {health!r} is out of range 1-65535")
        if spec.get("externalTrafficPolicy") != "Local":
            raise where.error('spec.healthCheckNodePort may only be set when spec.externalTrafficPolicy is "Local"')
    ingress_ip = None
    ingress = ((status or {}).get("loadBalancer") or {}).get("ingress") if isinstance(status, dict) else None
    if ingress:
        ingress_ip = str(ingress[0].get("ip")) if isinstance(ingress[0], dict) and ingress[0].get("ip") else None
    return {"load_balancer_ip": requested, "load_balancer_source_ranges": tuple(parsed_ranges),
            "allocate_load_balancer_node_ports": allocate_ports, "health_check_node_port": health,
            "ingress_ip": ingress_ip}


def _metadata(document: dict, where: Where, namespace: str | None, dns1035: bool) -> tuple[str, str]:
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        raise where.error("metadata is required")
    name = metadata.get("name")
    if not name:
        raise where.error("metadata.name is required")
    if dns1035:
        # Service names are DNS-1035 labels: they become DNS names in a real cluster.
        if not isinstance(name, str) or len(name) > 63 or not _DNS1035.fullmatch(name):
            raise where.error("metadata.name must be at most 63 lower case alphanumeric characters or '-', "
                              "start with a letter and end with an alphanumeric character (DNS-1035 label)")
    else:
        where.check(lambda: names.check_subdomain("object", name, "metadata.name"))
    return object_namespace(metadata, where, namespace), name


def _parse_cluster_ip(spec: dict, where: Where, svc_type: str) -> str | None:
    cluster_ip = spec.get("clusterIP")
    cluster_ips = spec.get("clusterIPs")
    if cluster_ips is not None:
        if not isinstance(cluster_ips, list) or len(cluster_ips) > 1:
            raise where.error(f"spec.clusterIPs {cluster_ips!r} is not supported: overlaynet is IPv4 single-stack")
        if cluster_ips:
            if cluster_ip not in (None, "") and cluster_ip != cluster_ips[0]:
                raise where.error(f"spec.clusterIPs[0] {cluster_ips[0]} must match spec.clusterIP {cluster_ip}")
            cluster_ip = cluster_ips[0]
    if cluster_ip in (None, ""):
        return None
    if cluster_ip == HEADLESS:
        if svc_type != "ClusterIP":
            raise where.error(f'spec.clusterIP may not be "None" (headless) when spec.type is {svc_type}')
        return HEADLESS
    try:
        address = ipaddress.ip_address(str(cluster_ip))
    except ValueError:
        raise where.error(f'spec.clusterIP "{cluster_ip}" is not an IP address '
                          '(or "None" for a headless service)') from None
    if address.version != 4:
        raise where.error(f"spec.clusterIP {cluster_ip} is not supported: overlaynet is IPv4 only")
    return str(address)


def _parse_ports(ports, where: Where, svc_type: str, headless: bool) -> tuple[ServicePort, ...]:
    if ports is None or ports == []:
        if headless:
            return ()
        raise where.error("spec.ports must list at least one port (only a headless service may have none)")
    if not isinstance(ports, list):
        raise where.error("spec.ports must be a list")
    parsed: list[ServicePort] = []
    seen_names: dict[str, int] = {}
    seen_ports: dict[tuple[int, str], int] = {}
    seen_node_ports: dict[tuple[int, str], int] = {}
    for index, port in enumerate(ports):
        path = f"spec.ports[{index}]"
        if not isinstance(port, dict):
            raise where.error(f"{path} must be a mapping")
        name = port.get("name")
        if name in (None, ""):
            if len(ports) > 1:
                raise where.error(f"{path}.name is required when a service has more than one port")
            name = ""
        else:
            if not isinstance(name, str) or not names.is_label(name):
                raise where.error(f'{path}.name "{name}" must be a DNS-1123 label (at most 63 lower case '
                                  "alphanumeric characters or '-', starting and ending with an alphanumeric)")
            if name in seen_names:
                raise where.error(f'{path}.name "{name}" is a duplicate of spec.ports[{seen_names[name]}].name')
            seen_names[name] = index
        number = port.get("port")
        if number is None:
            raise where.error(f"{path}.port is required")
        if isinstance(number, bool) or not isinstance(number, int):
            raise where.error(f"{path}.port {number!r} is not a number")
        if not 1 <= number <= 65535:
            raise where.error(f"{path}.port {number} is out of range 1-65535")
        protocol = port.get("protocol", "TCP")
        if protocol == "SCTP":
            raise where.error(f'{path}.protocol "SCTP" is not supported (supported: TCP, UDP)')
        if protocol not in PROTOCOLS:
            raise where.error(f'{path}.protocol "{protocol}" is not supported (supported: TCP, UDP)')
        if (number, protocol) in seen_ports:
            first = seen_ports[number, protocol]
            raise where.error(f"{path}: port {number}/{protocol} is a duplicate of spec.ports[{first}]")
        seen_ports[number, protocol] = index
        target = _parse_target_port(port.get("targetPort"), number, where, path)
        node_port = port.get("nodePort")
        if node_port is not None:
            if isinstance(node_port, bool) or not isinstance(node_port, int):
                raise where.error(f"{path}.nodePort {node_port!r} is not a number")
            if svc_type == "ClusterIP":
                raise where.error(f"{path}.nodePort may not be set when spec.type is ClusterIP")
            if not 1 <= node_port <= 65535:
                raise where.error(f"{path}.nodePort {node_port} is out of range 1-65535")
            if (node_port, protocol) in seen_node_ports:
                raise where.error(f"{path}.nodePort {node_port} is a duplicate of "
                                  f"spec.ports[{seen_node_ports[node_port, protocol]}].nodePort")
            seen_node_ports[node_port, protocol] = index
        app_protocol = port.get("appProtocol")
        parsed.append(ServicePort(name, number, target, protocol, node_port,
                                  str(app_protocol) if app_protocol else None))
    return tuple(parsed)


def _parse_target_port(target, port: int, where: Where, path: str) -> int | str:
    if target is None:
        return port  # Kubernetes defaults targetPort to port
    if isinstance(target, bool):
        raise where.error(f"{path}.targetPort {target!r} must be a port number or a container port name")
    if isinstance(target, int):
        if not 1 <= target <= 65535:
            raise where.error(f"{path}.targetPort {target} is out of range 1-65535")
        return target
    if isinstance(target, str):
        if len(target) > 15 or not names.is_label(target) or not re.search("[a-z]", target) \
                or "--" in target:
            raise where.error(f'{path}.targetPort "{target}" must be a port number or a container port name '
                              "(an IANA service name: at most 15 lower case alphanumerics or '-', with a letter)")
        return target
    raise where.error(f"{path}.targetPort {target!r} must be a port number or a container port name")


def parse_endpointslice_document(document: dict, source: str, namespace: str | None = None) -> EndpointSlice:
    """Validate one ``kind: EndpointSlice`` object (discovery.k8s.io/v1) read from ``source``."""
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    where = Where(source, "EndpointSlice", str(name or ""))
    api_version = document.get("apiVersion", "discovery.k8s.io/v1")
    if api_version != "discovery.k8s.io/v1":
        raise where.error(f'apiVersion "{api_version}" is not supported for EndpointSlice '
                          "(supported: discovery.k8s.io/v1)")
    slice_namespace, slice_name = _metadata(document, where, namespace, dns1035=False)
    assert isinstance(metadata, dict)  # _metadata refuses a document without one
    labels = metadata.get("labels") or {}
    if not isinstance(labels, dict):
        raise where.error("metadata.labels must be a mapping of strings")
    labels = {str(k): str(v) for k, v in labels.items()}
    service_name = labels.pop(SERVICE_NAME_LABEL, None)
    managed_by = labels.pop(MANAGED_BY_LABEL, None)

    address_type = document.get("addressType")
    if address_type is None:
        raise where.error("addressType is required (IPv4)")
    if address_type != "IPv4":
        raise where.error(f'addressType "{address_type}" is not supported (supported: IPv4)')

    raw_ports = document.get("ports") or []
    if not isinstance(raw_ports, list):
        raise where.error("ports must be a list")
    ports: list[EndpointPort] = []
    seen: dict[str, int] = {}
    for index, port in enumerate(raw_ports):
        path = f"ports[{index}]"
        if not isinstance(port, dict):
            raise where.error(f"{path} must be a mapping")
        port_name = port.get("name") or ""
        if port_name in seen:
            raise where.error(f'{path}.name "{port_name}" is a duplicate of ports[{seen[port_name]}].name')
        seen[port_name] = index
        number = port.get("port")
        if number is not None:
            if isinstance(number, bool) or not isinstance(number, int):
                raise where.error(f"{path}.port {number!r} is not a number")
            if not 1 <= number <= 65535:
                raise where.error(f"{path}.port {number} is out of range 1-65535")
        protocol = port.get("protocol", "TCP")
        if protocol not in PROTOCOLS:
            raise where.error(f'{path}.protocol "{protocol}" is not supported (supported: TCP, UDP)')
        ports.append(EndpointPort(port_name, number, protocol, port.get("appProtocol")))

    raw_endpoints = document.get("endpoints")
    if raw_endpoints is None:
        raw_endpoints = []
    if not isinstance(raw_endpoints, list):
        raise where.error("endpoints must be a list")
    endpoints = []
    for index, endpoint in enumerate(raw_endpoints):
        path = f"endpoints[{index}]"
        if not isinstance(endpoint, dict):
            raise where.error(f"{path} must be a mapping")
        addresses = endpoint.get("addresses")
        if not isinstance(addresses, list) or not addresses:
            raise where.error(f"{path}.addresses must list at least one address")
        if len(addresses) > 100:
            raise where.error(f"{path}.addresses has {len(addresses)} entries (at most 100)")
        checked = []
        for a_index, address in enumerate(addresses):
            try:
                parsed = ipaddress.ip_address(str(address))
            except ValueError:
                raise where.error(f'{path}.addresses[{a_index}] "{address}" is not an IP address') from None
            if parsed.version != 4:
                raise where.error(f"{path}.addresses[{a_index}] {address} is not an IPv4 address (addressType IPv4)")
            checked.append(str(parsed))
        conditions = endpoint.get("conditions") or {}
        if not isinstance(conditions, dict):
            raise where.error(f"{path}.conditions must be a mapping")
        values = {}
        for key in ("ready", "serving", "terminating"):
            value = conditions.get(key)
            if value is not None and not isinstance(value, bool):
                raise where.error(f"{path}.conditions.{key} {value!r} must be true or false")
            values[key] = value
        node_name = endpoint.get("nodeName")
        if node_name is not None:
            where.check(lambda: names.check_label("node", node_name, f"{path}.nodeName"))
        target_ref = endpoint.get("targetRef")
        ref = None
        if target_ref is not None:
            if not isinstance(target_ref, dict) or not target_ref.get("name"):
                raise where.error(f"{path}.targetRef.name is required when targetRef is given")
            ref = TargetRef(str(target_ref.get("kind", "Pod")), str(target_ref.get("namespace", slice_namespace)),
                            str(target_ref["name"]))
        endpoints.append(SliceEndpoint(tuple(checked), EndpointConditions(**values), node_name, ref,
                                  endpoint.get("hostname"), endpoint.get("zone")))
    return EndpointSlice(
        namespace=slice_namespace,
        name=slice_name,
        service_name=service_name,
        ports=tuple(ports),
        endpoints=tuple(endpoints),
        address_type=address_type,
        managed_by=managed_by,
        labels=tuple(sorted(labels.items())),
        source=source,
    )


# --------------------------------------------------------------------------- allocation


def reserved_addresses(service_cidr: ipaddress.IPv4Network) -> dict[ipaddress.IPv4Address, str]:
    """Addresses of the service CIDR never handed out, with the reason."""
    network = ipaddress.IPv4Network(service_cidr)
    reserved = {network.network_address: "the network address of the service CIDR"}
    if network.num_addresses > 2:
        reserved[network.network_address + 1] = "reserved for the kubernetes.default service"
        reserved[network.broadcast_address] = "the broadcast address of the service CIDR"
    return reserved


def carry_over(new: Service, old: Service | None) -> Service:
    """An update keeps what was allocated, as the API server does: the ClusterIP is immutable
    and a NodePort left unset keeps its old value (matched by port name and protocol)."""
    if old is None:
        return new
    where = new.where()
    cluster_ip = new.cluster_ip
    if cluster_ip is None:
        cluster_ip = old.cluster_ip
    elif old.cluster_ip is not None and cluster_ip != old.cluster_ip:
        raise where.error(f"spec.clusterIP {cluster_ip} cannot change (it is {old.cluster_ip}): the field is "
                          "immutable; delete and re-create the service to change it")
    old_node_ports = {(p.name, p.protocol): p.node_port for p in old.ports if p.node_port is not None}
    ports = tuple(replace(p, node_port=old_node_ports.get((p.name, p.protocol)))
                  if new.has_node_ports and p.node_port is None else p for p in new.ports)
    carried = replace(new, cluster_ip=cluster_ip, ports=ports)
    if new.type == "LoadBalancer" and old.type == "LoadBalancer":
        # The service controller's address stays while the request allows it (api/loadbalancer.py decides).
        if new.ingress_ip is None and new.load_balancer_ip in (None, old.ingress_ip):
            carried = replace(carried, ingress_ip=old.ingress_ip)
        if (new.health_check_node_port is None and new.external_traffic_policy == "Local"
                and old.external_traffic_policy == "Local"):
            carried = replace(carried, health_check_node_port=old.health_check_node_port)
    return carried


def allocate(services: Sequence[Service], service_cidr, used_ips: Mapping[str, str] | Iterable[str] = (),
             used_node_ports: Mapping[int, str] | Iterable[int] = (),
             node_port_range: tuple[int, int] = NODE_PORT_RANGE) -> list[Service]:
    """Give every service its ClusterIP and NodePorts; return the services, allocated.

    ``used_ips`` / ``used_node_ports`` are what other services hold (a mapping to the holder's
    ``namespace/name`` makes the error say who). Requested values are checked and placed first,
    then the rest get the lowest free address / port. Headless services get no address.
    Errors name the service and the field; nothing is returned half-allocated.
    """
    network = ipaddress.IPv4Network(service_cidr)
    ip_owner: dict[ipaddress.IPv4Address, str] = {
        ipaddress.IPv4Address(ip): (owner if isinstance(used_ips, Mapping) else "")
        for ip, owner in (used_ips.items() if isinstance(used_ips, Mapping) else ((ip, "") for ip in used_ips))}
    port_owner: dict[int, str] = {
        int(p): (owner if isinstance(used_node_ports, Mapping) else "")
        for p, owner in (used_node_ports.items() if isinstance(used_node_ports, Mapping)
                         else ((p, "") for p in used_node_ports))}
    reserved = reserved_addresses(network)
    low, high = node_port_range

    def held_by(owner: str) -> str:
        return f" (by Service {owner})" if owner else ""

    # Pass 1: requested values.
    for service in services:
        where = service.where()
        if service.cluster_ip not in (None, HEADLESS):
            address = ipaddress.IPv4Address(service.cluster_ip)
            if address not in network:
                raise where.error(f"spec.clusterIP {address} is not in the service CIDR {network}")
            if address in reserved:
                raise where.error(f"spec.clusterIP {address} cannot be used: {reserved[address]}")
            if address in ip_owner and ip_owner[address] != service.key:
                raise where.error(f"spec.clusterIP {address} is already allocated{held_by(ip_owner[address])}")
            ip_owner[address] = service.key
        for index, port in enumerate(service.ports):
            if port.node_port is None:
                continue
            if not low <= port.node_port <= high:
                raise where.error(f"spec.ports[{index}].nodePort {port.node_port} is out of range {low}-{high}")
            owner = port_owner.get(port.node_port)
            if owner is not None and owner != service.key:
                raise where.error(f"spec.ports[{index}].nodePort {port.node_port} is already allocated{held_by(owner)}")
            port_owner[port.node_port] = service.key
        if service.health_check_node_port is not None:
            owner = port_owner.get(service.health_check_node_port)
            if owner is not None and owner != service.key:
                raise where.error(f"spec.healthCheckNodePort {service.health_check_node_port} is already "
                                  f"allocated{held_by(owner)}")
            port_owner[service.health_check_node_port] = service.key

    # Pass 2: dynamic values, lowest free first.
    first_host = int(network.network_address)
    last = int(network.broadcast_address)
    next_ip = first_host
    next_port = low
    result = []
    for service in services:
        where = service.where()
        cluster_ip = service.cluster_ip
        if cluster_ip is None:
            while next_ip <= last and (ipaddress.IPv4Address(next_ip) in reserved
                                       or ipaddress.IPv4Address(next_ip) in ip_owner):
                next_ip += 1
            if next_ip > last:
                raise CapacityError(f"{where.prefix}: spec.clusterIP: the service CIDR {network} is full "
                                    f"({len(ip_owner)} addresses allocated)")
            ip_owner[ipaddress.IPv4Address(next_ip)] = service.key
            cluster_ip = str(ipaddress.IPv4Address(next_ip))
        ports = list(service.ports)
        if service.has_node_ports:
            for index, port in enumerate(ports):
                if port.node_port is not None:
                    continue
                while next_port <= high and next_port in port_owner:
                    next_port += 1
                if next_port > high:
                    raise CapacityError(f"{where.prefix}: spec.ports[{index}].nodePort: the node port range "
                                        f"{low}-{high} is full")
                port_owner[next_port] = service.key
                ports[index] = replace(port, node_port=next_port)
        health = service.health_check_node_port
        if service.type == "LoadBalancer" and service.external_traffic_policy == "Local" and health is None:
            # The API server allocates the health check port from the node port range.
            while next_port <= high and next_port in port_owner:
                next_port += 1
            if next_port > high:
                raise CapacityError(f"{where.prefix}: spec.healthCheckNodePort: the node port range "
                                    f"{low}-{high} is full")
            port_owner[next_port] = service.key
            health = next_port
        result.append(replace(service, cluster_ip=cluster_ip, ports=tuple(ports), health_check_node_port=health))
    return result
