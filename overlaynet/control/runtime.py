"""The seams between the control plane and what it drives: the kernel, iptables, BIRD, the agent.

``ClusterManager`` and the node components it calls (``overlaynet.node``) reach side effects
only through the small interfaces here, passed in: ``Runtime`` (namespaces and plans, the
CNI calls, the agent process, the host-wide limits) with ``Runtime.iptables`` (kube-proxy's
loads) and ``Runtime.bird`` (the BGP daemons and their files). ``HostRuntime`` is the real
one, over ``overlaynet.kernel`` and ``overlaynet.agent.client``; ``overlaynet.control.offline``
is one that builds nothing (``overlaynet render``), and the tests have fakes of their own.
This module decides nothing: it only forwards.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from typing import Protocol

from overlaynet.agent.client import AgentClient, start_agent, stop_agent
from overlaynet.datapath.plan import Plan
from overlaynet.errors import OverlaynetError
from overlaynet.kernel import apply as kernel_apply
from overlaynet.kernel import bird as kernel_bird
from overlaynet.kernel import host, iptables, netns, observe
from overlaynet.kernel.bird import MeshReport
from overlaynet.node import kubelet
from overlaynet.proxy.render import Jump

__all__ = ["Agent", "Bird", "HostBird", "HostIptables", "HostRuntime", "Iptables", "MeshReport", "Runtime"]


class Agent(Protocol):
    """The cluster's agent as the kubelet uses it: what each pod or node serves."""

    def serve(self, key: str, netns: str, hostname: str, ports: list[tuple[int, str]],
              health: dict | None = None) -> dict: ...

    def unserve(self, key: str) -> bool: ...


class Iptables(Protocol):
    """kube-proxy's access to one node's tables."""

    def backend(self) -> str: ...

    def chains(self, netns: str, backend: str, table: str) -> list[str]: ...

    def ensure_jumps(self, netns: str, jumps: Iterable[Jump], backend: str) -> list[Jump]: ...

    def restore(self, netns: str, payload: str, backend: str) -> None:
        """Load ``payload`` with ``iptables-restore --noflush``."""


class Bird(Protocol):
    """The BIRD daemons of a BGP mesh, their configuration files and the routes they learned."""

    def write_config(self, path: str, text: str) -> bool:
        """Write ``text`` to ``path`` (its directory made); False if it held ``text`` already."""

    def running_pid(self, pid_path: str) -> int | None: ...

    def start(self, netns: str, conf_path: str, ctl_path: str, pid_path: str) -> None: ...

    def reconfigure(self, ctl_path: str) -> None: ...

    def stop(self, pid_path: str) -> None: ...

    def learned_routes(self, netns: str) -> set[str]:
        """The destinations of the routes BIRD installed in ``netns``."""

    def sessions(self, ctl_path: str) -> list[dict]: ...

    def wait_established(self, ctl_paths: Mapping[str, str], timeout: float) -> MeshReport: ...


class Runtime(Protocol):
    """Every side effect of the control plane."""

    iptables: Iptables
    bird: Bird

    def apply(self, plan: Plan) -> None: ...

    def remove(self, plan: Plan) -> None: ...

    def delete_namespaces(self, netns_names: list[str]) -> list[str]:
        """Delete namespaces; return those the kernel still shows after waiting."""

    def cni_add(self, state_dir: str, cluster: str,
                sandboxes: list[kubelet.Sandbox]) -> dict[kubelet.Sandbox, dict | OverlaynetError]: ...

    def cni_delete(self, state_dir: str, cluster: str, sandboxes: list[kubelet.Sandbox]) -> None: ...

    def write_conflist(self, paths: kubelet.NodePaths, conflist: dict) -> None: ...

    def remove_path(self, path: str) -> None:
        """Remove a file or a directory tree; gone already is fine."""

    def start_agent(self, cluster: str, socket_path: str, log_path: str) -> int: ...

    def stop_agent(self, cluster: str, socket_path: str) -> None: ...

    def agent(self, cluster: str, socket_path: str) -> Agent: ...

    def host_limits(self) -> dict[str, int]: ...

    def raise_host_limits(self) -> None: ...

    def restore_host_limits(self, originals: dict[str, int]) -> None: ...


class HostIptables:
    def backend(self) -> str:
        return iptables.backend()

    def chains(self, netns: str, backend: str, table: str) -> list[str]:
        return iptables.chains(netns, backend, table)

    def ensure_jumps(self, netns: str, jumps: Iterable[Jump], backend: str) -> list[Jump]:
        return iptables.ensure_jumps(netns, jumps, backend)

    def restore(self, netns: str, payload: str, backend: str) -> None:
        iptables.restore(netns, payload, backend)


class HostBird:
    def write_config(self, path: str, text: str) -> bool:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                if handle.read() == text:
                    return False
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(path + ".tmp", path)
        return True

    def running_pid(self, pid_path: str) -> int | None:
        return kernel_bird.running_pid(pid_path)

    def start(self, netns: str, conf_path: str, ctl_path: str, pid_path: str) -> None:
        kernel_bird.start_bird(netns, conf_path, ctl_path, pid_path)

    def reconfigure(self, ctl_path: str) -> None:
        kernel_bird.reconfigure(ctl_path)

    def stop(self, pid_path: str) -> None:
        kernel_bird.stop_bird(pid_path)

    def learned_routes(self, netns: str) -> set[str]:
        return {r["dst"] for r in observe.observe_routes(netns) if r["proto"] == "bird"}

    def sessions(self, ctl_path: str) -> list[dict]:
        return kernel_bird.sessions(ctl_path)

    def wait_established(self, ctl_paths: Mapping[str, str], timeout: float) -> MeshReport:
        return kernel_bird.wait_established(ctl_paths, timeout)


class HostRuntime:
    """The real collaborators: the kernel of this host and the cluster's agent process."""

    def __init__(self) -> None:
        self.iptables: Iptables = HostIptables()
        self.bird: Bird = HostBird()

    def apply(self, plan: Plan) -> None:
        kernel_apply.apply(plan)

    def remove(self, plan: Plan) -> None:
        kernel_apply.remove(plan)

    def delete_namespaces(self, netns_names: list[str]) -> list[str]:
        for name in netns_names:
            netns.delete(name)
        return netns.wait_gone(netns_names)

    def cni_add(self, state_dir: str, cluster: str,
                sandboxes: list[kubelet.Sandbox]) -> dict[kubelet.Sandbox, dict | OverlaynetError]:
        return kubelet.add_all(state_dir, cluster, sandboxes)

    def cni_delete(self, state_dir: str, cluster: str, sandboxes: list[kubelet.Sandbox]) -> None:
        kubelet.delete_all(state_dir, cluster, sandboxes)

    def write_conflist(self, paths: kubelet.NodePaths, conflist: dict) -> None:
        kubelet.write_conflist(paths, conflist)

    def remove_path(self, path: str) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)

    def start_agent(self, cluster: str, socket_path: str, log_path: str) -> int:
        return start_agent(cluster, socket_path, log_path)

    def stop_agent(self, cluster: str, socket_path: str) -> None:
        stop_agent(cluster, socket_path)

    def agent(self, cluster: str, socket_path: str) -> Agent:
        return AgentClient(socket_path, cluster=cluster)

    def host_limits(self) -> dict[str, int]:
        return host.current_limits()

    def raise_host_limits(self) -> None:
        host.raise_limits()

    def restore_host_limits(self, originals: dict[str, int]) -> None:
        host.restore(originals)
