"""The entry point of every overlaynet CNI executable: ``main(plugin_name) -> int``.

It reads the environment and stdin, gets an answer, prints it on **stdout** (the result, the
VERSION object, or the error object — cni.md §2: runtimes read errors from stdout) with any
logs on stderr, and returns the exit status (0 on success).

Two ways to an answer (DESIGN.md §4):
- **thin**: when the network configuration names ``"agentSocket"`` and a process accepts on
  that unix socket, the whole request — ``env``, ``stdin`` and this process's pid, through which
  the agent reaches the runtime's netns as ``/proc/<pid>/ns/net`` — goes to the cluster's agent
  as one JSON line (op ``cni``); the agent runs the plugin code in a worker thread and answers
  ``{"stdout", "exit_code", "stderr"}``. This process stays alive (and its netns with it) until
  the answer comes. An agent that does not know the op is treated as absent;
- **standalone**: otherwise the plugin code runs here (``overlaynet.cni.plugins``), which works
  on any Linux host without an agent.

This module is on the start-up path of every pod: on the thin path it imports only the
standard library's json/os/socket/sys (``spec`` is imported for an error, the plugin code —
pyroute2, the model — only on the standalone path).
"""

from __future__ import annotations

import json
import os
import socket
import sys

CONNECT_TIMEOUT = 1.0
REPLY_TIMEOUT = 300.0
AGENT_COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC")
ERR_IO = 5  # the codes of spec, which is not imported up front
ERR_TRY_AGAIN = 11
ERR_PLUGIN = 999
STANDALONE_DEPENDENCIES = ("pyroute2",)  # the third-party modules the plugin code imports


def _error(code: int, msg: str, details: str, stdin: bytes) -> tuple[str, int, str]:
    from overlaynet.cni import spec
    from overlaynet.errors import CniError

    doc = spec.error_document(CniError(code, msg, details), spec.peek_version(stdin))
    return spec.dumps(doc), 1, ""


def _version(stdin: bytes) -> tuple[str, int, str]:
    """VERSION needs neither the agent nor the plugin code."""
    from overlaynet.cni import spec
    from overlaynet.errors import CniError

    try:
        return spec.dumps(spec.version_answer(stdin)), 0, ""
    except CniError as exc:
        return spec.dumps(spec.error_document(exc, spec.peek_version(stdin))), 1, ""


def agent_socket(stdin: bytes) -> str | None:
    """The ``agentSocket`` the configuration names, if it can be read."""
    try:
        doc = json.loads(stdin)
    except (ValueError, UnicodeDecodeError):
        return None
    path = doc.get("agentSocket") if isinstance(doc, dict) else None
    return path if isinstance(path, str) and path else None


def via_agent(socket_path: str, plugin: str, environ: dict, stdin: bytes) -> tuple[str, int, str] | None:
    """Hand the request to the agent; None when no agent answers (the caller runs standalone)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(socket_path)
        except OSError:
            return None
        request = {"op": "cni", "plugin": plugin, "env": environ, "pid": os.getpid(),
                   "stdin": stdin.decode("utf-8", "surrogateescape")}
        line = (json.dumps(request, separators=(",", ":")) + "\n").encode("utf-8", "surrogateescape")
        buf = b""
        try:
            sock.settimeout(REPLY_TIMEOUT)
            sock.sendall(line)
            while b"\n" not in buf:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionResetError("the agent closed the connection")
                buf += chunk
        except OSError as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            return _error(ERR_TRY_AGAIN, f"the agent at {socket_path} did not answer the request",
                          f"{reason}; the operation may be incomplete", stdin)
    finally:
        sock.close()
    try:
        reply = json.loads(buf.partition(b"\n")[0])
        if not reply.get("ok"):
            error = str(reply.get("error", ""))
            if error.startswith("unknown op"):
                return None  # an agent from before the cni op: nothing was done
            return _error(ERR_PLUGIN, f"the agent at {socket_path} refused the request", error, stdin)
        return str(reply["stdout"]), int(reply["exit_code"]), str(reply.get("stderr", ""))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return _error(ERR_PLUGIN, f"the agent at {socket_path} answered garbage", str(exc), stdin)


def _standalone(plugin_name: str, environ: dict, stdin: bytes) -> tuple[str, int, str]:
    """Run the plugin code here, when this Python has what it imports (else say how to fix it)."""
    import importlib.util

    missing = [module for module in STANDALONE_DEPENDENCIES if importlib.util.find_spec(module) is None]
    if missing:
        from overlaynet.cni import launch

        return _error(ERR_PLUGIN, f"{plugin_name}: the Python at {sys.executable} cannot import "
                      f"{', '.join(missing)}, which overlaynet needs", launch.FIX, stdin)
    from overlaynet.cni import plugins

    outcome = plugins.run(plugin_name, environ, stdin, os.getpid())
    return outcome.stdout, outcome.exit_code, outcome.stderr


def main(plugin_name: str) -> int:
    environ = dict(os.environ)
    try:
        stdin = sys.stdin.buffer.read() if sys.stdin is not None else b""
    except OSError as exc:
        stdout, code, stderr = _error(ERR_IO, "cannot read the network configuration from stdin",
                                      exc.strerror or str(exc), b"")
    else:
        answer = None
        if environ.get("CNI_COMMAND") in AGENT_COMMANDS:
            path = agent_socket(stdin)
            if path:
                answer = via_agent(path, plugin_name, environ, stdin)
        if answer is None and environ.get("CNI_COMMAND") == "VERSION":
            answer = _version(stdin)
        if answer is None:
            if sys.flags.no_site:  # started with -S for speed: the standalone path needs site-packages
                import site

                site.main()
            answer = _standalone(plugin_name, environ, stdin)
        stdout, code, stderr = answer
    if stderr:
        sys.stderr.write(stderr if stderr.endswith("\n") else stderr + "\n")
        sys.stderr.flush()
    sys.stdout.write(stdout)
    sys.stdout.flush()
    return code
