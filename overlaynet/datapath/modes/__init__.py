"""CNI modes: each one a module behind the closed ``Mode`` interface, found by name here.

A mode is everything about a cluster's pod network that differs between Flannel-like,
Calico-like or any other wiring, and nothing outside this package asks which mode it is: the
control plane, the kubelet, the CNI plugin skeleton (``overlaynet.cni.main_plugin``), ``render``
and the CLI hold a ``Mode`` and call its members. A mode is pure: it plans (``plan_*``),
renders (``render_*``) and judges observed state handed to it; it never touches the kernel,
the store or the disk, and never imports pyroute2 or spawns a process.

How a mode is found, in every process alike (the CLI, the agent, a standalone CNI plugin):
the Cluster document's ``cni`` names it, and ``get_mode`` resolves that name to the ``MODE``
object of a module. Built-in modes are listed in ``_BUILTIN`` with their aliases. Any other
mode is named by its module's import path (``cni: mypackage.hostgw``): the name *is* the
registration. A ``register_mode()`` call would be known only to the process that made it, not
to the agent or to a plugin process started later; a path in the document is known to all of
them, as the conflist each node gets carries the Cluster document, hence the mode, to the
plugin that wires the pods (importing what the document names is trusting it as far as a
conflist is trusted when it names an executable). A mode
names its main plugin's executable (``plugin_type``); every such executable is the same thin
launcher of the one skeleton (``skel.main(<its type>)``), which checks that the mode in the
document is the one that executable wires. The tests register a host-gw mode this way
(``tests/modes/hostgw.py``, with its own three-line plugin on ``$OVERLAYNET_CNI_PATH``).

The interface, grouped by who asks:
- the Cluster document: ``check_spec`` (the mode's own rules on the ranges), ``supports_bgp``;
- ``up``: ``description``, and the ``kernel_features`` to check before anything is built;
- node IPAM and the scheduler: ``ipam`` (how pods get addresses, one of ``IPAM_KINDS``: with
  ``IPAM_BLOCKS`` the routes between nodes follow the blocks and are re-synced as pods come
  and go, and ``describe``/``get nodes -o wide`` show the blocks) and ``pod_capacity``;
- the node agent: ``node_annotations``, ``plan_node``, ``plan_peer``, ``plan_blocks``;
- the kubelet: ``plugin_type`` and ``render_conflist_entry`` (the node's conflist entry);
- the CNI plugin skeleton: ``plan_pod``, ``plan_pod_prerequisites`` and ``status_problem``,
  each given the ``PluginOptions`` of the conflist entry, whose ``mtu`` defaults to ``pod_mtu``.
"""

from __future__ import annotations

import importlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from overlaynet.errors import invalid

if TYPE_CHECKING:
    from overlaynet.api.model import ClusterSpec
    from overlaynet.datapath.plan import Plan
    from overlaynet.datapath.topology import NodeInfo, PodInfo

# The interface and its constants; the mode modules (flannel, calico, and bridge, which
# flannel's pod side is built on) are reached through get_mode, never by star-import.
__all__ = [
    "DEFAULT_MODE",
    "DEFAULT_OPTIONS",
    "IPAM_BLOCKS",
    "IPAM_HOST_LOCAL",
    "IPAM_KINDS",
    "IPAM_PLUGIN",
    "KERNEL_FEATURES",
    "KERNEL_VXLAN",
    "Mode",
    "PluginOptions",
    "canonical_mode",
    "check_cluster",
    "get_mode",
    "pod_cidr_of",
    "uses_ipam_blocks",
]

DEFAULT_MODE = "flannel"
IPAM_PLUGIN = "overlaynet-ipam"  # the IPAM plugin our conflists delegate to
IPAM_HOST_LOCAL = "host-local"  # pods take addresses from their node's pod CIDR (host-local semantics)
IPAM_BLOCKS = "blocks"  # pods take addresses from blocks of the pool that nodes claim on demand
IPAM_KINDS = (IPAM_HOST_LOCAL, IPAM_BLOCKS)  # the values of overlaynet-ipam's "mode" too
KERNEL_VXLAN = "vxlan"
KERNEL_FEATURES = {KERNEL_VXLAN: "VXLAN support (CONFIG_VXLAN)"}  # feature -> what the kernel lacks, in words


