"""The agent process: one asyncio event loop per cluster, answering on a unix socket.

This module owns the control protocol and the registry of served keys. The protocol is one
JSON object per line in each direction; a connection may carry several requests, answered in
order:

    {"op": "ping"}                                          -> {"ok": true, "cluster", "pid", "keys"}
    {"op": "serve", "key", "netns", "hostname", "ports": [[8080, "TCP"], [8080, "UDP"]]}
    {"op": "unserve", "key"}                                (closes every socket of the key)
    {"op": "set_serving", "key", "serving": bool}
    {"op": "list"}                                          -> {"ok": true, "keys": [...]}
    {"op": "probe", "probes": [...], "timeout": 2.0}        -> {"ok": true, "results": [...]}

Failures answer ``{"ok": false, "error": "<message>"}`` and leave the agent running; only
an ``OverlaynetError`` carries a message meant for users, anything else is logged with its
traceback and answered as an internal error.

What it never does: create or delete namespaces, addresses or routes, or decide what a pod
serves (the kubelet does, through ``serve``). It keeps no state on disk: after a restart the
kubelet serves its pods again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
import socket
import stat

from overlaynet.agent import probe, testserver
from overlaynet.errors import AgentError, OverlaynetError

log = logging.getLogger("overlaynet.agent")

CONTROL_LINE_LIMIT = 64 * 1024 * 1024  # a probe request for 30,000 probes is ~3 MB


class Agent:
    def __init__(self, cluster: str, socket_path: str) -> None:
        self.cluster = cluster
        self.socket_path = socket_path
        self.keys: dict[str, testserver.ServedKey] = {}
        self._lock = asyncio.Lock()  # serve / unserve / set_serving change sockets one at a time
        self._stopped = asyncio.Event()
        self._connections: set[asyncio.Task] = set()

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
        }.get(op)  # type: ignore[arg-type]
        if handler is None:
            raise AgentError(f"unknown op {op!r}; one of ping, serve, unserve, set_serving, list, probe")
        return await handler(request)

    async def _ping(self, request: dict) -> dict:
        return {"cluster": self.cluster, "pid": os.getpid(), "keys": len(self.keys)}

    async def _serve(self, request: dict) -> dict:
        key = _string(request, "key")
        netns_name = _string(request, "netns")
        hostname = _string(request, "hostname")
        ports = testserver.check_ports(key, request.get("ports"))
        async with self._lock:
            served = self.keys.get(key)
            if served is not None and (served.netns != netns_name
                                       or served.identity != testserver.netns_identity(netns_name)):
                # The key moved to another namespace, or its namespace was deleted and made
                # again under the same name: start afresh there.
                await served.close()
                del self.keys[key]
                served = None
            if served is None:
                served = testserver.ServedKey(key, netns_name, hostname)
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
            return {"key": served.describe()}

    async def _unserve(self, request: dict) -> dict:
        key = _string(request, "key")
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

    async def _list(self, request: dict) -> dict:
        return {"keys": [self.keys[k].describe() for k in sorted(self.keys)]}

    async def _probe(self, request: dict) -> dict:
        probes, timeout = probe.parse_probes(request.get("probes"), request.get("timeout", 2.0))
        return {"results": await probe.run_probes(probes, timeout)}

    # -- the control socket -----------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
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
        try:
            await self._stopped.wait()
        finally:
            log.info("stopping: closing %d served keys", len(self.keys))
            server.close()
            for task in list(self._connections):
                task.cancel()
            for served in list(self.keys.values()):
                await served.close()
            self.keys.clear()
            try:
                if os.stat(self.socket_path).st_ino == inode:
                    os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
        return 0


def _string(request: dict, field: str) -> str:
    value = request.get(field)
    if not isinstance(value, str) or not value:
        raise AgentError(f"{request.get('op')}: {field} must be a non-empty string, not {value!r}")
    return value


def _reply_error(message: str) -> bytes:
    return (json.dumps({"ok": False, "error": message}) + "\n").encode()


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


def serve_forever(cluster: str, socket_path: str) -> int:
    return asyncio.run(Agent(cluster, socket_path).run())
