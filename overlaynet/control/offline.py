"""A runtime that builds nothing: the control plane without root, for ``overlaynet render``.

``OfflineRuntime`` satisfies ``overlaynet.control.seams.Runtime`` without touching the
kernel or starting a process: plans are recorded (and the namespaces they make remembered),
the agent and iptables only record what they are asked, and a BIRD "learns" at once every
route the other daemons' configurations announce. One thing is real: CNI ADD and DEL run
the IPAM plugin of the node's conflist (``overlaynet-ipam``, in this process, on the same
configuration and environment a runtime would give it), so every pod gets the address a
live cluster would give it. Its files (host-local's state, the blocks in the store) go
where the store is, which for ``render`` is a temporary directory (``run_offline``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping

from overlaynet.api.manifests import Manifest, pod_probes
from overlaynet.api.model import ClusterSpec
from overlaynet.cni import plugins
from overlaynet.cni.spec import ERR_PLUGIN
from overlaynet.control.manager import ClusterManager
from overlaynet.control.store import Store
from overlaynet.datapath.modes import IPAM_PLUGIN
from overlaynet.datapath.plan import Netns, Plan
from overlaynet.errors import CniError, OverlaynetError
from overlaynet.kernel.bird import MeshReport
from overlaynet.node import kubelet
from overlaynet.proxy.render import Jump

__all__ = ["OfflineAgent", "OfflineBird", "OfflineIptables", "OfflineRuntime", "run_offline"]

_ANNOUNCED = re.compile(r"^\s*route (\S+) blackhole;", re.MULTILINE)  # bird_config's static routes


class OfflineAgent:
    """Remembers what each key serves (``served``: key -> (netns, ports, health))."""

    def __init__(self) -> None:
        self.served: dict[str, tuple[str, list[tuple[int, str]], dict | None]] = {}
        self.dns_ports: dict[str, list[tuple[int, str]]] = {}  # key -> the ports that answer DNS
        self.zone: tuple[str, list[list[str]]] | None = None  # the last dns_zone: (domain, records)
        self.watched: list[str] = []  # the last watch: the self-heal loop's namespaces
        self.health_checked: dict[str, list[dict]] = {}  # key -> its kube-proxy health checks

    def serve(self, key: str, netns: str, hostname: str, ports: list[tuple[int, str]],
              health: dict | None = None, dns_ports: list[tuple[int, str]] | None = None) -> dict:
        self.served[key] = (netns, list(ports), health)
        if dns_ports:
            self.dns_ports[key] = list(dns_ports)
        return {"key": key}

    def dns_zone(self, domain: str, records: list[list[str]], serial: int) -> int:
        self.zone = (domain, records)
        return len(records)

    def unserve(self, key: str) -> bool:
        return self.served.pop(key, None) is not None

    def watch(self, namespaces: list[str]) -> list[str]:
        self.watched = list(namespaces)
        return []

    def health_checks(self, key: str, checks: list[dict]) -> dict:
        self.health_checked[key] = list(checks)
        return {"key": key}


class OfflineIptables:
    """Records every load (``restores``: (netns, payload)); holds no tables, so a sync finds
    no chains to delete."""

    def __init__(self) -> None:
        self.restores: list[tuple[str, str]] = []

    def backend(self) -> str:
        return "legacy"

    def chains(self, netns: str, backend: str, table: str) -> list[str]:
        return []

    def ensure_jumps(self, netns: str, jumps: Iterable[Jump], backend: str) -> list[Jump]:
        return list(jumps)

    def ensure_chains(self, netns: str, chains: Iterable[tuple[str, str]], backend: str) -> None:
        pass

    def restore(self, netns: str, payload: str, backend: str) -> None:
        self.restores.append((netns, payload))


class OfflineBird:
    """Configurations in memory; a started daemon learns every route the others announce."""

    def __init__(self) -> None:
        self.configs: dict[str, str] = {}  # conf path -> text
        self.running: dict[str, tuple[str, str]] = {}  # pid path -> (netns, conf path)
        self.reconfigured: list[str] = []  # control sockets, in order

    def write_config(self, path: str, text: str) -> bool:
        changed = self.configs.get(path) != text
        self.configs[path] = text
        return changed

    def running_pid(self, pid_path: str) -> int | None:
        return 1 if pid_path in self.running else None

    def start(self, netns: str, conf_path: str, ctl_path: str, pid_path: str) -> None:
        self.running[pid_path] = (netns, conf_path)

    def reconfigure(self, ctl_path: str) -> None:
        self.reconfigured.append(ctl_path)

    def stop(self, pid_path: str) -> None:
        self.running.pop(pid_path, None)

    def learned_routes(self, netns: str) -> set[str]:
        return {route for other, conf in self.running.values() if other != netns
                for route in _ANNOUNCED.findall(self.configs.get(conf, ""))}

    def sessions(self, ctl_path: str) -> list[dict]:
        return []

    def wait_established(self, ctl_paths: Mapping[str, str], timeout: float) -> MeshReport:
        return MeshReport(ok=True, elapsed=0.0, sessions={node: [] for node in ctl_paths})


class OfflineRuntime:
    """The control plane's side effects, recorded; pod addresses from the real IPAM plugin."""

    def __init__(self) -> None:
        self.iptables = OfflineIptables()
        self.bird = OfflineBird()
        self.agents = OfflineAgent()
        self.applied: list[Plan] = []
        self.removed: list[Plan] = []
        self.namespaces: set[str] = set()  # made and not deleted
        self.conflists: dict[str, dict] = {}  # conflist path -> the list
        self.files: dict[str, str] = {}  # write_file's: path -> text (pods' resolv.conf)

    def apply(self, plan: Plan) -> None:
        self.applied.append(plan)
        self.namespaces.update(step.name for step in plan if isinstance(step, Netns))

    def remove(self, plan: Plan) -> None:
        self.removed.append(plan)
        self.namespaces.difference_update(step.name for step in plan if isinstance(step, Netns))

    def delete_namespaces(self, netns_names: list[str]) -> list[str]:
        self.namespaces.difference_update(netns_names)
        return []

    def cni_add(self, state_dir: str, cluster: str,
                sandboxes: list[kubelet.Sandbox]) -> dict[kubelet.Sandbox, dict | OverlaynetError]:
        outcomes: dict[kubelet.Sandbox, dict | OverlaynetError] = {}
        for sandbox in sandboxes:
            self.namespaces.add(os.path.basename(sandbox.netns_path))
            try:
                outcomes[sandbox] = self._ipam("ADD", state_dir, cluster, sandbox)
            except OverlaynetError as error:
                outcomes[sandbox] = error
        return outcomes

    def cni_delete(self, state_dir: str, cluster: str, sandboxes: list[kubelet.Sandbox]) -> None:
        for sandbox in sandboxes:
            self._ipam("DEL", state_dir, cluster, sandbox)

    def _ipam(self, command: str, state_dir: str, cluster: str, sandbox: kubelet.Sandbox) -> dict:
        """The node's IPAM plugin on the configuration libcni would give it (cni.md §3); its
        result (empty for DEL)."""
        paths = kubelet.node_paths(state_dir, cluster, sandbox.node)
        conflist = self.conflists[paths.conflist]
        plugin = conflist["plugins"][0]
        ipam_type = (plugin.get("ipam") or {}).get("type")
        if ipam_type != IPAM_PLUGIN:
            raise CniError(ERR_PLUGIN, f"ipam plugin {ipam_type} cannot run without root (only {IPAM_PLUGIN} can)")
        config = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}
        args = kubelet.cni_args(sandbox.namespace, sandbox.name, sandbox.container_id)
        environ = {"CNI_COMMAND": command, "CNI_CONTAINERID": sandbox.container_id, "CNI_NETNS": sandbox.netns_path,
                   "CNI_IFNAME": sandbox.ifname, "CNI_PATH": os.pathsep.join(kubelet.SYSTEM_CNI_PATH),
                   "CNI_ARGS": ";".join(f"{k}={v}" for k, v in args.items())}
        output = plugins.run(IPAM_PLUGIN, environ, json.dumps(config).encode())
        answer = json.loads(output.stdout) if output.stdout else {}
        if output.exit_code:
            raise CniError(answer.get("code", ERR_PLUGIN), answer.get("msg", output.stderr), answer.get("details", ""))
        return answer

    def write_conflist(self, paths: kubelet.NodePaths, conflist: dict) -> None:
        self.conflists[paths.conflist] = conflist

    def remove_path(self, path: str) -> None:
        """Files only (IPAM state under the store's directory); gone already is fine."""
        self.conflists = {p: c for p, c in self.conflists.items() if p != path and not p.startswith(path + os.sep)}
        self.files = {p: t for p, t in self.files.items() if p != path and not p.startswith(path + os.sep)}
        if path.startswith("/etc/"):
            return  # the files it "wrote" there (resolv.conf) were only remembered
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)

    def write_file(self, path: str, text: str) -> None:
        self.files[path] = text

    def host_resolv_conf(self) -> str:
        return "nameserver 192.0.2.53\n"  # a documentation address: offline, the host's file is not read

    def start_agent(self, cluster: str, socket_path: str, log_path: str) -> int:
        return 0

    def stop_agent(self, cluster: str, socket_path: str) -> None:
        self.agents.served.clear()

    def agent(self, cluster: str, socket_path: str) -> OfflineAgent:
        return self.agents

    def host_limits(self) -> dict[str, int]:
        return {}

    def raise_host_limits(self) -> None:
        pass

    def restore_host_limits(self, originals: dict[str, int]) -> None:
        pass


@contextlib.contextmanager
def run_offline(spec: ClusterSpec, manifests: list[Manifest]) -> Iterator[ClusterManager]:
    """The cluster ``up`` and ``apply`` would make, on a temporary store: its manager, while
    the block lasts. Readiness probes pass, as they soon would on a live cluster."""
    with tempfile.TemporaryDirectory(prefix="overlaynet-offline-") as directory:
        manager = ClusterManager(Store(directory), OfflineRuntime())
        try:
            manager.up(spec)
            manager.apply(spec.name, manifests)
            for pod in manager.pods(spec.name):
                meta = pod["metadata"]
                if pod["status"].get("phase") == "Running" and any(
                        p.kind == "readiness" for p in pod_probes(pod["spec"])):
                    manager.pod_health(spec.name, meta["namespace"], meta["name"], "readiness", True)
            yield manager
        finally:
            manager.store.close()
