"""The agent process: one asyncio event loop per cluster, answering on a unix socket.

This module owns the control protocol and the registry of served keys. The protocol is one
JSON object per line in each direction; a connection may carry several requests, answered in
order:

    {"op": "ping"}                                          -> {"ok": true, "cluster", "pid", "keys"}
    {"op": "serve", "key", "netns", "hostname", "ports": [[8080, "TCP"], [8080, "UDP"]]}
                                                            ("dnsPorts": [[53, "UDP"], ...]: these answer DNS)
    {"op": "dns_zone", "domain", "records": [[name, type, data], ...], "serial"}
                                                            (what every DNS server answers from now on)
    {"op": "unserve", "key"}                                (closes every socket of the key)
    {"op": "set_serving", "key", "serving": bool}
    {"op": "health_checks", "key", "checks": [{"port", "namespace", "name", "localEndpoints"}]}
                                                            (a node's kube-proxy health checks: ``agent.healthcheck``)
    {"op": "list"}                                          -> {"ok": true, "keys": [...]}
    {"op": "probe", "probes": [...], "timeout": 2.0}        -> {"ok": true, "results": [...]}
    {"op": "cni", "plugin", "env": {...}, "stdin", "pid"}   -> {"ok": true, "stdout", "exit_code", "stderr"}
    {"op": "watch", "namespaces": [...]}                    -> {"ok": true, "missing": [...]}
                                                            (self-heal: ``agent.watcher``; [] stops it)

``cni`` is the thin CNI plugins' hand-off (``overlaynet.cni.skel``): the agent runs the named
plugin's code (``overlaynet.cni.plugins.run``) on the request's environment and stdin, in a
worker thread — never on the event loop: it does netlink and file locking — reaching the
runtime's netns as ``/proc/<pid>/ns/net`` of the waiting plugin process. The CNI answer
(result or error object, exit code, logs) is the reply; only a malformed request is an error.

Failures answer ``{"ok": false, "error": "<message>"}`` and leave the agent running; only
an ``OverlaynetError`` carries a message meant for users, anything else is logged with its
traceback and answered as an internal error.

What it never does: create or delete namespaces, addresses or routes, or decide what a pod
serves (the kubelet does, through ``serve``), or run the controller: what a pod's probes
find goes to the ``HealthReport`` callback it was started with, and a heal pass to the ``Heal``
callback (``agent.watcher``). It keeps no state on disk:
after a restart the kubelet serves its pods again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import logging
import os
import resource
import signal
import socket
import stat
import struct
from collections.abc import Callable
from typing import Any

from overlaynet import names
from overlaynet.agent import dnsserver, healthcheck, reachability, testserver
from overlaynet.agent.client import guardian_argv
from overlaynet.agent.prober import Prober
from overlaynet.agent.watcher import Heal, Watcher
from overlaynet.api.probes import ProbeSpec
from overlaynet.errors import AgentError, OverlaynetError, one_line

log = logging.getLogger("overlaynet.agent")

CONTROL_LINE_LIMIT = 64 * 1024 * 1024  # a probe request for 30,000 probes is ~3 MB
CNI_WORKERS = 16  # CNI operations at once (netlink and IPAM locks, not CPU, bound them)

# What a pod's probe found, as (namespace, pod, "readiness" or "liveness", passed, still
# current?): told to whoever started the agent (``__main__`` wires the controller in); called
# in a worker thread. "Still current?" is asked once the controller's lock is held
# (``Prober.stopped``).
HealthReport = Callable[[str, str, str, bool, Callable[[], bool]], None]
# A pod's probes as ``serve`` carries them: {"specs": [ProbeSpec], "podIP", "nodeNetns", "podNetns"}.
Health = dict[str, Any]


class Agent:
    def __init__(self, cluster: str, socket_path: str, report_health: HealthReport, heal: Heal | None = None) -> None:
        self.cluster = cluster
        self.socket_path = socket_path
        self.report_health = report_health
        # None: no controller to heal with
        self.watcher = Watcher(heal, guardian_argv(cluster, socket_path, os.getpid())) if heal is not None else None
        self.keys: dict[str, testserver.ServedKey] = {}
        self.dns_zone: dnsserver.Zone | None = None  # the cluster DNS's records (op dns_zone)
        self.probers: dict = {}  # key -> agent.prober.Prober, for pods with probes
        self._lock = asyncio.Lock()  # serve / unserve / set_serving change sockets one at a time
        self._stopped = asyncio.Event()
        self._connections: set[asyncio.Task] = set()
        self._cni_pool: concurrent.futures.ThreadPoolExecutor | None = None  # made on first use
        self._dns_pool: concurrent.futures.ThreadPoolExecutor | None = None  # builds pushed zones
        self._cni_locks: dict[str, tuple[asyncio.Lock, int]] = {}  # per container: its lock, how many hold or wait

    # -- requests -------------------------------------------------------------------------

    async def handle(self, request: object) -> dict:
        if not isinstance(request, dict):
            raise AgentError("request must be a JSON object")
        op = request.get("op")
        handler = {
            "ping": self._ping,
            "serve": self._serve,
            "unserve": self._unserve,
            "set_serving": self._set_serving,
            "list": self._list,
            "probe": self._probe,
            "cni": self._cni,
            "dns_zone": self._dns_zone,
            "watch": self._watch,
            "health_checks": self._health_checks,
        }.get(op)  # type: ignore[arg-type]
        if handler is None:
            raise AgentError(f"unknown op {op!r}; one of ping, serve, unserve, set_serving, list, probe, cni, "
                             "dns_zone, watch, health_checks")
        return await handler(request)

    async def _ping(self, request: dict) -> dict:
        return {"cluster": self.cluster, "pid": os.getpid(), "keys": len(self.keys)}

    async def _serve(self, request: dict) -> dict:
        key = _string(request, "key")
        netns_name = names.check_netns_name(_string(request, "netns"))
        hostname = _string(request, "hostname")
        ports = testserver.check_ports(key, request.get("ports"))
        health = _parse_health(key, request.get("health"))
        dns = self._parse_dns_ports(key, request.get("dnsPorts"), ports)
        async with self._lock:
            served = self.keys.get(key)
            if served is not None and (served.netns != netns_name or _dns_ports(served.dns) != _dns_ports(dns)
                                       or served.identity != testserver.netns_identity(netns_name)):
                # The key moved to another namespace, or its namespace was deleted and made
                # again under the same name: start afresh there.
                await served.close()
                del self.keys[key]
                served = None
            if served is None:
                served = testserver.ServedKey(key, netns_name, hostname, dns)
                try:
                    await served.set_ports(ports)
                except BaseException:
                    await served.close()
                    raise
                self.keys[key] = served
            else:
                served.hostname = hostname
                await served.set_ports(ports)
            log.info("serve %s in netns %s: %s", key, netns_name,
                     " ".join(f"{p}/{proto}" for p, proto in ports) or "(no ports)")
            await self._start_probes(key, health)
            return {"key": served.describe()}

    def _parse_dns_ports(self, key: str, raw: object, ports: tuple[tuple[int, str], ...]) -> dnsserver.DnsResponder | None:
        """A ``serve`` request's ``dnsPorts``: which of its ports answer DNS (a CoreDNS pod)."""
        if raw is None:
            return None
        dns_ports = testserver.check_ports(key, raw, "dnsPorts")
        missing = [f"{port}/{protocol}" for port, protocol in dns_ports if (port, protocol) not in ports]
        if missing:
            raise AgentError(f'key "{key}": dnsPorts {", ".join(missing)} are not among its ports')
        return dnsserver.DnsResponder(frozenset(dns_ports), lambda: self.dns_zone)

    async def _start_probes(self, key: str, health: Health | None) -> None:
        """Run the kubelet's probes for ``key`` (``_parse_health``'s checked request field)."""
        old = self.probers.pop(key, None)
        if old is not None:
            await old.stop()
        if not health:
            return
        specs = health["specs"]

        async def restart() -> None:  # the "container": its sockets close and open again
            if key in self.keys:
                await self.keys[key].set_serving(False)
                await self.keys[key].set_serving(True)

        async def report(kind: str, ok: bool) -> None:
            _, namespace, name = key.split("/", 2)
            await asyncio.get_running_loop().run_in_executor(
                None, self.report_health, namespace, name, kind, ok, lambda: not prober.stopped)

        prober = Prober(key, specs, health["nodeNetns"], health["podNetns"], health["podIP"], report, restart)
        self.probers[key] = prober
        prober.start()

    async def _unserve(self, request: dict) -> dict:
        key = _string(request, "key")
        await self._start_probes(key, None)
        async with self._lock:
            served = self.keys.pop(key, None)
            if served is not None:
                await served.close()
                log.info("unserve %s (netns %s)", key, served.netns)
        return {"existed": served is not None}

    async def _set_serving(self, request: dict) -> dict:
        key = _string(request, "key")
        serving = request.get("serving")
        if not isinstance(serving, bool):
            raise AgentError(f'key "{key}": serving must be true or false, not {serving!r}')
        async with self._lock:
            served = self.keys.get(key)
            if served is None:
                raise AgentError(f'key "{key}": not served by this agent')
            await served.set_serving(serving)
            log.info("%s %s", "resume" if serving else "pause", key)
            return {"key": served.describe()}

    async def _health_checks(self, request: dict) -> dict:
        key = _string(request, "key")
        checks = healthcheck.parse_checks(key, request.get("checks"))
        async with self._lock:
            served = self.keys.get(key)
            if served is None:
                raise AgentError(f'key "{key}": not served by this agent')
            if checks or served.health_checks:
                await served.set_health_checks(checks)
                log.info("health checks of %s: %s", key, " ".join(
                    f"{c.port}/TCP={c.namespace}/{c.name}:{c.local_endpoints}" for c in checks.values()) or "(none)")
            return {"key": served.describe()}

    async def _list(self, request: dict) -> dict:
        return {"keys": [self.keys[k].describe() for k in sorted(self.keys)]}

    async def _probe(self, request: dict) -> dict:
        probes, timeout = reachability.parse_probes(request.get("probes"), request.get("timeout", 2.0))
        return {"results": await reachability.run_probes(probes, timeout)}

    async def _dns_zone(self, request: dict) -> dict:
        # Built in a worker thread (~90 us a record with dnspython): the loop keeps answering meanwhile.
        # Its own thread: the default executor's may all be waiting for the controller (probe reports).
        if self._dns_pool is None:
            self._dns_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dns")
        zone = await asyncio.get_running_loop().run_in_executor(self._dns_pool, dnsserver.parse_zone, request)
        self.dns_zone = zone  # one assignment on the loop: a query sees the old set or the new one
        log.info("dns zone %s: %d record sets, serial %d", zone.origins[0], len(zone), zone.serial)
        return {"records": len(zone)}

    async def _watch(self, request: dict) -> dict:
        namespaces = request.get("namespaces")
        if not isinstance(namespaces, list) or not all(isinstance(n, str) for n in namespaces):
            raise AgentError("watch: namespaces must be a list of namespace names")
        if self.watcher is None:
            raise AgentError("watch: this agent was started without a controller to heal with")
        return {"missing": self.watcher.watch([names.check_netns_name(n) for n in namespaces])}

    async def _cni(self, request: dict) -> dict:
        plugin = _string(request, "plugin")
        env = request.get("env")
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise AgentError("cni: env must be an object of strings")
        stdin = request.get("stdin")
        if not isinstance(stdin, str):
            raise AgentError("cni: stdin must be a string")
        pid = request.get("pid")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise AgentError(f"cni: pid must be a process id, not {pid!r}")
        if not os.path.exists(f"/proc/{pid}/ns/net"):
            raise AgentError(f"cni: process {pid} does not exist (its netns is the runtime's)")
        if self._cni_pool is None:
            self._cni_pool = concurrent.futures.ThreadPoolExecutor(CNI_WORKERS, thread_name_prefix="cni")
        loop = asyncio.get_running_loop()
        # The CNI spec leaves it to the runtime not to run two operations on one container at
        # once; a runtime killed mid-ADD cannot keep that promise (its plugin's ADD goes on here),
        # so the agent keeps it: a DEL of the same container waits for that ADD to finish. (Per
        # plugin: an ADD's IPAM delegate, exec'd with the same container, must not wait for it.)
        container = f'{plugin}/{env.get("CNI_CONTAINERID", "")}'
        lock, users = self._cni_locks.get(container, (asyncio.Lock(), 0))
        self._cni_locks[container] = (lock, users + 1)
        try:
            async with lock:
                stdout, exit_code, stderr = await loop.run_in_executor(
                    self._cni_pool, _run_cni, plugin, env, stdin.encode("utf-8", "surrogateescape"), pid)
        finally:
            lock, users = self._cni_locks[container]
            if users == 1:
                del self._cni_locks[container]
            else:
                self._cni_locks[container] = (lock, users - 1)
        log.info("cni %s %s %s/%s: exit %d", plugin, env.get("CNI_COMMAND", "?"), env.get("CNI_CONTAINERID", ""),
                 env.get("CNI_IFNAME", ""), exit_code)
        return {"stdout": stdout, "exit_code": exit_code, "stderr": stderr}

    # -- the control socket -----------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            uid = _peer_uid(writer.get_extra_info("socket"))
            if uid not in (0, os.geteuid()):  # the socket is 0600; this holds even if someone widens it
                log.warning("refused a connection from uid %s", uid)
                writer.write(_reply_error(f"refused: this agent answers only root, not uid {uid}"))
                await writer.drain()
                return
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than CONTROL_LINE_LIMIT
                    writer.write(_reply_error("request line too long"))
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                writer.write(await self._answer(line))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _answer(self, line: bytes) -> bytes:
        try:
            request = json.loads(line)
        except ValueError as exc:
            return _reply_error(f"request is not JSON: {exc}")
        try:
            reply = await self.handle(request)
        except OverlaynetError as exc:
            return _reply_error(str(exc))
        except Exception as exc:  # a bug: keep serving, but say so loudly
            log.exception("internal error answering %s", str(request)[:200])
            return _reply_error(f"internal error: {type(exc).__name__}: {exc}")
        return (json.dumps({"ok": True, **reply}, separators=(",", ":")) + "\n").encode()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        _raise_fd_limit()
        if _answers(self.socket_path):
            log.error("another agent already answers on %s; not starting", self.socket_path)
            return 1
        _remove_socket(self.socket_path)
        old_umask = os.umask(0o077)  # root only: the control socket opens sockets in any netns
        try:
            server = await asyncio.start_unix_server(self._connection, path=self.socket_path, limit=CONTROL_LINE_LIMIT)
        finally:
            os.umask(old_umask)
        inode = os.stat(self.socket_path).st_ino
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopped.set)
        log.info("agent for cluster %s listening on %s (pid %d)", self.cluster, self.socket_path, os.getpid())
        # The CNI code and pyroute2 (~0.15 s of imports) load now, while `up` builds the nodes,
        # not under the first pods' ADDs.
        loop.run_in_executor(None, _load_cni_code)
        try:
            await self._stopped.wait()
        finally:
            log.info("stopping with %d served keys", len(self.keys))
            if self.watcher is not None:
                self.watcher.stop()
            server.close()
            for task in list(self._connections):
                task.cancel()
            # The served sockets are left open: the process exits next (agent/__main__.py),
            # and the kernel closes them all in one pass, 30 ms sooner at 1,000 pods than
            # closing each server here.
            if self._cni_pool is not None:  # let CNI operations in flight finish: no half-wired pod
                await loop.run_in_executor(None, self._cni_pool.shutdown, True)
            if self._dns_pool is not None:
                self._dns_pool.shutdown(wait=False, cancel_futures=True)
            try:
                if os.stat(self.socket_path).st_ino == inode:
                    os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
        return 0