@dataclass(frozen=True)
class PluginOptions:
    """What a main plugin's conflist entry may change in its mode's pod plans, under the keys
    of the reference ``bridge`` plugin: ``mtu`` (None: the mode's pod MTU), ``bridge`` (None:
    the mode's bridge) and ``hairpinMode``. A mode uses those that apply to it."""

    mtu: int | None = None
    bridge: str | None = None
    hairpin: bool = True


DEFAULT_OPTIONS = PluginOptions()


@runtime_checkable
class Mode(Protocol):
    name: str
    description: str
    plugin_type: str  # the executable the mode's conflist entry names (a launcher of cni.plugins)
    ipam: str  # one of IPAM_KINDS
    kernel_features: tuple[str, ...]  # keys of KERNEL_FEATURES
    supports_bgp: bool  # whether the routes between nodes may be learned over BGP (``bgp: bird``)

    def check_spec(self, spec: ClusterSpec) -> None:
        """Refuse a Cluster document this mode cannot wire (``InvalidInput`` naming the field)."""

    def node_annotations(self, spec: ClusterSpec, node: str, node_ip: str) -> dict[str, str]:
        """The backend data a node publishes when it joins (Flannel's VTEP MAC)."""

    def pod_mtu(self, spec: ClusterSpec) -> int:
        """The MTU pods get."""

    def pod_capacity(self, spec: ClusterSpec, pod_cidr: ipaddress.IPv4Network) -> int:
        """How many pods a node whose pod CIDR is ``pod_cidr`` can hold (the scheduler's filter)."""

    def render_conflist_entry(self, spec: ClusterSpec, node: str, pod_cidr: ipaddress.IPv4Network,
                              state_dir: str, data_dir: str) -> dict:
        """The node's main plugin entry of its conflist: ``type`` (``plugin_type``), the mode's
        options and its ``ipam``; ``state_dir`` is the store's directory, ``data_dir`` the
        node's CNI data directory. The kubelet adds ``agentSocket`` and ``overlaynet``."""

    def plan_node(self, spec: ClusterSpec, node: NodeInfo) -> Plan:
        """The devices and addresses of one node beyond the common base."""

    def plan_peer(self, spec: ClusterSpec, node: NodeInfo, peer: NodeInfo) -> Plan:
        """What ``node`` needs to reach ``peer``'s pods."""

    def plan_blocks(self, spec: ClusterSpec, node: NodeInfo) -> Plan:
        """With ``IPAM_BLOCKS``: the routes of the node's own blocks (re-planned on every sync
        with ``plan_peer``); () for a mode whose routes do not follow blocks."""

    def plan_pod(self, spec: ClusterSpec, node: NodeInfo, pod: PodInfo,
                 options: PluginOptions = DEFAULT_OPTIONS) -> Plan:
        """A pod's attachment to the node, the main plugin's part of a CNI ADD (the sandbox
        exists already)."""

    def plan_pod_prerequisites(self, spec: ClusterSpec, node: NodeInfo, netns: str, options: PluginOptions) -> Plan:
        """What must exist in the node's ``netns`` before a pod attaches; the plugin makes it
        when missing and never undoes it."""

    def status_problem(self, options: PluginOptions, links: Sequence[Mapping],
                       routes: Sequence[Mapping]) -> tuple[str, str] | None:
        """CNI STATUS: why the node cannot take pods now, as (message, details), judged from
        the node's links and routes as ``kernel.observe`` reads them; None when it can."""


_MEMBERS = tuple(Mode.__annotations__) + tuple(n for n in vars(Mode) if not n.startswith("_"))

