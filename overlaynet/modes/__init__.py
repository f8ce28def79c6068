"""CNI modes: each one a module behind the small ``Mode`` interface, found by name here.

A mode plans (purely) what its CNI and its node agent would put in the kernel:
- ``node_annotations``: the backend data a node publishes when it joins (Flannel's VTEP MAC);
- ``plan_node``: the devices and addresses of one node beyond the common base;
- ``plan_peer``: what one node needs to reach another node's pod CIDR;
- ``plan_pod``: a pod's namespace and its attachment to the node;
- ``pod_mtu``: the MTU pods get.
Adding a mode is adding a module and a line in ``_MODES``; nothing else in the tree changes.
"""

from __future__ import annotations

from typing import Protocol

from overlaynet.errors import invalid
from overlaynet.model import ClusterSpec
from overlaynet.plan import Plan
from overlaynet.topology import NodeInfo, PodInfo


class Mode(Protocol):
    name: str
    description: str

    def node_annotations(self, spec: ClusterSpec, node: str, node_ip: str) -> dict[str, str]: ...

    def pod_mtu(self, spec: ClusterSpec) -> int: ...

    def plan_node(self, spec: ClusterSpec, node: NodeInfo) -> Plan: ...

    def plan_peer(self, spec: ClusterSpec, node: NodeInfo, peer: NodeInfo) -> Plan: ...

    def plan_pod(self, spec: ClusterSpec, node: NodeInfo, pod: PodInfo) -> Plan: ...


# name -> (module, aliases)
_MODES = {
    "flannel": ("overlaynet.modes.flannel", ("vxlan",)),
    "calico": ("overlaynet.modes.calico", ("routed",)),
}


def canonical_mode(cluster: str, requested: str) -> str:
    for name, (_, aliases) in _MODES.items():
        if requested == name or requested in aliases:
            return name
    known = ", ".join(f"{n} ({'/'.join(a)})" if a else n for n, (_, a) in _MODES.items())
    raise invalid("cluster", cluster, f'cni "{requested}" is not a known CNI mode (known: {known})')


def get_mode(name: str) -> Mode:
    import importlib

    module_name, _ = _MODES[name]
    return importlib.import_module(module_name).MODE
