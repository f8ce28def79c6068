"""The EndpointSlice controller: a Service and the pods it selects in, EndpointSlices out (pure).

What this module owns: deciding, for one Service, which pods are its endpoints, on which
port each one answers, and in which condition it is - the job of kube-controller-manager's
EndpointSlice controller. It never reads the store or the kernel; the caller passes the pods.

Pods are plain dicts shaped like Kubernetes Pod objects (what the store holds):
``metadata.name/namespace/labels/deletionTimestamp``, ``spec.nodeName``,
``spec.containers[].ports[]`` (``name``, ``containerPort``, ``protocol``), ``status.phase``,
``status.podIP`` and ``status.conditions``.

The conditions, as the controller sets them:

- **ready**: the pod's ``Ready`` condition is ``"True"`` (the kubelet side sets it from the
  readiness probe; a pod without a probe is Ready once running) *and* the pod is not
  terminating. With ``publishNotReadyAddresses`` every endpoint is ready.
- **serving**: the pod's ``Ready`` condition is ``"True"``, whether or not it is terminating
  (so a terminating pod can still serve while it drains), or ``publishNotReadyAddresses``.
- **terminating**: ``metadata.deletionTimestamp`` is set (the pod is being deleted).

Which pods appear at all (Kubernetes' ShouldPodBeInEndpoints): pods of the Service's
namespace whose labels match the selector, that have an IP, and are not terminal
(``Succeeded``/``Failed``). Terminating pods stay in the slice with ``terminating: true``.

A ``targetPort`` given by name resolves per pod against the pod's container ports with the
same name *and protocol*; a pod that declares no such port is left out of that service port
(it lands in a slice whose ``ports`` lack it, as Kubernetes does), and the reason is kept in
``EndpointsResult.omitted`` so ``describe svc`` can say why. Pods with the same resolved ports
share a slice; a slice holds at most 100 endpoints (the controller's default). Slice names are
``<service>-<5 chars>`` like the controller's generated names, but derived from the port set
so they are stable from one sync to the next.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from overlaynet import names
from overlaynet.api.services import (
    CONTROLLER_NAME,
    SERVICE_NAME_LABEL,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    Service,
    ServicePort,
    SliceEndpoint,
    TargetRef,
)

MAX_ENDPOINTS_PER_SLICE = 100  # kube-controller-manager --max-endpoints-per-slice default


@dataclass(frozen=True)
class Omission:
    """A selected pod left out of a service port (or out of the service), and why."""

    pod: str
    port: str  # the service port's name, or its number when unnamed; "" for the whole pod
    reason: str


@dataclass(frozen=True)
class EndpointsResult:
    slices: tuple[EndpointSlice, ...]
    omitted: tuple[Omission, ...] = ()
    matched: int = 0  # pods matching the selector (before eligibility)
    notes: tuple[str, ...] = ()  # service-level explanations ("selector matches no pods")

    def describe(self) -> list[str]:
        """Lines for ``describe svc``: what the controller did not do, and why."""
        lines = list(self.notes)
        lines += [f'pod "{o.pod}"' + (f" port {o.port}" if o.port else "") + f": {o.reason}" for o in self.omitted]
        return lines


def pod_is_ready(pod: dict) -> bool:
    """The pod's Ready condition is "True"."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def pod_is_terminating(pod: dict) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def resolve_target_port(service_port: ServicePort, pod: dict) -> int | None:
    """The pod's port for ``service_port`` (Kubernetes' FindPort), or None when a named
    targetPort matches no container port of that name and protocol."""
    target = service_port.target_port
    if isinstance(target, int):
        return target
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target and port.get("protocol", "TCP") == service_port.protocol:
                return int(port["containerPort"])
    return None


def _declared_names(pod: dict) -> list[str]:
    return [f'{p.get("name")}/{p.get("protocol", "TCP")}' for c in (pod.get("spec") or {}).get("containers") or []
            for p in c.get("ports") or [] if p.get("name")]