# name -> (module, aliases)
_BUILTIN = {
    "flannel": ("overlaynet.datapath.modes.flannel", ("vxlan",)),
    "calico": ("overlaynet.datapath.modes.calico", ("routed",)),
}


def _is_module_path(name: str) -> bool:
    parts = name.split(".")
    return len(parts) > 1 and all(part.isidentifier() for part in parts)


def _import_mode(module_name: str) -> Mode:
    """The ``MODE`` of ``module_name``; ``LookupError`` saying why when there is none."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LookupError(f"cannot import {module_name}: {exc}") from None
    mode = getattr(module, "MODE", None)
    if mode is None:
        raise LookupError(f"module {module_name} defines no MODE")
    missing = [member for member in _MEMBERS if not hasattr(mode, member)]
    if missing:
        raise LookupError(f"{module_name}.MODE is not a Mode: it has no {', '.join(missing)}")
    if mode.ipam not in IPAM_KINDS:
        raise LookupError(f"{module_name}.MODE.ipam {mode.ipam!r} is not one of {', '.join(IPAM_KINDS)}")
    unknown = [feature for feature in mode.kernel_features if feature not in KERNEL_FEATURES]
    if unknown:
        raise LookupError(f"{module_name}.MODE.kernel_features: {', '.join(map(repr, unknown))} "
                          f"not among {', '.join(KERNEL_FEATURES)}")
    return mode


def canonical_mode(cluster: str, requested: str) -> str:
    """The name a Cluster document keeps for ``requested``: a built-in's (aliases resolved) or
    the import path of a mode's module, which must provide one."""
    if not isinstance(requested, str):
        raise invalid("cluster", cluster, f"cni {requested!r} must be the name of a CNI mode (a string)")
    for name, (_, aliases) in _BUILTIN.items():
        if requested == name or requested in aliases:
            return name
    if _is_module_path(requested):
        try:
            _import_mode(requested)
        except LookupError as exc:
            raise invalid("cluster", cluster, f'cni "{requested}": {exc}') from None
        return requested
    known = ", ".join(f"{n} ({'/'.join(a)})" if a else n for n, (_, a) in _BUILTIN.items())
    raise invalid("cluster", cluster, f'cni "{requested}" is not a known CNI mode (known: {known}; '
                                      "or the import path of a module that defines MODE)")


def get_mode(name: str) -> Mode:
    """The mode of a canonical name (``ClusterSpec.cni``)."""
    module_name = _BUILTIN[name][0] if name in _BUILTIN else name
    try:
        return _import_mode(module_name)
    except LookupError as exc:
        raise invalid("cni mode", name, str(exc)) from None


def check_cluster(spec: ClusterSpec) -> None:
    """The rules between a Cluster document and its mode: BGP only where the mode supports it,
    then the mode's own (``Mode.check_spec``)."""
    mode = get_mode(spec.cni)
    if spec.bgp != "none" and not mode.supports_bgp:
        capable = " or ".join(f'cni "{name}"' for name in _BUILTIN if get_mode(name).supports_bgp)
        raise invalid("cluster", spec.name,
                      f'bgp "{spec.bgp}" needs {capable} (routes are learned over BGP only in the routed mode)')
    mode.check_spec(spec)


def pod_cidr_of(node: NodeInfo) -> ipaddress.IPv4Network:
    """The node's pod CIDR, which a mode that routes per node needs."""
    if node.pod_cidr is None:
        raise invalid("node", node.name, "has no podCIDR, which its CNI mode gives pods their addresses from")
    return node.pod_cidr


def uses_ipam_blocks(spec: ClusterSpec) -> bool:
    """Whether our blocks IPAM gives this cluster's pods their addresses: the mode's IPAM is
    ``IPAM_BLOCKS`` and no conflist of the user's (``cniConfig``) wires the pods instead. Then
    the routes between nodes follow the blocks (``overlaynet.node.routes``)."""
    return not spec.cni_config and get_mode(spec.cni).ipam == IPAM_BLOCKS
