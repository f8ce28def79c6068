"""The kubelet's network part: each node's CNI configuration, and the CNI calls for its pods.

As on a real node, every node has its own configuration directory holding one network
configuration list (``/etc/cni/net.d/10-overlaynet.conflist`` there, ``<state>/<cluster>.cni/
<node>/net.d/`` here), and the sandbox of a pod (its network namespace) is created by the
runtime before the plugins run and deleted after DEL. The plugins themselves are executed
exactly as containerd executes them, by ``overlaynet.cni.runtime`` inside the node's
namespace. This module owns the paths and the rendering of those conflists (pure) and the
ADD/DEL calls for a batch of pods; it never plans interfaces or addresses itself (the
plugins do, through the modes).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from overlaynet import names
from overlaynet.api.model import ClusterSpec
from overlaynet.cni import launch
from overlaynet.datapath.modes import get_mode
from overlaynet.datapath.topology import internal_ip
from overlaynet.errors import InvalidInput, OverlaynetError

if TYPE_CHECKING:
    from overlaynet.cni.runtime import CniRuntime

NETWORK_NAME = "overlaynet"
CNI_VERSION = "1.0.0"
CONFLIST_NAME = "10-overlaynet.conflist"
# After ours, where Debian's containernetworking-plugins and most distributions put theirs.
SYSTEM_CNI_PATH = ["/usr/lib/cni", "/opt/cni/bin"]
PARALLEL_ADDS = 8  # like a kubelet starting several sandboxes at once (200 pods: 1.6-1.7 s with 4, 1.3-1.6 s with 8)


def cni_path() -> list[str]:
    """Where plugins are looked for: ``$OVERLAYNET_CNI_PATH`` (colon-separated) first, like
    containerd's ``bin_dir``, then ours — the compiled front when it is built — and the usual
    system directories."""
    extra = [d for d in os.environ.get("OVERLAYNET_CNI_PATH", "").split(":") if d]
    compiled = launch.compiled_plugin_dir()
    return [*extra, *([compiled] if compiled else []), launch.ensure_plugin_dir(), *SYSTEM_CNI_PATH]


@dataclass(frozen=True)
class NodePaths:
    conf_dir: str
    cache_dir: str
    data_dir: str

    @property
    def conflist(self) -> str:
        return os.path.join(self.conf_dir, CONFLIST_NAME)


def cni_root(state_dir: str, cluster: str) -> str:
    """Everything the CNI layer keeps on disk for one cluster (removed by ``down``)."""
    return os.path.join(state_dir, f"{cluster}.cni")


def node_paths(state_dir: str, cluster: str, node: str) -> NodePaths:
    base = os.path.join(cni_root(state_dir, cluster), node)
    return NodePaths(os.path.join(base, "net.d"), os.path.join(base, "cache"), os.path.join(base, "networks"))


def _node_section(spec: ClusterSpec, node: dict) -> dict:
    meta = node["metadata"]
    return {
        "name": meta["name"],
        "ip": internal_ip(node),
        "podCIDR": node["spec"].get("podCIDR"),
        "annotations": meta.get("annotations", {}),
        "netns": names.node_netns(spec.name, meta["name"]),
    }


def render_conflist(spec: ClusterSpec, node: dict, state_dir: str, agent_socket: str | None) -> dict:
    """The network configuration list a node's kubelet uses for our CNI modes (pure): the
    mode's entry, with the agent's socket (``skel``'s thin path) and the ``overlaynet`` object
    (the Cluster document, hence the mode, and the node) the plugin skeleton plans from."""
    name = node["metadata"]["name"]
    paths = node_paths(state_dir, spec.name, name)
    section = {"cluster": spec.to_document(), "node": _node_section(spec, node)}
    plugin = get_mode(spec.cni).render_conflist_entry(spec, name, ipaddress.IPv4Network(node["spec"]["podCIDR"]),
                                                      state_dir, paths.data_dir)
    if agent_socket:
        plugin["agentSocket"] = agent_socket
    plugin["overlaynet"] = section
    return {"cniVersion": CNI_VERSION, "name": NETWORK_NAME, "plugins": [plugin]}


def load_user_conflist(path: str) -> dict:
    """A conflist of the user's (``cniConfig``), used as is for every node."""
    try:
        with open(path, encoding="utf-8") as handle:
            conflist = json.load(handle)
    except OSError as exc:
        raise InvalidInput(f'cniConfig "{path}": cannot read: {exc.strerror}') from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f'cniConfig "{path}": not JSON: {exc.msg} at line {exc.lineno}') from None
    if not isinstance(conflist, dict) or not isinstance(conflist.get("plugins"), list) or not conflist["plugins"]:
        raise InvalidInput(f'cniConfig "{path}": a network configuration list needs a non-empty "plugins" list')
    return conflist