def build_endpoint_slices(service: Service, pods: Iterable[dict]) -> EndpointsResult:
    """The EndpointSlices the controller keeps for ``service`` given all ``pods`` of the cluster."""
    if service.selector is None:
        return EndpointsResult((), notes=("no selector: the endpoints are the EndpointSlices written by hand "
                                          f"(label {SERVICE_NAME_LABEL}={service.name})",))
    selector = dict(service.selector)
    matched = [p for p in pods
               if (p.get("metadata") or {}).get("namespace", "default") == service.namespace
               and selector_matches(selector, (p.get("metadata") or {}).get("labels") or {})]
    matched.sort(key=lambda p: p["metadata"]["name"])
    omitted: list[Omission] = []
    notes: list[str] = []
    selector_text = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    if not matched:
        notes.append(f"selector {selector_text} matches no pods in namespace {service.namespace}: "
                     "no endpoints (connections are refused)")

    groups: dict[tuple[tuple[str, int, str], ...], list[SliceEndpoint]] = {}
    for pod in matched:
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        phase = status.get("phase")
        if phase in ("Succeeded", "Failed"):
            omitted.append(Omission(name, "", f"the pod has finished (phase {phase})"))
            continue
        ip = status.get("podIP")
        if not ip:
            omitted.append(Omission(name, "", f"the pod has no IP yet (phase {phase or 'Pending'})"))
            continue
        ports: list[tuple[str, int, str]] = []
        for index, service_port in enumerate(service.ports):
            number = resolve_target_port(service_port, pod)
            if number is None:
                declared = _declared_names(pod)
                omitted.append(Omission(
                    name, service_port.name or str(service_port.port),
                    f'no container port named "{service_port.target_port}" with protocol {service_port.protocol} '
                    f"(declared: {', '.join(declared) if declared else 'no named ports'}); "
                    "the pod is not an endpoint of this port"))
                continue
            ports.append((service_port.name, number, service_port.protocol))
        terminating = pod_is_terminating(pod)
        pod_ready = pod_is_ready(pod)
        serving = service.publish_not_ready_addresses or pod_ready
        ready = serving and (service.publish_not_ready_addresses or not terminating)
        pod_spec = pod.get("spec") or {}
        endpoint = SliceEndpoint(
            addresses=(str(ip),),
            conditions=EndpointConditions(ready=ready, serving=serving, terminating=terminating),
            node_name=pod_spec.get("nodeName"),
            target_ref=TargetRef("Pod", service.namespace, name),
            # The pod's DNS name under a headless Service: spec.hostname when spec.subdomain names it.
            hostname=pod_spec.get("hostname") if pod_spec.get("subdomain") == service.name else None,
        )
        groups.setdefault(tuple(ports), []).append(endpoint)

    slices = []
    for port_set in sorted(groups, key=lambda ps: (-len(ps), ps)):
        endpoints = groups[port_set]
        for chunk_index in range(0, len(endpoints), MAX_ENDPOINTS_PER_SLICE):
            chunk = tuple(endpoints[chunk_index:chunk_index + MAX_ENDPOINTS_PER_SLICE])
            slices.append(EndpointSlice(
                namespace=service.namespace,
                name=slice_name(service, port_set, chunk_index // MAX_ENDPOINTS_PER_SLICE),
                service_name=service.name,
                ports=tuple(EndpointPort(n, p, proto) for n, p, proto in port_set),
                endpoints=chunk,
                managed_by=CONTROLLER_NAME,
            ))
    return EndpointsResult(tuple(slices), tuple(omitted), len(matched), tuple(notes))


def slice_name(service: Service, port_set: tuple, index: int) -> str:
    """``<service>-<5 chars>``, at most 63 characters, stable for one port set and chunk."""
    suffix = names.generated_suffix(f"{service.namespace}/{service.name}/{port_set!r}/{index}", 5)
    return f"{service.name[:57]}-{suffix}"
