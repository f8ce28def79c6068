"""The main plugin of every mode: one skeleton, driven by the mode (``overlaynet-flannel``,
``overlaynet-calico``, or the ``plugin_type`` of any other ``overlaynet.datapath.modes.Mode``).

The configuration (``main_config``) names the Cluster document, whose mode must be the one
whose plugin was invoked; the mode plans what to create (``plan_pod_prerequisites``, made when
missing and never undone, then ``plan_pod``) and ``kernel.apply`` makes it true. The flannel
mode's plan is what flannel's ``bridge`` delegate does (``cni0`` with the pod CIDR's gateway
address, a veth per pod with hairpin on); the calico mode's has no bridge.

What this module owns: the dispatch of one command - ADD and DEL (``add_del``), CHECK and
STATUS (``check``), GC (the IPAM plugin's alone, ``delegation``). IPAM is delegated for every
command and a delegate's error is ours (cni.md §4-5).

What it never does: touch the kernel itself. The modules that do (and pyroute2 with them) are
imported by the command that needs them, so a GC pays only for the configuration.
"""

from __future__ import annotations

from overlaynet.cni.delegation import delegate
from overlaynet.cni.invocation import Invocation
from overlaynet.cni.main_config import parse_main_config
from overlaynet.cni.spec import Result


def command(inv: Invocation, conf: dict) -> Result | None:
    """One command of the main plugin ``inv.plugin``."""
    cfg = parse_main_config(inv.plugin, conf)
    cni_command = inv.env.command
    if cni_command == "GC":
        delegate(inv, conf, "GC")
        return None
    from overlaynet.cni import add_del, check  # the kernel side: every command but GC

    if cni_command == "ADD":
        return add_del.add(inv, conf, cfg)
    if cni_command == "DEL":
        add_del.delete(inv, conf, cfg)
    elif cni_command == "CHECK":
        check.check(inv, conf, cfg)
    elif cni_command == "STATUS":
        check.status(inv, conf, cfg)
    return None
