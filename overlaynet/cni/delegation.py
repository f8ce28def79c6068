"""IPAM delegation (cni.md §4-5): a main plugin runs the IPAM plugin its configuration names.

The delegate is ``ipam.type`` found on ``CNI_PATH``; it gets the same environment (with the
command in ``CNI_COMMAND``) and the complete stdin, for ADD, DEL, CHECK, GC and STATUS, and its
error is ours. One shortcut: inside the agent, when the executable found *is* this package's
``overlaynet-ipam`` (or its compiled front), it runs in-process on the same env and stdin instead of paying for a new
interpreter per pod; any other IPAM plugin is exec'd (in the plugin process's netns, through
``nsenter``).

What it never does: touch the kernel, or exec anything but the delegate found on ``CNI_PATH``
(never through a shell).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping

from overlaynet.cni import ipam_plugin, launch, spec
from overlaynet.cni.invocation import Invocation, answer
from overlaynet.cni.spec import Result
from overlaynet.datapath.modes import IPAM_PLUGIN
from overlaynet.errors import CniError

DELEGATE_TIMEOUT = 60.0
STDERR_TAIL = 2000


def find_plugin(plugin_type: str, path: tuple[str, ...]) -> str:
    """The executable ``plugin_type`` on ``CNI_PATH``; the error names every directory tried."""
    if not path:
        raise CniError(spec.ERR_INVALID_ENV, f"CNI_PATH is empty: cannot find the delegate plugin {plugin_type}")
    for directory in path:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(spec.ERR_PLUGIN, f'failed to find plugin "{plugin_type}" in path {list(path)}')


def _is_our_ipam(path: str) -> bool:
    """Whether ``path`` is this package's ``overlaynet-ipam``: the Python plugin, or its
    compiled front (which would only hand the request back to this agent)."""
    ours = [launch.own_plugin_dir(), launch.compiled_plugin_dir()]
    for directory in filter(None, ours):
        try:
            if os.path.samefile(path, os.path.join(directory, IPAM_PLUGIN)):
                return True
        except OSError:
            continue
    return False


def delegate(inv: Invocation, conf: Mapping, command: str) -> Result | None:
    """Run the IPAM plugin (``ipam.type`` on ``CNI_PATH``) for ``command`` with our env and stdin."""
    ipam_type = conf["ipam"]["type"]
    executable = find_plugin(ipam_type, inv.env.path)
    env = dict(inv.env.environ)
    env["CNI_COMMAND"] = command
    if inv.in_agent and _is_our_ipam(executable):
        output = answer(ipam_plugin.command, IPAM_PLUGIN, env, inv.stdin, in_agent=True,
                        runtime_netns=inv.runtime_netns)
        stdout, code, stderr = output.stdout, output.exit_code, output.stderr
    else:
        argv = [executable]
        if inv.in_agent:  # exec it where the plugin process runs, as the plugin itself would
            argv = ["nsenter", f"--net={inv.runtime_netns}", "--", executable]
        try:
            proc = subprocess.run(argv, input=inv.stdin, capture_output=True, env=env,
                                  timeout=DELEGATE_TIMEOUT, close_fds=True)
        except subprocess.TimeoutExpired:
            raise CniError(spec.ERR_TRY_AGAIN, f"ipam plugin {ipam_type} did not answer {command} "
                                               f"within {DELEGATE_TIMEOUT:g} s") from None
        except OSError as exc:
            raise CniError(spec.ERR_PLUGIN, f"cannot run ipam plugin {executable}: {exc.strerror}") from None
        stdout = proc.stdout.decode("utf-8", "replace")
        stderr = proc.stderr.decode("utf-8", "replace")[-STDERR_TAIL:]
        code = proc.returncode
    if stderr.strip():
        inv.logs.append(stderr.rstrip())
    if code != 0:
        error = spec.parse_error_document(stdout)
        if error is None:
            raise CniError(spec.ERR_PLUGIN, f"ipam plugin {ipam_type} failed {command} (exit {code})",
                           (stdout.strip() or stderr.strip())[-STDERR_TAIL:])
        raise CniError(error.code, f"ipam plugin {ipam_type}: {error.msg}", error.details)
    if command != "ADD":
        return None
    try:
        return Result.from_dict(json.loads(stdout), f"ipam plugin {ipam_type}'s result")
    except ValueError:
        raise CniError(spec.ERR_PLUGIN, f"ipam plugin {ipam_type} printed no JSON result",
                       stdout[:STDERR_TAIL]) from None
