"""Every name overlaynet shows to the kernel or to a command line, and the rules for names.

This module owns:
- validation of user-given names (DNS-1123 labels and subdomains, as Kubernetes checks them);
- the suffixes of generated object names (a Deployment's pods, a Service's EndpointSlices);
- the derivation of every kernel-visible name from the cluster's name and the object's name:
  network namespaces (at most 255 characters: each is a file under /run/netns, NAME_MAX),
  interface names (at most 15 characters, IFNAMSIZ - 1) and MAC addresses. A derived name
  is checked where it is derived, so a name the kernel would refuse is an ``InvalidName``
  naming the object before anything is created, never an error from the kernel half-way.

Network namespaces carry the cluster's name and their role, so ``ip netns list`` reads as a
map of the cluster and no two clusters (or roles) can collide:

    <cluster>.underlay                 the node network (one bridge)
    <cluster>.node.<node>              a node
    <cluster>.pod.<namespace>.<pod>    a pod
    <cluster>.external                 a client on the node network outside the cluster

Interfaces live inside those namespaces, so their names only need to be unique within one
namespace; they are derived deterministically so that a later command (or ``down`` after a
crash) finds them again without having to ask anyone.
"""

from __future__ import annotations

import hashlib
import re

from overlaynet.errors import InvalidName, invalid

IFNAME_MAX = 15  # IFNAMSIZ (16) minus the terminating NUL
NETNS_NAME_MAX = 255  # a named network namespace is a file under /run/netns: NAME_MAX
DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
CLUSTER_NAME_MAX = 32

# kube-controller-manager's "safe" alphabet for generated name suffixes (no vowels, no 0/1/3).
GENERATED_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

UNDERLAY_BRIDGE = "underlay0"
NODE_UPLINK = "eth0"
POD_INTERFACE = "eth0"


def is_label(name: str) -> bool:
    """``name`` is a DNS-1123 label: at most 63 lower case alphanumerics or '-', alphanumeric at both ends."""
    return len(name) <= DNS1123_LABEL_MAX and bool(_LABEL.fullmatch(name))


def is_subdomain(name: str) -> bool:
    """``name`` is a DNS-1123 subdomain: labels joined by dots, at most 253 characters."""
    return 0 < len(name) <= DNS1123_SUBDOMAIN_MAX and all(is_label(part) for part in name.split("."))


def check_label(kind: str, name: str, field: str = "name", max_length: int = DNS1123_LABEL_MAX) -> str:
    """Return ``name`` if it is a DNS-1123 label (RFC 1123, as Kubernetes checks namespaces)."""
    if not isinstance(name, str) or not name:
        raise invalid(kind, str(name), f"{field} must be a non-empty string")
    if len(name) > max_length:
        raise invalid(kind, name, f"{field} must be at most {max_length} characters (has {len(name)})")
    if not _LABEL.fullmatch(name):
        raise invalid(
            kind, name,
            f"{field} must consist of lower case alphanumeric characters or '-', "
            "and must start and end with an alphanumeric character (DNS-1123 label)",
        )
    return name


def check_subdomain(kind: str, name: str, field: str = "name") -> str:
    """Return ``name`` if it is a DNS-1123 subdomain (as Kubernetes checks pod names)."""
    if not isinstance(name, str) or not name:
        raise invalid(kind, str(name), f"{field} must be a non-empty string")
    if len(name) > DNS1123_SUBDOMAIN_MAX:
        raise invalid(kind, name, f"{field} must be at most {DNS1123_SUBDOMAIN_MAX} characters")
    if not all(_LABEL.fullmatch(part) for part in name.split(".")):
        raise invalid(
            kind, name,
            f"{field} must consist of lower case alphanumeric characters, '-' or '.', "
            "and must start and end with an alphanumeric character (DNS-1123 subdomain)",
        )
    return name


def check_cluster_name(name: str) -> str:
    return check_label("cluster", name, max_length=CLUSTER_NAME_MAX)


def check_ifname(name: str) -> str:
    """Refuse an interface name the kernel would reject or truncate."""
    if len(name) > IFNAME_MAX or not _IFNAME.fullmatch(name):
        raise InvalidName(f"interface name {name!r} is not a valid Linux interface name (<= {IFNAME_MAX} chars)")
    return name


def check_netns_name(name: str) -> str:
    """Refuse a name ``ip netns`` could not give a namespace (a file in /run/netns)."""
    if name in ("", ".", "..") or "/" in name or "\0" in name or len(name.encode()) > NETNS_NAME_MAX:
        raise InvalidName(f'network namespace name "{name}" is not valid: 1-{NETNS_NAME_MAX} characters, '
                          'no "/" and not "." or ".."')
    return name


def _checked_netns(kind: str, name: str, netns: str) -> str:
    """``netns`` if the kernel can name a namespace so; else an error that names the object."""
    length = len(netns.encode())
    if length > NETNS_NAME_MAX:
        raise InvalidName(f'{kind} "{name}": the network namespace name "{netns}" is {length} characters, '
                          f"over the kernel's {NETNS_NAME_MAX}")
    return netns


def generated_suffix(seed: str, length: int) -> str:
    """``length`` characters of the generated-name alphabet, as the controllers append to a
    ReplicaSet's pods or a Service's EndpointSlices; derived from ``seed``, so reproducible
    where the API server's are random."""
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(GENERATED_NAME_ALPHABET[b % len(GENERATED_NAME_ALPHABET)] for b in digest[:length])


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def underlay_netns(cluster: str) -> str:
    return _checked_netns("cluster", cluster, f"{cluster}.underlay")


def external_netns(cluster: str) -> str:
    return _checked_netns("cluster", cluster, f"{cluster}.external")


EXTERNAL_PORT = "external"  # its uplink's name on the underlay bridge (node names never clash: nodes are
                            # named after themselves, and a node called "external" gets a hashed name)


def node_netns(cluster: str, node: str) -> str:
    return _checked_netns("node", node, f"{cluster}.node.{node}")


def pod_netns(cluster: str, namespace: str, pod: str) -> str:
    """A pod's namespace; the one derived name that valid input can push over the limit (a
    253-character pod name, or a Deployment's pod names, in a 63-character namespace)."""
    return _checked_netns("pod", f"{namespace}/{pod}", f"{cluster}.pod.{namespace}.{pod}")


def cluster_netns_prefix(cluster: str) -> str:
    """Every namespace of ``cluster`` starts with this (and no other cluster's does)."""
    return f"{cluster}."


def node_underlay_port(node: str) -> str:
    """The underlay side of a node's ``eth0``: the node's name where it fits, else name + hash."""
    if len(node) <= IFNAME_MAX and node not in (UNDERLAY_BRIDGE, EXTERNAL_PORT):
        return check_ifname(node)
    return check_ifname(f"{node[:9]}-{_digest('node', node)[:5]}")


def pod_host_veth(key: str) -> str:
    """The node side of a pod's veth pair: ``veth`` + 8 hex, like the CNI bridge plugin's."""
    return check_ifname("veth" + _digest("pod", key)[:8])


def vxlan_device(vni: int) -> str:
    """Flannel names its VXLAN device ``flannel.<VNI>``."""
    return check_ifname(f"flannel.{vni}")


def derived_mac(*parts: str) -> str:
    """A stable, locally administered unicast MAC derived from ``parts``."""
    raw = bytearray(bytes.fromhex(_digest("mac", *parts)[:12]))
    raw[0] = (raw[0] | 0x02) & 0xFE
    return ":".join(f"{b:02x}" for b in raw)
