"""NetworkPolicy (networking.k8s.io/v1) and Namespace (v1) documents in, validated values out (pure).

This module owns the shapes and the validation of what ``apply`` accepts for network policy:
- ``Namespace``: a name and labels; every namespace also carries the label
  ``kubernetes.io/metadata.name: <name>``, as the API server adds it (``namespace_labels``);
- ``LabelSelector``: ``matchLabels`` and ``matchExpressions`` (In, NotIn, Exists,
  DoesNotExist); an empty selector selects everything;
- ``NetworkPolicy``: ``podSelector``, ``policyTypes`` (defaulted as the API server does:
  Ingress always, Egress when egress rules are written), ingress and egress rules of peers
  (``podSelector``, ``namespaceSelector``, both in one peer, or ``ipBlock`` with ``except``)
  and ports (TCP or UDP; a number, a name, or a range with ``endPort``).

Errors name the object and the field, as the API server's validation does:
``netpol.yaml: NetworkPolicy "x": spec.ingress[0].from[1].ipBlock.except[0] "10.1.0.0/16" is not
inside cidr "10.0.0.0/16"``. What a policy *means* for a packet is ``overlaynet.policy.semantics``'s;
this module never decides it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from overlaynet import names
from overlaynet.api.objects import Where, object_namespace
from overlaynet.errors import InvalidInput

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # the API server's automatic namespace label
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
PROTOCOLS = ("TCP", "UDP")  # SCTP is refused: the test servers serve TCP and UDP only
INGRESS, EGRESS = "Ingress", "Egress"
_LABEL_NAME = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?)")


@dataclass(frozen=True)
class Requirement:
    """One ``matchExpressions`` entry."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True)
class LabelSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        """An empty selector matches every object (metav1.LabelSelector semantics)."""
        return (all(labels.get(k) == v for k, v in self.match_labels)
                and all(r.matches(labels) for r in self.match_expressions))

    def describe(self) -> str:
        """kubectl's form: ``app=web,tier in (a,b)``; ``<none>`` (all) when empty."""
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for r in self.match_expressions:
            parts.append({"In": f"{r.key} in ({','.join(r.values)})",
                          "NotIn": f"{r.key} notin ({','.join(r.values)})",
                          "Exists": r.key, "DoesNotExist": f"!{r.key}"}[r.operator])
        return ",".join(parts) or "<none> (all)"

    def to_document(self) -> dict:
        document: dict = {}
        if self.match_labels:
            document["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            document["matchExpressions"] = [
                {"key": r.key, "operator": r.operator, **({"values": list(r.values)} if r.values else {})}
                for r in self.match_expressions]
        return document


@dataclass(frozen=True)
class IPBlock:
    cidr: ipaddress.IPv4Network
    excepts: tuple[ipaddress.IPv4Network, ...] = ()

    def holds(self, ip: ipaddress.IPv4Address) -> bool:
        return ip in self.cidr and not any(ip in e for e in self.excepts)

    def to_document(self) -> dict:
        document: dict = {"cidr": str(self.cidr)}
        if self.excepts:
            document["except"] = [str(e) for e in self.excepts]
        return document


