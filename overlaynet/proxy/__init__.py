"""kube-proxy (iptables mode) for overlaynet's nodes: pure rendering and tracing.

- ``proxy.render``: Services + EndpointSlices -> the ``iptables-restore`` payload of one node
  (``render.render``, full or partial sync) and the jumps from the built-in chains;
- ``proxy.rules``: reads rule text back (``iptables-restore`` input, ``iptables-save`` output)
  into values, and the read-back normalisation that compares rendered rules with what the
  kernel holds;
- ``proxy.trace``: follows packets through rule text (the tracer) and checks jump targets.

Loading the payload is ``overlaynet.kernel.iptables`` (the only module with side effects).
The submodules are imported by name (``from overlaynet.proxy import render``); nothing is
re-exported here, so ``proxy.render`` is always the module.
"""

__all__ = ["render", "rules", "trace"]
