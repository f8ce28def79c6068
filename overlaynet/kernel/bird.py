"""BIRD 2 daemons in node namespaces: start, reconfigure, stop, and read their BGP sessions.

What this module owns: the ``bird`` and ``birdc`` processes of the routed mode's BGP variant
(shared/reference/calico.md §4.2). One BIRD runs per node namespace, started as the reference
shows (``bird -c <conf> -s <ctl> -P <pid>`` inside the netns, here through ``nsenter --net``),
after ``bird -p`` has parsed its configuration. BIRD daemonises; its pid file, written by the
daemon itself, is how it is found again, and a pid is only ever signalled after
``/proc/<pid>/cmdline`` shows it is *that* BIRD (the same pid file argument), so a recycled pid
is never killed. Status comes from ``birdc -s <ctl> show protocols``, parsed by
``overlaynet.node.bird_config``; every ``birdc`` call has a timeout, so a wedged daemon is reported, never
waited on forever.

What it never does: write configuration (``overlaynet.node.bird_config`` renders it, the caller writes
it), kill a process by name, or spawn a shell.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from overlaynet.errors import BirdError, HostError, InvalidInput, KernelError
from overlaynet.kernel import netns as netns_mod
from overlaynet.kernel import processes
from overlaynet.node import bird_config

BIRD = "/usr/sbin/bird"
BIRDC = "/usr/sbin/birdc"
NSENTER = "nsenter"
_PACKAGE = "BIRD 2 (Debian package bird2)"
KILL_TIMEOUT = 2.0  # seconds for a BIRD to go after SIGKILL


# --------------------------------------------------------------------------- binaries


def _require(binary: str) -> None:
    if not os.access(binary, os.X_OK):
        raise HostError(f"BGP needs {_PACKAGE}: {binary} not found")


def bird_version() -> str:
    """``2.0.12``: the version ``bird --version`` reports (HostError if it is not BIRD 2+)."""
    _require(BIRD)
    result = subprocess.run([BIRD, "--version"], capture_output=True, text=True, timeout=10)
    text = (result.stderr + result.stdout).strip()
    version = text.split()[-1] if text else ""
    if not version[:1].isdigit() or int(version.split(".")[0]) < 2:
        raise HostError(f"BGP needs {_PACKAGE}: {BIRD} reports {text!r}")
    return version


def check_config(conf_path: str) -> None:
    """Parse ``conf_path`` with ``bird -p`` (nothing runs); InvalidInput names the line."""
    _require(BIRD)
    result = subprocess.run([BIRD, "-p", "-c", conf_path], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip()
        raise InvalidInput(f"BIRD configuration {conf_path}: {reason}")


# --------------------------------------------------------------------------- processes


def _netns_path(name: str) -> str:
    return name if os.path.isabs(name) else netns_mod.path(name)


def _read_pid(pid_path: str) -> int | None:
    try:
        with open(pid_path) as handle:
            text = handle.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _is_our_bird(pid: int, pid_path: str) -> bool:
    """Whether ``pid`` is a live (not zombie) BIRD started with this pid file."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    if state in ("Z", "X"):
        return False
    return (bool(argv) and os.path.basename(argv[0]) == b"bird"
            and os.fsencode(os.path.abspath(pid_path)) in argv)


def running_pid(pid_path: str) -> int | None:
    """The pid of the BIRD that owns ``pid_path``, if it is running."""
    pid = _read_pid(pid_path)
    return pid if pid is not None and _is_our_bird(pid, pid_path) else None


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def start_bird(netns: str, conf_path: str, ctl_path: str, pid_path: str, *, timeout: float = 5.0) -> int:
    """Run BIRD inside ``netns`` (a name under /run/netns or a path); return its pid.

    The configuration is parsed first (``bird -p``). A BIRD already running with this pid file
    is left alone and its pid returned. Returns once the daemon has written its pid file and
    opened its control socket.
    """
    conf_path, ctl_path, pid_path = (os.path.abspath(p) for p in (conf_path, ctl_path, pid_path))
    bird_version()
    _require(BIRDC)
    check_config(conf_path)
    existing = running_pid(pid_path)
    if existing is not None:
        return existing
    ns_path = _netns_path(netns)
    if not os.path.exists(ns_path):
        raise KernelError(f'netns "{netns}": does not exist (cannot start BIRD there)')
    if os.path.exists(pid_path):
        os.unlink(pid_path)  # stale: its BIRD is gone (running_pid said so)
    argv = [NSENTER, f"--net={ns_path}", "--", BIRD, "-c", conf_path, "-s", ctl_path, "-P", pid_path]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5,
                                stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise HostError(f"BGP needs {NSENTER} (Debian package util-linux) to run BIRD in a namespace") from None
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip()
        raise BirdError(f'netns "{netns}": BIRD did not start: {reason}')
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = running_pid(pid_path)
        if pid is not None and _is_socket(ctl_path):
            return pid
        time.sleep(0.01)
    pid = _read_pid(pid_path)
    if pid is not None and _is_our_bird(pid, pid_path):
        stop_bird(pid_path, ctl_path=ctl_path)
    raise BirdError(f'netns "{netns}": BIRD started but did not open {ctl_path} within {timeout:g} s')