@dataclass(frozen=True)
class Peer:
    """One entry of ``from``/``to``: pods (by pod and/or namespace selector) or an ipBlock.
    A ``namespace_selector`` of None means the policy's own namespace."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    def to_document(self) -> dict:
        if self.ip_block is not None:
            return {"ipBlock": self.ip_block.to_document()}
        document = {}
        if self.pod_selector is not None:
            document["podSelector"] = self.pod_selector.to_document()
        if self.namespace_selector is not None:
            document["namespaceSelector"] = self.namespace_selector.to_document()
        return document


@dataclass(frozen=True)
class PolicyPort:
    """A ``ports`` entry: ``port`` None is every port of the protocol; a str is a named port."""

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None

    def describe(self) -> str:
        if self.port is None:
            return f"<any>/{self.protocol}"
        span = f"{self.port}-{self.end_port}" if self.end_port else str(self.port)
        return f"{span}/{self.protocol}"

    def to_document(self) -> dict:
        document: dict = {"protocol": self.protocol}
        if self.port is not None:
            document["port"] = self.port
        if self.end_port is not None:
            document["endPort"] = self.end_port
        return document


@dataclass(frozen=True)
class PolicyRule:
    """An ingress or egress rule: ``peers`` empty allows every peer, ``ports`` empty every port."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: tuple[str, ...]
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_document(self) -> dict:
        def rules(items: tuple[PolicyRule, ...], peer_field: str) -> list[dict]:
            out = []
            for rule in items:
                entry: dict = {}
                if rule.peers:
                    entry[peer_field] = [p.to_document() for p in rule.peers]
                if rule.ports:
                    entry["ports"] = [p.to_document() for p in rule.ports]
                out.append(entry)
            return out

        spec: dict = {"podSelector": self.pod_selector.to_document(), "policyTypes": list(self.policy_types)}
        if self.ingress:
            spec["ingress"] = rules(self.ingress, "from")
        if self.egress:
            spec["egress"] = rules(self.egress, "to")
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: tuple[tuple[str, str], ...] = ()

    def to_document(self) -> dict:
        return {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": self.name, "labels": namespace_labels(self.name, dict(self.labels))}}


def namespace_labels(name: str, labels: dict[str, str] | None = None) -> dict[str, str]:
    """A namespace's labels with the API server's automatic ``kubernetes.io/metadata.name``."""
    return {**(labels or {}), NAMESPACE_NAME_LABEL: name}


def check_label_key(key, field_path: str) -> str | None:
    """Why ``key`` is not a valid label key (``[prefix/]name``), or None."""
    if not isinstance(key, str) or not key:
        return f"{field_path} must be a non-empty string"
    prefix, _, name = key.rpartition("/")
    if prefix and not (len(prefix) <= names.DNS1123_SUBDOMAIN_MAX
                       and all(names.is_label(part) for part in prefix.split("."))):
        return f'{field_path} "{key}": the prefix must be a DNS-1123 subdomain'
    if len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        return (f'{field_path} "{key}": the name must be 63 characters or less, alphanumeric at both ends, '
                "with '-', '_' or '.' between")
    return None


def check_label_value(value, field_path: str) -> str | None:
    """Why ``value`` is not a valid label value, or None."""
    if not isinstance(value, str):
        return f"{field_path} {value!r} must be a string"
    if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        return (f'{field_path} "{value}" must be 63 characters or less, empty or alphanumeric at both ends, '
                "with '-', '_' or '.' between")
    return None


def parse_labels(value, where: Where, field_path: str) -> dict[str, str]:
    """A ``labels``/``matchLabels`` mapping, keys and values checked as the API server does."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise where.error(f"{field_path} must be a mapping of strings")
    labels = {}
    for key, item in value.items():
        item = "" if item is None else item
        if isinstance(item, bool | int | float):
            item = str(item).lower() if isinstance(item, bool) else str(item)
        problem = check_label_key(key, f"{field_path} key") or check_label_value(item, f"{field_path}.{key}")
        if problem:
            raise where.error(problem)
        labels[key] = item
    return labels


def parse_selector(value, where: Where, field_path: str) -> LabelSelector:
    if value is None:
        return LabelSelector()
    if not isinstance(value, dict):
        raise where.error(f"{field_path} must be a mapping (matchLabels, matchExpressions)")
    unknown = sorted(set(value) - {"matchLabels", "matchExpressions"})
    if unknown:
        raise where.error(f"{field_path}.{unknown[0]} is not a field of a label selector "
                          "(known: matchLabels, matchExpressions)")
    match_labels = parse_labels(value.get("matchLabels"), where, f"{field_path}.matchLabels")
    expressions = value.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise where.error(f"{field_path}.matchExpressions must be a list")
    requirements = []
    for index, expression in enumerate(expressions):
        path = f"{field_path}.matchExpressions[{index}]"
        if not isinstance(expression, dict):
            raise where.error(f"{path} must be a mapping (key, operator, values)")
        key = expression.get("key")
        problem = check_label_key(key, f"{path}.key")
        if problem:
            raise where.error(problem)
        operator = expression.get("operator")
        if operator not in OPERATORS:
            raise where.error(f'{path}.operator "{operator}" is not valid (valid: {", ".join(OPERATORS)})')
        values = expression.get("values") or []
        if not isinstance(values, list):
            raise where.error(f"{path}.values must be a list")
        if operator in ("In", "NotIn") and not values:
            raise where.error(f"{path}.values must be non-empty when operator is {operator}")
        if operator in ("Exists", "DoesNotExist") and values:
            raise where.error(f"{path}.values must be empty when operator is {operator}")
        for v_index, item in enumerate(values):
            problem = check_label_value(item, f"{path}.values[{v_index}]")
            if problem:
                raise where.error(problem)
        requirements.append(Requirement(str(key), operator, tuple(values)))
    return LabelSelector(tuple(sorted(match_labels.items())), tuple(requirements))


# One requirement of a selector string, as ``kubectl get -l`` takes it: ``k in (a,b)``,
# ``k notin (a)``, ``k=v`` / ``k==v`` / ``k!=v``, ``k`` (exists) and ``!k`` (does not exist).
_SELECTOR_TERM = re.compile(
    r"\s*(?:(?P<set_key>[^\s=!(),]+)\s+(?P<set_op>in|notin)\s*\((?P<set_values>[^()]*)\)"
    r"|(?P<key>[^\s=!(),]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s=!(),]*)"
    r"|(?P<bang>!)?\s*(?P<bare>[^\s=!(),]+))\s*(?:,|$)")


def parse_selector_string(text: str) -> LabelSelector:
    """A label selector in its string form (``kubectl get -l``), keys and values checked;
    ``k!=v`` and ``k notin (...)`` also match objects without ``k``, as in Kubernetes."""
    problem = f'selector "{text}"'
    match_labels: dict[str, str] = {}
    requirements = []
    position = 0
    while position < len(text):
        term = _SELECTOR_TERM.match(text, position)
        if term is None or term.end() == position:
            raise InvalidInput(f'{problem}: cannot read it from "{text[position:]}" '
                               "(use key=value, key!=value, key in (a,b), key notin (a), key or !key, "
                               "joined by commas)")
        position = term.end()
        key = term["set_key"] or term["key"] or term["bare"]
        values = ([v.strip() for v in term["set_values"].split(",")] if term["set_key"]
                  else [term["value"]] if term["key"] else [])
        why = check_label_key(key, "key") or next(
            (check_label_value(v, "value") for v in values if check_label_value(v, "value")), None)
        if why:
            raise InvalidInput(f"{problem}: {why}")
        if term["set_key"]:
            requirements.append(Requirement(key, "In" if term["set_op"] == "in" else "NotIn", tuple(values)))
        elif term["op"] in ("=", "=="):
            match_labels[key] = values[0]
        elif term["op"] == "!=":
            requirements.append(Requirement(key, "NotIn", tuple(values)))
        else:
            requirements.append(Requirement(key, "DoesNotExist" if term["bang"] else "Exists"))
    return LabelSelector(tuple(sorted(match_labels.items())), tuple(requirements))


def _network(value, where: Where, field_path: str) -> ipaddress.IPv4Network:
    if not isinstance(value, str):
        raise where.error(f"{field_path} must be a CIDR string such as 10.0.0.0/16")
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise where.error(f'{field_path} "{value}" is not a valid CIDR (host bits set, or not an address/prefix)') \
            from None
    if network.version != 4:
        raise where.error(f'{field_path} "{value}" is IPv6: overlaynet clusters are IPv4 only')
    return network


def _parse_ip_block(value, where: Where, field_path: str) -> IPBlock:
    if not isinstance(value, dict):
        raise where.error(f"{field_path} must be a mapping (cidr, except)")
    cidr = _network(value.get("cidr"), where, f"{field_path}.cidr")
    excepts = value.get("except") or []
    if not isinstance(excepts, list):
        raise where.error(f"{field_path}.except must be a list")
    parsed = []
    for index, item in enumerate(excepts):
        network = _network(item, where, f"{field_path}.except[{index}]")
        if not (network.subnet_of(cidr) and network != cidr):
            raise where.error(f'{field_path}.except[{index}] "{item}" must be strictly inside cidr "{cidr}"')
        parsed.append(network)
    return IPBlock(cidr, tuple(parsed))


def _parse_peer(value, where: Where, field_path: str) -> Peer:
    if not isinstance(value, dict):
        raise where.error(f"{field_path} must be a mapping (podSelector, namespaceSelector or ipBlock)")
    known = {"podSelector", "namespaceSelector", "ipBlock"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise where.error(f"{field_path}.{unknown[0]} is not a field of a peer (known: {', '.join(sorted(known))})")
    if "ipBlock" in value:
        if len(value) > 1:
            raise where.error(f"{field_path}: ipBlock cannot be combined with podSelector or namespaceSelector "
                              "in one peer (write them as two peers)")
        return Peer(ip_block=_parse_ip_block(value["ipBlock"], where, f"{field_path}.ipBlock"))
    if not value:
        raise where.error(f"{field_path} must set podSelector, namespaceSelector or ipBlock")
    pod_selector = parse_selector(value["podSelector"], where, f"{field_path}.podSelector") \
        if "podSelector" in value else None
    namespace_selector = parse_selector(value["namespaceSelector"], where, f"{field_path}.namespaceSelector") \
        if "namespaceSelector" in value else None
    return Peer(pod_selector, namespace_selector)


def _parse_port(value, where: Where, field_path: str) -> PolicyPort:
    if not isinstance(value, dict):
        raise where.error(f"{field_path} must be a mapping (protocol, port, endPort)")
    protocol = value.get("protocol", "TCP")
    if protocol == "SCTP":
        raise where.error(f'{field_path}.protocol "SCTP" is not supported: overlaynet pods serve TCP and UDP only')
    if protocol not in PROTOCOLS:
        raise where.error(f'{field_path}.protocol "{protocol}" is not valid (valid: TCP, UDP, SCTP)')
    port = value.get("port")
    end_port = value.get("endPort")
    if isinstance(port, bool):
        raise where.error(f"{field_path}.port {port!r} must be a number or a port name")
    if isinstance(port, int):
        if not 1 <= port <= 65535:
            raise where.error(f"{field_path}.port {port} is out of range 1-65535")
    elif isinstance(port, str):
        if port.isdigit():
            raise where.error(f'{field_path}.port "{port}" is a number written as a string: write {port} unquoted')
        if len(port) > 15 or not names.is_label(port) or not re.search("[a-z]", port):
            raise where.error(f'{field_path}.port "{port}" must be a number or an IANA service name '
                              "(at most 15 lower case alphanumerics or '-', with a letter)")
    elif port is not None:
        raise where.error(f"{field_path}.port {port!r} must be a number or a port name")
    if end_port is not None:
        if isinstance(end_port, bool) or not isinstance(end_port, int):
            raise where.error(f"{field_path}.endPort {end_port!r} must be a number")
        if port is None or isinstance(port, str):
            raise where.error(f"{field_path}.endPort may only be set with a numeric port")
        if not port <= end_port <= 65535:
            raise where.error(f"{field_path}.endPort {end_port} must be between port {port} and 65535")
    return PolicyPort(protocol, port, end_port)


def _parse_rules(value, where: Where, field_path: str, peer_field: str) -> tuple[PolicyRule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise where.error(f"{field_path} must be a list of rules")
    rules = []
    for index, rule in enumerate(value):
        path = f"{field_path}[{index}]"
        rule = rule or {}
        if not isinstance(rule, dict):
            raise where.error(f"{path} must be a mapping ({peer_field}, ports)")
        unknown = sorted(set(rule) - {peer_field, "ports"})
        if unknown:
            raise where.error(f"{path}.{unknown[0]} is not a field of this rule (known: {peer_field}, ports)")
        peers, ports = rule.get(peer_field) or [], rule.get("ports") or []
        if not isinstance(peers, list):
            raise where.error(f"{path}.{peer_field} must be a list of peers")
        if not isinstance(ports, list):
            raise where.error(f"{path}.ports must be a list")
        rules.append(PolicyRule(
            tuple(_parse_peer(p, where, f"{path}.{peer_field}[{i}]") for i, p in enumerate(peers)),
            tuple(_parse_port(p, where, f"{path}.ports[{i}]") for i, p in enumerate(ports))))
    return tuple(rules)


def _metadata(document: dict, where: Where) -> dict:
    metadata = document.get("metadata")
    if not isinstance(metadata, dict) or not metadata.get("name"):
        raise where.error("metadata.name is required")
    return metadata


def _where(document: dict, source: str, kind: str) -> Where:
    metadata = document.get("metadata")
    return Where(source, kind, str(metadata.get("name") or "") if isinstance(metadata, dict) else "")


def parse_networkpolicy_document(document: dict, source: str, namespace: str | None = None) -> NetworkPolicy:
    where = _where(document, source, "NetworkPolicy")
    if document.get("apiVersion", "networking.k8s.io/v1") != "networking.k8s.io/v1":
        raise where.error(f'apiVersion "{document.get("apiVersion")}" is not served (use networking.k8s.io/v1)')
    metadata = _metadata(document, where)
    name = metadata["name"]
    where.check(lambda: names.check_subdomain("networkpolicy", name, "metadata.name"))
    policy_namespace = object_namespace(metadata, where, namespace)
    spec = document.get("spec")
    if not isinstance(spec, dict):
        raise where.error("spec is required (at least spec.podSelector)")
    known = {"podSelector", "policyTypes", "ingress", "egress"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise where.error(f"spec.{unknown[0]} is not a field of a NetworkPolicy (known: {', '.join(sorted(known))})")
    if "podSelector" not in spec:
        raise where.error("spec.podSelector is required ({} selects every pod of the namespace)")
    pod_selector = parse_selector(spec["podSelector"], where, "spec.podSelector")
    ingress = _parse_rules(spec.get("ingress"), where, "spec.ingress", "from")
    egress = _parse_rules(spec.get("egress"), where, "spec.egress", "to")
    types = spec.get("policyTypes")
    policy_types: tuple[str, ...]
    if types is None:  # the API server's defaulting: Egress only when egress rules are present
        policy_types = (INGRESS, EGRESS) if egress else (INGRESS,)
    else:
        if not isinstance(types, list) or not types:
            raise where.error("spec.policyTypes must be a non-empty list of Ingress and/or Egress")
        for index, item in enumerate(types):
            if item not in (INGRESS, EGRESS):
                raise where.error(f'spec.policyTypes[{index}] "{item}" is not valid (valid: Ingress, Egress)')
        if len(set(types)) != len(types):
            raise where.error("spec.policyTypes lists a type twice")
        policy_types = tuple(t for t in (INGRESS, EGRESS) if t in types)
    return NetworkPolicy(policy_namespace, name, pod_selector, policy_types, ingress, egress)


def parse_namespace_document(document: dict, source: str) -> Namespace:
    where = _where(document, source, "Namespace")
    metadata = _metadata(document, where)
    name = metadata["name"]
    where.check(lambda: names.check_label("namespace", name, "metadata.name"))
    labels = parse_labels(metadata.get("labels"), where, "metadata.labels")
    written = labels.pop(NAMESPACE_NAME_LABEL, name)
    if written != name:
        raise where.error(f'metadata.labels.{NAMESPACE_NAME_LABEL} "{written}" must be the namespace\'s name')
    return Namespace(name, tuple(sorted(labels.items())))


def parse_label_changes(arguments: list[str], kind: str, name: str) -> tuple[dict[str, str], list[str]]:
    """kubectl label's arguments: ``k=v`` sets, ``k-`` removes. Returns (set, removed)."""
    setting: dict[str, str] = {}
    removing: list[str] = []
    for argument in arguments:
        if argument.endswith("-") and "=" not in argument:
            key = argument[:-1]
            problem = check_label_key(key, "label key")
            removing.append(key)
        elif "=" in argument:
            key, _, value = argument.partition("=")
            problem = check_label_key(key, "label key") or check_label_value(value, f"label {key}")
            setting[key] = value
        else:
            problem = f'"{argument}" is neither KEY=VALUE nor KEY-'
        if problem:
            raise InvalidInput(f'{kind} "{name}": {problem}')
    if kind == "namespace" and NAMESPACE_NAME_LABEL in [*setting, *removing]:
        raise InvalidInput(f'namespace "{name}": the label {NAMESPACE_NAME_LABEL} is set by the API server')
    return setting, removing
