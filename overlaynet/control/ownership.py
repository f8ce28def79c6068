"""What a cluster owns outside the store, by kind: the names ``down`` removes after any crash.

Every kernel object, process and file a cluster makes is recorded in the store's ``owned``
table under one of these kinds *before* it is made (``Store.record``), and forgotten once it
is gone. This module only names the kinds (and where the agent's socket is); the manager and the node components record.
"""

from __future__ import annotations

from overlaynet.control.store import Store

__all__ = ["AGENT", "BIRD", "HOST", "NETNS", "PATH", "agent_socket"]

NETNS = "netns"
AGENT = "agent"
PATH = "path"  # a file or directory the cluster owns (agent log, CNI configuration and caches, BIRD files)
BIRD = "bird"  # a BIRD daemon, named by its pid file
HOST = "_host"  # the store's name for host-wide state; never a valid cluster name


def agent_socket(store: Store, cluster: str) -> str:
    """The control socket of the cluster's agent, beside the store (owned as ``AGENT``)."""
    return store.runtime_path(cluster, "sock")