def _load_cni_code() -> None:
    from overlaynet.kernel import netns

    netns.load_pyroute2()
    from overlaynet.cni import main_plugin, plugins  # noqa: F401  (imported to be loaded)


def _run_cni(plugin: str, env: dict, stdin: bytes, pid: int) -> tuple[str, int, str]:
    """In a worker thread: one CNI invocation (imports the plugin code, and pyroute2, on first use).

    The plugin process's netns is pinned by a descriptor for the whole operation and reached
    as ``/proc/<agent pid>/fd/<n>`` (by this process and by delegates it execs): should the
    plugin be killed meanwhile, a rollback still reaches the namespace, and a recycled pid
    never points the work at another one.
    """
    from overlaynet.cni import plugins

    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise AgentError(f"cni: cannot open the netns of process {pid}: {exc.strerror}") from None
    try:
        outcome = plugins.run(plugin, env, stdin, pid, in_agent=True, runtime_netns=f"/proc/{os.getpid()}/fd/{fd}")
    finally:
        os.close(fd)
    return outcome.stdout, outcome.exit_code, outcome.stderr


def _dns_ports(dns: dnsserver.DnsResponder | None) -> frozenset | None:
    return dns.ports if dns is not None else None


def _peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a unix socket (``SO_PEERCRED``)."""
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return uid


def _parse_health(key: str, health: object) -> Health | None:
    """A ``serve`` request's ``health`` ({"specs", "podIP", "nodeNetns", "podNetns"}), checked
    before any socket opens: the probes' specs, the pod's address and the two namespaces."""
    if not health:
        return None
    if not isinstance(health, dict) or not isinstance(health.get("specs"), list):
        raise AgentError(f'key "{key}": health must be an object with a list of probe specs')
    try:
        pod_ip = str(ipaddress.IPv4Address(health.get("podIP")))
    except ValueError:
        raise AgentError(f'key "{key}": health.podIP {health.get("podIP")!r} is not an IPv4 address') from None
    for field in ("nodeNetns", "podNetns"):
        if not isinstance(health.get(field), str):
            raise AgentError(f'key "{key}": health.{field} must be a namespace name, not {health.get(field)!r}')
        names.check_netns_name(health[field])
    return {"specs": [ProbeSpec.from_dict(spec) for spec in health["specs"]], "podIP": pod_ip,
            "nodeNetns": health["nodeNetns"], "podNetns": health["podNetns"]}


def _string(request: dict, field: str) -> str:
    value = request.get(field)
    if not isinstance(value, str) or not value:
        raise AgentError(f"{request.get('op')}: {field} must be a non-empty string, not {value!r}")
    return value


def _reply_error(message: str) -> bytes:
    return (json.dumps({"ok": False, "error": one_line(message)}) + "\n").encode()


def _answers(path: str) -> bool:
    """Is something listening on the unix socket ``path``?"""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(1.0)
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _remove_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def _raise_fd_limit() -> None:
    """Two sockets per pod, plus probes in flight: lift the soft descriptor limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def serve_forever(cluster: str, socket_path: str, report_health: HealthReport, heal: Heal) -> int:
    return asyncio.run(Agent(cluster, socket_path, report_health, heal).run())
