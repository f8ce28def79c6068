"""A main plugin's network configuration, parsed and checked (pure).

The keys (besides the CNI ones): ``ipam`` (required, delegated), ``mtu`` (default: the mode's
pod MTU), ``dns`` (returned as is), ``agentSocket`` (``skel``'s thin path); ``bridge`` (default:
the mode's) and ``hairpinMode`` (default true) for a mode that bridges its pods; and the
``overlaynet`` object ``{"cluster": <Cluster document>, "node": {"name", "ip", "podCIDR",
"annotations", "netns", "blocks", "borrowed"}}`` (``podCIDR`` required by a mode whose pods
take their addresses from it, ``IPAM_HOST_LOCAL``). The mode comes from the Cluster document
and must be the one whose plugin was invoked.

What it never does: touch the kernel or the IPAM plugin; every problem is a ``CniError``
naming the key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from overlaynet.api import model
from overlaynet.cni import spec
from overlaynet.cni.spec import DNS, Record, Result
from overlaynet.datapath.modes import IPAM_HOST_LOCAL, Mode, PluginOptions, get_mode
from overlaynet.datapath.topology import NodeInfo
from overlaynet.errors import CniError, OverlaynetError


class MainConfig(Record):
    """A main plugin's configuration: ``network``, ``spec`` (``model.ClusterSpec``), ``mode``
    (its ``modes.Mode``), ``node`` (``topology.NodeInfo``), ``node_netns``, ``options``
    (``modes.PluginOptions``), ``dns``."""

    __slots__ = ("network", "spec", "mode", "node", "node_netns", "options", "dns")

    network: str
    spec: model.ClusterSpec
    mode: Mode
    node: NodeInfo
    node_netns: str | None
    options: PluginOptions
    dns: DNS | None


def _unsupported(key: str, value: object, why: str) -> CniError:
    return CniError(spec.ERR_UNSUPPORTED_FIELD, f"{key} {value!r}: {why}")


def parse_main_config(plugin: str, conf: Mapping) -> MainConfig:
    """The main plugin ``plugin``'s configuration, every field checked; the error names it."""
    network = conf["name"]
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str) or not ipam["type"]:
        raise CniError(spec.ERR_INVALID_CONFIG, f'network "{network}": ipam with a type is required')
    top = conf.get("overlaynet")
    if not isinstance(top, dict) or not isinstance(top.get("cluster"), dict) or not isinstance(top.get("node"), dict):
        raise CniError(spec.ERR_INVALID_CONFIG,
                       f'network "{network}": the overlaynet object with cluster (a Cluster document) '
                       "and node is required")
    try:
        cluster = model.spec_from_document(top["cluster"])
    except OverlaynetError as exc:
        raise CniError(spec.ERR_INVALID_CONFIG, f"overlaynet.cluster: {exc}") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise CniError(spec.ERR_INVALID_CONFIG,
                       f"overlaynet.cluster is not a Cluster document: missing {exc}") from None
    mode = get_mode(cluster.cni)
    if mode.plugin_type != plugin:
        raise _unsupported("overlaynet.cluster.spec.cni", cluster.cni,
                           f"{plugin} does not wire that mode (its plugin is {mode.plugin_type})")
    node_doc = top["node"]
    name = node_doc.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(spec.ERR_INVALID_CONFIG, "overlaynet.node.name is required")
    try:
        ip = ipaddress.IPv4Address(node_doc.get("ip"))
    except ValueError:
        raise CniError(spec.ERR_INVALID_CONFIG,
                       f"overlaynet.node.ip {node_doc.get('ip')!r} is not an IPv4 address") from None
    pod_cidr = None
    if node_doc.get("podCIDR"):
        try:
            pod_cidr = ipaddress.IPv4Network(node_doc["podCIDR"])
        except ValueError:
            raise CniError(spec.ERR_INVALID_CONFIG,
                           f"overlaynet.node.podCIDR {node_doc['podCIDR']!r} is not a CIDR") from None
    elif mode.ipam == IPAM_HOST_LOCAL:
        raise CniError(spec.ERR_INVALID_CONFIG, f"overlaynet.node.podCIDR is required by the {mode.name} mode")
    annotations = node_doc.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise CniError(spec.ERR_INVALID_CONFIG, "overlaynet.node.annotations must be an object of strings")
    try:
        blocks = tuple(ipaddress.IPv4Network(b) for b in node_doc.get("blocks") or ())
        borrowed = tuple(ipaddress.IPv4Address(b) for b in node_doc.get("borrowed") or ())
    except ValueError as exc:
        raise CniError(spec.ERR_INVALID_CONFIG, f"overlaynet.node: {exc}") from None
    node = NodeInfo(name=name, ip=ip, pod_cidr=pod_cidr,
                    annotations=tuple(sorted((str(k), str(v)) for k, v in annotations.items())),
                    blocks=blocks, borrowed=borrowed)
    node_netns = node_doc.get("netns") or None
    if node_netns is not None and not isinstance(node_netns, str):
        raise CniError(spec.ERR_INVALID_CONFIG, "overlaynet.node.netns must be a namespace name or path")
    mtu = conf.get("mtu")
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535):
        raise _unsupported("mtu", mtu, "must be a whole number 68-65535")
    bridge = conf.get("bridge")
    if bridge is not None and (not isinstance(bridge, str) or spec.ifname_problem(bridge)):
        why = spec.ifname_problem(bridge) if isinstance(bridge, str) else "must be a name"
        raise _unsupported("bridge", bridge, why or "")
    hairpin = conf.get("hairpinMode", True)
    if not isinstance(hairpin, bool):
        raise _unsupported("hairpinMode", hairpin, "must be true or false")
    dns = None
    if isinstance(conf.get("dns"), dict) and conf["dns"]:
        dns = Result.from_dict({"dns": conf["dns"]}, "dns").dns
    return MainConfig(network, cluster, mode, node, node_netns, PluginOptions(mtu, bridge, hairpin), dns)
