"""Starting, finding and stopping a cluster's agent, and talking to it.

This module owns the agent's command line (``agent_argv``), which is also how a later
``down`` finds the process after a crash: by scanning ``/proc/*/cmdline`` for exactly that
argv tail, never by a process name. It never kills a process whose command line does not
name the cluster *and* the control socket.

``AgentClient`` speaks the JSON-lines protocol of ``server`` over one unix-socket connection
(opened on first use, reused, closed by ``close()`` or the ``with`` block). Every failure,
an unreachable agent or an error the agent reports, raises ``AgentError``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from typing import Any

from overlaynet.cni import launch
from overlaynet.errors import AgentError
from overlaynet.kernel import processes

START_TIMEOUT = 5.0
STOP_TIMEOUT = 3.0
REQUEST_TIMEOUT = 30.0
_LOG_TAIL = 2000

# Agents this process started, so that it reaps them (no zombies, no "still running" warnings).
_spawned: dict[int, subprocess.Popen] = {}


def agent_argv(cluster: str, socket_path: str) -> list[str]:
    return [sys.executable, "-m", "overlaynet.agent", "--cluster", cluster, "--socket", os.path.abspath(socket_path)]


def _argv_tail(cluster: str, socket_path: str) -> list[str]:
    return agent_argv(cluster, socket_path)[1:]


def guardian_argv(cluster: str, socket_path: str, agent_pid: int) -> list[str]:
    """The command line of the guardian of agent ``agent_pid`` (``agent.guardian``)."""
    argv = agent_argv(cluster, socket_path)
    return [*argv[:3], "--guard", str(agent_pid), *argv[3:]]


def _agent_processes() -> list[tuple[int, list[str]]]:
    """``(pid, argv)`` of every process running ``-m overlaynet.agent`` (any cluster)."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if b"overlaynet.agent" not in raw:
            continue
        argv = raw.decode("utf-8", "surrogateescape").split("\0")
        if argv and argv[-1] == "":
            argv.pop()
        found.append((int(entry), argv))
    return found


def find_agent_pids(cluster: str, socket_path: str) -> list[int]:
    """Pids of live processes whose argv ends with ``-m overlaynet.agent --cluster C --socket S``."""
    tail = _argv_tail(cluster, socket_path)
    return sorted(pid for pid, argv in _agent_processes() if len(argv) > len(tail) and argv[-len(tail):] == tail)


def find_guardian_pids(cluster: str, socket_path: str) -> list[int]:
    """Pids of live guardians of the agent of ``cluster`` on ``socket_path``, whatever agent pid
    they guard."""
    tail = _argv_tail(cluster, socket_path)  # -m overlaynet.agent --cluster C --socket S
    return sorted(pid for pid, argv in _agent_processes()
                  if len(argv) == len(tail) + 3 and argv[1:3] == tail[:2] and argv[3] == "--guard" and argv[5:] == tail[2:])


def _clusters_on(socket_path: str) -> list[tuple[int, str]]:
    """``(pid, cluster)`` of agent processes whose command line names ``socket_path``."""
    socket_path = os.path.abspath(socket_path)
    return sorted((pid, argv[-3]) for pid, argv in _agent_processes()
                  if len(argv) >= 7 and argv[-6:-4] == ["-m", "overlaynet.agent"] and argv[-4] == "--cluster"
                  and argv[-2:] == ["--socket", socket_path])


def _alive(pid: int) -> bool:
    proc = _spawned.get(pid)
    if proc is not None:
        if proc.poll() is None:
            return True
        del _spawned[pid]
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _log_tail(log_path: str) -> str:
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _LOG_TAIL))
            return f.read().decode("utf-8", "replace").strip()
    except OSError as exc:
        return f"(no log: {exc.strerror})"


