"""overlaynet's CNI layer: spec-conformant plugins and the runtime side that calls them.

- ``spec``: the protocol as plain values (versions, error codes, env, CNI_ARGS, conflists,
  results and their conversion between versions); pure.
- ``plugins``: the logic of ``overlaynet-flannel``, ``overlaynet-calico`` and ``overlaynet-ipam``.
- ``skel``: the executables' entry point: thin path to the agent, or standalone.
- ``launch``: how an executable gets the Python overlaynet is installed in.
- ``runtime``: the kubelet side (libcni's job): run a conflist's plugins for an attachment.

This ``__init__`` imports nothing: the plugin executables pay only for what they use.
"""

__all__ = ["launch", "plugins", "runtime", "skel", "spec"]
