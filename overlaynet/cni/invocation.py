"""One CNI invocation as a value, and the protocol envelope around a plugin's handler.

What this module owns: ``Invocation`` (what a handler gets besides the parsed configuration),
``PluginOutput`` (what an invocation prints and returns), and ``answer``: the CNI envelope
shared by every plugin - env and configuration parsed, VERSION answered, the handler run,
its result converted to the configuration's ``cniVersion``, and every error (ours, or a bug)
turned into the CNI error object, so ``answer`` never raises.

What it never does: read ``os.environ``, write to stdout/stderr (the edge, ``skel`` or the
agent, prints the ``PluginOutput``), or know which plugin does what (``plugins.run`` picks
the handler).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from overlaynet.cni import spec
from overlaynet.cni.spec import CniEnv, Factory, Record, Result
from overlaynet.errors import CniError, OverlaynetError


class PluginOutput(Record):
    """What a plugin invocation prints and returns: ``stdout`` (result or error JSON),
    ``exit_code``, ``stderr`` (logs)."""

    __slots__ = ("stdout", "exit_code", "stderr")
    _defaults = {"stderr": ""}

    stdout: str
    exit_code: int
    stderr: str


class Invocation(Record):
    """One invocation: ``plugin``, ``env``, ``stdin``, ``runtime_netns`` (a path to the netns
    the plugin process runs in: the runtime's, the node's), ``in_agent``, ``logs``."""

    __slots__ = ("plugin", "env", "stdin", "runtime_netns", "in_agent", "logs")
    _defaults = {"logs": Factory(list)}

    plugin: str
    env: CniEnv
    stdin: bytes
    runtime_netns: str
    in_agent: bool
    logs: list[str]

    def log(self, message: str) -> None:
        self.logs.append(f"{self.plugin}: {message}")


Handler = Callable[[Invocation, dict], "Result | None"]  # one command of one plugin


def answer(handler: Handler, plugin: str, environ: Mapping[str, str], stdin: bytes, pid: int | None = None,
           in_agent: bool = False, runtime_netns: str | None = None) -> PluginOutput:
    """Run ``handler`` for one CNI invocation of ``plugin``; never raises.

    The runtime's netns (where the plugin process runs) is ``runtime_netns`` if given, else
    ``/proc/<pid>/ns/net`` of ``pid`` (default: this process). The agent passes a path to a
    descriptor it holds open, so the namespace cannot vanish, nor the pid be reused, mid-way.
    """
    version = spec.peek_version(stdin)
    logs: list[str] = []
    try:
        env = spec.parse_env(environ)
        if env.command == "VERSION":
            return PluginOutput(spec.dumps(spec.version_answer(stdin)), 0)
        conf = spec.parse_plugin_config(stdin, env.command)
        version = conf["cniVersion"]
        runtime_netns = runtime_netns or f"/proc/{pid or os.getpid()}/ns/net"
        result = handler(Invocation(plugin, env, stdin, runtime_netns, in_agent, logs), conf)
        stdout = spec.dumps(result.to_dict(version)) if result is not None else ""
        return PluginOutput(stdout, 0, "\n".join(logs))
    except CniError as exc:
        error = exc
    except OverlaynetError as exc:
        error = spec.cni_error(exc)
    except Exception as exc:  # a bug: answer in the protocol all the same
        import traceback  # only on this path: it is not cheap to import

        logs.append(traceback.format_exc())
        error = CniError(spec.ERR_PLUGIN, f"internal error: {type(exc).__name__}: {exc}")
    return PluginOutput(spec.dumps(spec.error_document(error, version)), 1, "\n".join(logs))
