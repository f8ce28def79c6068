"""A pod's DNS fields, validated as the API server validates them (pure).

This module owns ``spec.dnsPolicy``, ``spec.dnsConfig``, ``spec.hostname`` and
``spec.subdomain`` of a Pod (and of a Deployment's pod template): their allowed values and
limits (Kubernetes' ``validateDNSPolicy`` and ``validatePodDNSConfig``), read into a ``PodDns``
value. What the kubelet makes of them (the pod's ``resolv.conf``) is ``overlaynet.node.resolv``;
which records a hostname gets is ``overlaynet.control.dns_records``.

The policies (https://kubernetes.io/docs/concepts/services-networking/dns-pod-service/):
``ClusterFirst`` (the default: the cluster DNS), ``ClusterFirstWithHostNet`` (the same for a pod
without hostNetwork, which every overlaynet pod is), ``Default`` (the node's resolv.conf) and
``None`` (only ``dnsConfig``, which must then name a nameserver).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from overlaynet import names
from overlaynet.errors import InvalidInput

POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
MAX_NAMESERVERS = 3  # glibc's MAXNS; the API server's limit
MAX_SEARCHES = 32  # the API server's MaxDNSSearchPaths
MAX_SEARCH_CHARS = 2048  # the API server's MaxDNSSearchListChars


@dataclass(frozen=True)
class PodDns:
    policy: str = "ClusterFirst"
    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[tuple[str, str | None], ...] = ()  # (name, value or None), as written
    hostname: str | None = None
    subdomain: str | None = None


def parse_pod_dns(spec: dict, field_path: str = "spec") -> PodDns:
    """The DNS fields of a pod spec; ``InvalidInput`` names the field (``spec.dnsConfig.nameservers[3]``)."""
    policy = spec.get("dnsPolicy", "ClusterFirst")
    if policy not in POLICIES:
        raise InvalidInput(f'{field_path}.dnsPolicy "{policy}" is not supported (supported: {", ".join(POLICIES)})')
    config = spec.get("dnsConfig")
    if config is None:
        config = {}
        if policy == "None":
            raise InvalidInput(f'{field_path}.dnsConfig is required when dnsPolicy is "None"')
    if not isinstance(config, dict):
        raise InvalidInput(f"{field_path}.dnsConfig must be a mapping (nameservers, searches, options)")
    unknown = sorted(set(config) - {"nameservers", "searches", "options"})
    if unknown:
        raise InvalidInput(f"{field_path}.dnsConfig.{unknown[0]} is not a field (known: nameservers, searches, options)")
    path = f"{field_path}.dnsConfig"
    nameservers = tuple(_nameserver(f"{path}.nameservers[{i}]", v) for i, v in enumerate(_list(path, config, "nameservers")))
    if len(nameservers) > MAX_NAMESERVERS:
        raise InvalidInput(f"{path}.nameservers: at most {MAX_NAMESERVERS} nameservers (has {len(nameservers)})")
    if policy == "None" and not nameservers:
        raise InvalidInput(f'{path}.nameservers must name at least one nameserver when dnsPolicy is "None"')
    searches = tuple(_search(f"{path}.searches[{i}]", v) for i, v in enumerate(_list(path, config, "searches")))
    if len(searches) > MAX_SEARCHES:
        raise InvalidInput(f"{path}.searches: at most {MAX_SEARCHES} search domains (has {len(searches)})")
    if len(" ".join(searches)) > MAX_SEARCH_CHARS:
        raise InvalidInput(f"{path}.searches: at most {MAX_SEARCH_CHARS} characters in all")
    options = tuple(_option(f"{path}.options[{i}]", v) for i, v in enumerate(_list(path, config, "options")))
    hostname = _label(field_path, spec, "hostname")
    subdomain = _label(field_path, spec, "subdomain")
    return PodDns(policy, nameservers, searches, options, hostname, subdomain)


def _list(path: str, config: dict, key: str) -> list:
    value = config.get(key) or []
    if not isinstance(value, list):
        raise InvalidInput(f"{path}.{key} must be a list")
    return value


def _nameserver(path: str, value: object) -> str:
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise InvalidInput(f"{path} {value!r} is not an IPv4 address") from None


def _search(path: str, value: object) -> str:
    text = value[:-1] if isinstance(value, str) and value.endswith(".") else value
    if not isinstance(text, str) or not names.is_subdomain(text):
        raise InvalidInput(f"{path} {value!r} must be a DNS-1123 subdomain (e.g. my.dns.search.suffix)")
    return text


def _option(path: str, value: object) -> tuple[str, str | None]:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"].strip():
        raise InvalidInput(f"{path}.name is required (e.g. {{name: ndots, value: \"2\"}})")
    name = value["name"]
    if any(c.isspace() or c == ":" for c in name):
        raise InvalidInput(f"{path}.name {name!r} must not contain spaces or ':'")
    option_value = value.get("value")
    if option_value is None:
        return name, None
    if not isinstance(option_value, (str, int)) or isinstance(option_value, bool) or any(
            c.isspace() for c in str(option_value)):
        raise InvalidInput(f"{path}.value {option_value!r} must be a string without spaces")
    return name, str(option_value)


def _label(field_path: str, spec: dict, key: str) -> str | None:
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not names.is_label(value):
        raise InvalidInput(f"{field_path}.{key} {value!r} must be a DNS-1123 label "
                           "(at most 63 lower case alphanumerics or '-')")
    return value