def stop_bird(pid_path: str, *, ctl_path: str | None = None, timeout: float = 5.0) -> bool:
    """Stop the BIRD that owns ``pid_path`` (SIGTERM, then SIGKILL after ``timeout``).

    Returns whether a process was stopped; succeeds when none runs. Removes the pid file and,
    if given, the control socket when BIRD could not remove them itself.
    """
    pid_path = os.path.abspath(pid_path)
    pid = running_pid(pid_path)
    if pid is not None and processes.stop([pid], lambda p: _is_our_bird(p, pid_path), timeout, KILL_TIMEOUT):
        raise BirdError(f"BIRD pid {pid} ({pid_path}) survived SIGKILL")
    for leftover in (pid_path, ctl_path):
        if leftover and os.path.lexists(leftover) and running_pid(pid_path) is None:
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
    return pid is not None


# --------------------------------------------------------------------------- control socket


def _birdc(ctl_path: str, *command: str, timeout: float = 5.0) -> str:
    _require(BIRDC)
    try:
        result = subprocess.run([BIRDC, "-s", ctl_path, *command], capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BirdError(f"BIRD at {ctl_path}: `birdc {' '.join(command)}` got no answer within {timeout:g} s") from None
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or "Unable to connect" in output:
        lines = [line for line in output.splitlines() if not line.startswith("BIRD ")]
        raise BirdError(f"BIRD at {ctl_path}: `birdc {' '.join(command)}` failed: {' / '.join(lines) or 'no output'}")
    return output


def reconfigure(ctl_path: str, *, timeout: float = 10.0) -> str:
    """``birdc configure``: BIRD re-reads the file it was started with; returns its answer."""
    output = _birdc(ctl_path, "configure", timeout=timeout)
    if "Reconfigur" not in output:
        raise BirdError(f"BIRD at {ctl_path}: configure: {output}")
    return output


def sessions(ctl_path: str, *, timeout: float = 5.0) -> list[dict]:
    """``birdc show protocols`` as dicts: name, proto, table, state, since, info, bgp_state."""
    return [s.as_dict() for s in bird_config.parse_show_protocols(_birdc(ctl_path, "show", "protocols", timeout=timeout))]


@dataclass
class MeshReport:
    """What ``wait_established`` saw last: per BIRD (labelled), its BGP sessions."""

    ok: bool
    elapsed: float
    sessions: dict[str, list[bird_config.Session]] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)  # label -> error

    @property
    def pending(self) -> list[tuple[str, bird_config.Session]]:
        """Sessions not Established, as (label, session)."""
        return [(label, s) for label, rows in self.sessions.items() for s in rows if not s.established]

    def __str__(self) -> str:
        if self.ok:
            count = sum(len(rows) for rows in self.sessions.values())
            return f"all {count} BGP sessions Established after {self.elapsed:.1f} s"
        lines = [f"BGP not established after {self.elapsed:.1f} s:"]
        lines += [f"  {label} {bird_config.describe_session(s)}" for label, s in self.pending]
        lines += [f"  {label}: {error}" for label, error in self.unreachable.items()]
        return "\n".join(lines)


def wait_established(ctl_paths: Mapping[str, str] | Iterable[str], timeout: float, *,
                     interval: float = 0.25) -> MeshReport:
    """Poll every BIRD until all its BGP sessions are Established, for at most ``timeout`` s.

    ``ctl_paths`` maps a label (a node name) to a control socket, or is a list of sockets
    (labelled by path). Returns a report either way; a BIRD that does not answer is reported
    as unreachable, never waited on beyond the deadline.
    """
    labelled = dict(ctl_paths) if isinstance(ctl_paths, Mapping) else {p: p for p in ctl_paths}
    start = time.monotonic()
    deadline = start + timeout
    while True:
        report = MeshReport(ok=True, elapsed=0.0)
        for label, ctl in labelled.items():
            remaining = max(0.5, min(5.0, deadline - time.monotonic()))
            try:
                text = _birdc(ctl, "show", "protocols", timeout=remaining)
            except BirdError as exc:
                report.unreachable[label] = str(exc)
                continue
            report.sessions[label] = bird_config.mesh_sessions(bird_config.parse_show_protocols(text))
        report.ok = not report.unreachable and not report.pending
        report.elapsed = time.monotonic() - start
        if report.ok or time.monotonic() + interval > deadline:
            return report
        time.sleep(interval)
