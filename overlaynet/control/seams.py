"""The seams between the control plane and what it drives: the kernel, iptables, BIRD, the agent.

``ClusterManager`` and the node components it calls (``overlaynet.node``) reach side effects
only through the small interfaces here, passed in: ``Runtime`` (namespaces and plans, the
CNI calls, the agent process, the host-wide limits) with ``Runtime.iptables`` (kube-proxy's
loads) and ``Runtime.bird`` (the BGP daemons and their files). ``overlaynet.control.runtime``
holds the host's implementations, ``overlaynet.control.offline`` one that builds nothing
(``overlaynet render``); the tests have fakes of their own. Only interfaces live here, so
importing them loads no kernel code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from overlaynet.datapath.plan import Plan, Step
from overlaynet.errors import OverlaynetError
from overlaynet.node.kubelet import NodePaths, Sandbox

if TYPE_CHECKING:  # types only: importing them would load the kernel side
    from overlaynet.kernel.bird import MeshReport
    from overlaynet.proxy.render import Jump

__all__ = ["Agent", "Bird", "Iptables", "Runtime"]


class Agent(Protocol):
    """The cluster's agent as the kubelet uses it: what each pod or node serves."""

    def serve(self, key: str, netns: str, hostname: str, ports: list[tuple[int, str]],
              health: dict | None = None, dns_ports: list[tuple[int, str]] | None = None) -> dict: ...

    def unserve(self, key: str) -> bool: ...

    def dns_zone(self, domain: str, records: list[list[str]], serial: int) -> int:
        """The cluster DNS's records, for every DNS server of the agent."""

    def watch(self, namespaces: list[str]) -> list[str]:
        """Watch these namespaces for drift (the self-heal loop); return those missing."""

    def health_checks(self, key: str, checks: list[dict]) -> dict:
        """kube-proxy's health checks a served node answers (``[{"port", "namespace", "name",
        "localEndpoints"}]``), exactly these."""


class Iptables(Protocol):
    """kube-proxy's access to one node's tables."""

    def backend(self) -> str: ...

    def chains(self, netns: str, backend: str, table: str) -> list[str]: ...

    def ensure_jumps(self, netns: str, jumps: Iterable[Jump], backend: str) -> list[Jump]: ...

    def ensure_chains(self, netns: str, chains: Iterable[tuple[str, str]], backend: str) -> None:
        """``-N`` each ``(table, chain)`` that is missing."""

    def save(self, netns: str, backend: str, table: str | None) -> str:
        """``iptables-save -t <table>`` of the namespace (every table: None)."""

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

    @property
    def iptables(self) -> Iptables: ...

    @property
    def bird(self) -> Bird: ...

    def apply(self, plan: Plan) -> None: ...

    def remove(self, plan: Plan) -> None: ...

    def missing_steps(self, plan: Plan) -> list[Step]:
        """The steps of ``plan`` the kernel does not show (deleted or changed behind our back)."""

    def delete_namespaces(self, netns_names: list[str]) -> list[str]:
        """Delete namespaces; return those the kernel still shows after waiting."""

    def cni_add(self, state_dir: str, cluster: str,
                sandboxes: list[Sandbox]) -> dict[Sandbox, dict | OverlaynetError]:
        """Make each sandbox's namespace (recorded already), then CNI ADD; a result or the error each."""

    def cni_delete(self, state_dir: str, cluster: str, sandboxes: list[Sandbox]) -> None: ...

    def write_conflist(self, paths: NodePaths, conflist: dict) -> None: ...

    def remove_path(self, path: str) -> None:
        """Remove a file or a directory tree; gone already is fine."""

    def write_file(self, path: str, text: str) -> None:
        """Write ``text`` to ``path`` (its directory made), replacing it atomically."""

    def host_resolv_conf(self) -> str:
        """The host's ``/etc/resolv.conf`` (every node's: the nodes share the host's files)."""

    def start_agent(self, cluster: str, socket_path: str, log_path: str) -> int: ...

    def stop_agent(self, cluster: str, socket_path: str) -> None: ...

    def agent(self, cluster: str, socket_path: str) -> Agent: ...

    def host_limits(self) -> dict[str, int]: ...

    def raise_host_limits(self) -> None: ...

    def restore_host_limits(self, originals: dict[str, int]) -> None: ...