def start_agent(cluster: str, socket_path: str, log_path: str) -> int:
    """Start the agent of ``cluster`` detached; return its pid once it answers ``ping``.

    If an agent for the same cluster and socket already answers, return its pid instead
    (idempotent, like the ``ensure_*`` functions).
    """
    socket_path = os.path.abspath(socket_path)
    existing = find_agent_pids(cluster, socket_path)
    if existing:
        try:
            reply = AgentClient(socket_path, cluster=cluster, timeout=START_TIMEOUT).ping()
        except AgentError:
            pass
        else:
            if reply.get("pid") in existing:
                return int(reply["pid"])
    os.makedirs(os.path.dirname(socket_path), mode=0o700, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), mode=0o700, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (launch.import_root(), env.get("PYTHONPATH", "")) if p)
    with open(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600), "ab") as log:
        try:
            proc = subprocess.Popen(
                agent_argv(cluster, socket_path),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                cwd="/",
                env=env,
            )
        except OSError as exc:
            raise AgentError(f'cluster "{cluster}": cannot start the agent: {exc}') from exc
    _spawned[proc.pid] = proc
    deadline = time.monotonic() + START_TIMEOUT
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _spawned.pop(proc.pid, None)
            raise AgentError(
                f'cluster "{cluster}": the agent exited with status {proc.returncode} while starting; '
                f"log {log_path}:\n{_log_tail(log_path)}"
            )
        try:
            reply = AgentClient(socket_path, cluster=cluster, timeout=1.0).ping()
        except AgentError as exc:
            last_error = str(exc)
        else:
            if reply.get("pid") == proc.pid:
                return proc.pid
            # Another process answers on that path (it refuses to start then, and exits).
            last_error = f"pid {reply.get('pid')} answers on that socket"
        time.sleep(0.02)
    _terminate([proc.pid])
    raise AgentError(
        f'cluster "{cluster}": the agent did not answer on {socket_path} within {START_TIMEOUT:g} s '
        f"({last_error}); log {log_path}:\n{_log_tail(log_path)}"
    )


def _terminate(pids: list[int]) -> list[int]:
    """SIGTERM, wait, SIGKILL; return the pids still alive at the end (none, normally)."""
    return processes.stop(pids, _alive, STOP_TIMEOUT, STOP_TIMEOUT)


def stop_agent(cluster: str, socket_path: str) -> None:
    """Stop every agent of ``cluster`` on ``socket_path``, and its guardians, and remove the
    socket; idempotent. The guardians go first, or one would heal the agent's death; and again
    after the agents, in case an agent started one again meanwhile."""
    socket_path = os.path.abspath(socket_path)
    left = _terminate(find_guardian_pids(cluster, socket_path))
    left += _terminate(find_agent_pids(cluster, socket_path))
    left += _terminate(find_guardian_pids(cluster, socket_path))
    if left:
        raise AgentError(f'cluster "{cluster}": agent process(es) {left} survived SIGKILL')
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise AgentError(f'cluster "{cluster}": cannot remove the agent socket {socket_path}: {exc.strerror}') from exc


