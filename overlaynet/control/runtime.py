"""The host's side of the control plane's seams: the kernel, iptables, BIRD and the agent process.

``HostRuntime`` (with ``HostIptables`` and ``HostBird``) implements
``overlaynet.control.seams.Runtime`` over ``overlaynet.kernel``, ``overlaynet.node.kubelet``'s
CNI calls and ``overlaynet.agent.client``. It decides nothing: it only forwards. The manager
loads it on first use, so reading commands (``get``) never pay for the kernel side.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping

from overlaynet.agent.client import AgentClient, start_agent, stop_agent
from overlaynet.control.seams import Agent, Bird, Iptables
from overlaynet.datapath.plan import Netns, Plan, Step
from overlaynet.errors import OverlaynetError
from overlaynet.kernel import apply as kernel_apply
from overlaynet.kernel import bird as kernel_bird
from overlaynet.kernel import drift, host, iptables, netns, observe
from overlaynet.kernel.bird import MeshReport
from overlaynet.node import kubelet
from overlaynet.proxy.render import Jump

__all__ = ["HostBird", "HostIptables", "HostRuntime"]


class HostIptables:
    def backend(self) -> str:
        return iptables.backend()

    def chains(self, netns: str, backend: str, table: str) -> list[str]:
        return iptables.chains(netns, backend, table)

    def ensure_jumps(self, netns: str, jumps: Iterable[Jump], backend: str) -> list[Jump]:
        return iptables.ensure_jumps(netns, jumps, backend)

    def ensure_chains(self, netns: str, chains: Iterable[tuple[str, str]], backend: str) -> None:
        iptables.ensure_chains(netns, chains, backend)

    def save(self, netns: str, backend: str, table: str | None) -> str:
        return iptables.save(netns, backend, table)

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

    def missing_steps(self, plan: Plan) -> list[Step]:
        return drift.missing_steps(plan)

    def delete_namespaces(self, netns_names: list[str]) -> list[str]:
        netns.delete_all(netns_names)
        # And the throwaway namespace of a kernel probe whose `up` was killed mid-probe: it
        # belongs to no cluster's records, so this is where it goes.
        netns.sweep_throwaways("probe")
        return netns.wait_gone(netns_names)

    def cni_add(self, state_dir: str, cluster: str,
                sandboxes: list[kubelet.Sandbox]) -> dict[kubelet.Sandbox, dict | OverlaynetError]:
        def make_netns(sandbox: kubelet.Sandbox) -> None:
            kernel_apply.apply((Netns(os.path.basename(sandbox.netns_path)),))

        return kubelet.add_all(state_dir, cluster, sandboxes, make_netns)

    def cni_delete(self, state_dir: str, cluster: str, sandboxes: list[kubelet.Sandbox]) -> None:
        kubelet.delete_all(state_dir, cluster, sandboxes)

    def write_conflist(self, paths: kubelet.NodePaths, conflist: dict) -> None:
        kubelet.write_conflist(paths, conflist)

    def remove_path(self, path: str) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)

    def write_file(self, path: str, text: str) -> None:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(path + ".tmp", path)

    def host_resolv_conf(self) -> str:
        try:
            with open("/etc/resolv.conf", encoding="utf-8") as handle:
                return handle.read()
        except OSError:  # none at all: glibc then asks 127.0.0.1
            return ""

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
