"""The one entry to overlaynet's CNI plugins, callable in-process (standalone) or by the agent:
``run(plugin, environ, stdin, ...) -> PluginOutput``.

The plugin's name picks its handler: ``overlaynet-ipam`` (``ipam_plugin``: host-local
semantics, or Calico-like blocks), any other name a mode's main plugin (``main_plugin``, one
skeleton driven by the mode; its configuration is ``main_config``, ADD and DEL ``add_del``,
CHECK and STATUS ``check``, its IPAM ``delegation``, what they share ``attachment``).
``invocation.answer`` wraps the handler in the protocol: env and configuration parsed,
VERSION answered, errors as the CNI error object.

What it never does: read ``os.environ`` or write to stdout/stderr (the edge, ``skel`` or the
agent, prints the ``PluginOutput``). The main plugin's code (the model, the kernel side,
pyroute2) is imported only when a main plugin's request has passed the envelope, so an IPAM
invocation, a VERSION or a malformed request does not pay for it.
"""

from __future__ import annotations

from collections.abc import Mapping

from overlaynet.cni import ipam_plugin
from overlaynet.cni.invocation import Invocation, PluginOutput, answer
from overlaynet.cni.spec import Result
from overlaynet.datapath.modes import IPAM_PLUGIN


def run(plugin: str, environ: Mapping[str, str], stdin: bytes, pid: int | None = None,
        in_agent: bool = False, runtime_netns: str | None = None) -> PluginOutput:
    """One CNI invocation of ``plugin`` (``overlaynet-ipam``, or a mode's main plugin): never
    raises; errors become the CNI error object (``invocation.answer`` says which netns is the
    runtime's)."""
    handler = ipam_plugin.command if plugin == IPAM_PLUGIN else _main_plugin
    return answer(handler, plugin, environ, stdin, pid, in_agent, runtime_netns)


def _main_plugin(inv: Invocation, conf: dict) -> Result | None:
    """A main plugin's command, its code imported once the request has passed the envelope
    (a VERSION or a malformed request does not pay for the model)."""
    from overlaynet.cni import main_plugin

    return main_plugin.command(inv, conf)
