"""overlaynet's CNI layer: spec-conformant plugins and the runtime side that calls them.

- ``spec``: the protocol as plain values (versions, error codes, env, CNI_ARGS, conflists,
  results and their conversion between versions); pure.
- ``plugins``: the one entry to the plugins' logic (``plugins.run``), which picks the handler:
  - ``ipam_plugin``: ``overlaynet-ipam`` (host-local semantics, or Calico-like blocks);
  - ``main_plugin``: every mode's main plugin, one skeleton driven by the mode: its
    configuration (``main_config``), ADD and DEL (``add_del``), CHECK and STATUS (``check``),
    what these share about one attachment (``attachment``), and IPAM ``delegation``;
  - ``invocation``: one invocation as a value and the protocol envelope around a handler.
- ``skel``: the executables' entry point: thin path to the agent, or standalone.
- ``launch``: how an executable gets the Python overlaynet is installed in.
- ``runtime``: the kubelet side (libcni's job): run a conflist's plugins for an attachment.

This ``__init__`` imports nothing: the plugin executables pay only for what they use.
"""

__all__ = ["add_del", "attachment", "check", "delegation", "invocation", "ipam_plugin", "launch", "main_config",
           "main_plugin", "plugins", "runtime", "skel", "spec"]