class AgentClient:
    """A connection to one agent. Not thread-safe; one request at a time."""

    def __init__(self, socket_path: str, cluster: str | None = None, timeout: float = REQUEST_TIMEOUT) -> None:
        self.socket_path = os.path.abspath(socket_path)
        self.cluster = cluster
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._buf = b""

    def _where(self) -> str:
        who = f'cluster "{self.cluster}": agent' if self.cluster else "agent"
        return f"{who} at {self.socket_path}"

    def _hint(self) -> str:
        """What the process table says about the agent of this socket (for error messages)."""
        running = _clusters_on(self.socket_path)
        if not running:
            return " (no agent process runs for this socket; `overlaynet reconcile` starts it again)"
        described = ", ".join(f'pid {pid} for cluster "{cluster}"' for pid, cluster in running)
        return f" (an agent process runs: {described})"

    def call(self, op: str, params: dict[str, Any] | None = None, wait: float | None = None) -> dict:
        """Send one request, return the reply (without ``ok``); AgentError on any failure.

        ``wait`` bounds the wait for the answer (default: the client's timeout).
        """
        line = (json.dumps({"op": op, **(params or {})}, separators=(",", ":")) + "\n").encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                try:
                    sock.connect(self.socket_path)
                except OSError:
                    sock.close()
                    raise
                self._sock = sock
            self._sock.settimeout(wait if wait is not None else self.timeout)
            self._sock.sendall(line)
            while b"\n" not in self._buf:
                chunk = self._sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionResetError("the agent closed the connection")
                self._buf += chunk
        except OSError as exc:
            self.close()  # the connection's state is unknown now: start afresh next time
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise AgentError(f"{self._where()} is unreachable: {op}: {reason}{self._hint()}") from exc
        raw, _, self._buf = self._buf.partition(b"\n")
        try:
            reply = json.loads(raw)
        except ValueError as exc:
            self.close()
            raise AgentError(f"{self._where()}: {op}: reply is not JSON: {raw[:200]!r}") from exc
        if not reply.pop("ok", False):
            raise AgentError(reply.get("error") or f"{self._where()}: {op} failed without a message")
        return reply

    def ping(self) -> dict:
        return self.call("ping")

    def serve(self, key: str, netns: str, hostname: str, ports: list[tuple[int, str]],
              health: dict | None = None, dns_ports: list[tuple[int, str]] | None = None) -> dict:
        """Serve ``ports`` (``[(8080, "TCP"), ...]``) for ``key`` inside ``netns``; replaces its previous set.

        ``health`` (``{"specs", "podIP", "nodeNetns", "podNetns"}``) starts the pod's probes;
        ``dns_ports`` (some of ``ports``) answer the cluster DNS instead of the test server."""
        request: dict[str, Any] = {"key": key, "netns": netns, "hostname": hostname, "ports": [list(p) for p in ports]}
        if health:
            request["health"] = health
        if dns_ports:
            request["dnsPorts"] = [list(p) for p in dns_ports]
        return self.call("serve", request)["key"]

    def dns_zone(self, domain: str, records: list[list[str]], serial: int) -> int:
        """Replace the records every DNS server of the agent answers from; how many record sets."""
        return int(self.call("dns_zone", {"domain": domain, "records": records, "serial": serial})["records"])

    def watch(self, namespaces: list[str]) -> list[str]:
        """Watch exactly these namespaces for drift (self-heal; [] stops); those that are missing."""
        return self.call("watch", {"namespaces": namespaces})["missing"]

    def health_checks(self, key: str, checks: list[dict]) -> dict:
        """kube-proxy's health checks on the served node ``key``, exactly these
        (``[{"port", "namespace", "name", "localEndpoints"}]``); the key as described."""
        return self.call("health_checks", {"key": key, "checks": checks})["key"]

    def unserve(self, key: str) -> bool:
        """Close every socket of ``key``; True if it was served. Call before deleting its netns."""
        return bool(self.call("unserve", {"key": key})["existed"])

    def set_serving(self, key: str, serving: bool) -> dict:
        """Pause (close the sockets: TCP refuses) or resume the test server of ``key``."""
        return self.call("set_serving", {"key": key, "serving": serving})["key"]

    def list(self) -> list[dict]:
        return self.call("list")["keys"]

    def probe(self, probes: list[dict], timeout: float = 2.0) -> list[dict]:
        """Run ``probes`` (see ``probe.parse_probes``); one result per probe, in order."""
        from overlaynet.agent.reachability import PROBE_CONCURRENCY

        # Every probe ends within `timeout`, so the batch is bounded; allow for its worst case.
        rounds = math.ceil(len(probes) / PROBE_CONCURRENCY) if probes else 0
        bound = rounds * (timeout + 0.5) + self.timeout
        return self.call("probe", {"probes": probes, "timeout": timeout}, wait=bound)["results"]