def write_conflist(paths: NodePaths, conflist: dict) -> None:
    for directory in (paths.conf_dir, paths.cache_dir, paths.data_dir):
        os.makedirs(directory, mode=0o755, exist_ok=True)
    temporary = paths.conflist + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(conflist, handle, indent=2)
    os.replace(temporary, paths.conflist)


def read_conflist(paths: NodePaths) -> dict:
    with open(paths.conflist, encoding="utf-8") as handle:
        return json.load(handle)


def new_container_id() -> str:
    """A sandbox id as containerd makes them: 64 hex digits."""
    return secrets.token_hex(32)


def cni_args(namespace: str, pod: str, container_id: str) -> dict[str, str]:
    """What Kubernetes runtimes put in CNI_ARGS (cni.md §7)."""
    return {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": namespace, "K8S_POD_NAME": pod,
            "K8S_POD_INFRA_CONTAINER_ID": container_id}


@dataclass(frozen=True)
class Sandbox:
    """One pod's CNI attachment: who, where, and with which id."""

    namespace: str
    name: str
    node: str
    netns_path: str
    container_id: str
    ifname: str = names.POD_INTERFACE


def _runtime(paths: NodePaths, node_netns: str) -> CniRuntime:
    # Loaded on the first CNI call: the runtime and the CNI types would cost every reading
    # command (`get` imports the kubelet through the manager) some 40 ms.
    from overlaynet.cni.runtime import CniRuntime

    return CniRuntime(read_conflist(paths), cni_path(), paths.cache_dir, exec_netns=f"/run/netns/{node_netns}")


def _node_runtimes(state_dir: str, cluster: str, nodes: set[str]) -> dict[str, CniRuntime]:
    """One CNI runtime per node of a batch: its conflist read once, not once per pod."""
    return {node: _runtime(node_paths(state_dir, cluster, node), names.node_netns(cluster, node)) for node in nodes}


def add_all(state_dir: str, cluster: str, sandboxes: list[Sandbox],
            make_netns: Callable[[Sandbox], None]) -> dict[Sandbox, dict | OverlaynetError]:
    """For every sandbox, several at once, what a container runtime's RunPodSandbox does for
    the network: ``make_netns`` makes its namespace, then CNI ADD. Each outcome is a result or
    the error (a namespace that could not be made gets no ADD)."""

    runtimes = _node_runtimes(state_dir, cluster, {s.node for s in sandboxes})

    def add(sandbox: Sandbox) -> dict | OverlaynetError:
        try:  # a failed ADD is followed by DEL, as runtimes do (cni.md §4)
            make_netns(sandbox)
            return runtimes[sandbox.node].add(sandbox.container_id, sandbox.netns_path, sandbox.ifname,
                               cni_args(sandbox.namespace, sandbox.name, sandbox.container_id), cleanup=True)
        except OverlaynetError as error:
            return error

    with ThreadPoolExecutor(max_workers=PARALLEL_ADDS) as pool:
        return dict(zip(sandboxes, pool.map(add, sandboxes)))


def delete_all(state_dir: str, cluster: str, sandboxes: list[Sandbox]) -> None:
    """CNI DEL for every sandbox (idempotent; a node whose config is gone has nothing left)."""

    runtimes = _node_runtimes(state_dir, cluster, {s.node for s in sandboxes
                                                   if os.path.exists(node_paths(state_dir, cluster, s.node).conflist)})

    def delete(sandbox: Sandbox) -> None:
        if sandbox.node in runtimes:
            runtimes[sandbox.node].delete(sandbox.container_id, sandbox.netns_path, sandbox.ifname,
                                          cni_args(sandbox.namespace, sandbox.name, sandbox.container_id))

    with ThreadPoolExecutor(max_workers=PARALLEL_ADDS) as pool:
        list(pool.map(delete, sandboxes))


def pod_ip(result: dict) -> str:
    """The sandbox interface's IPv4 address from a CNI result."""
    for entry in result.get("ips", []):
        address = entry["address"].split("/")[0]
        if ":" not in address:
            return address
    raise InvalidInput("the CNI result has no IPv4 address")


def cached_result(state_dir: str, cluster: str, node: str, container_id: str, ifname: str) -> dict | None:
    """The final ADD result libcni cached for an attachment (``describe pod`` shows it)."""
    paths = node_paths(state_dir, cluster, node)
    try:
        network = read_conflist(paths)["name"]
        path = os.path.join(paths.cache_dir, "results", f"{network}-{container_id}-{ifname}")
        with open(path, encoding="utf-8") as handle:
            cached = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return None
    return cached.get("result", cached)
