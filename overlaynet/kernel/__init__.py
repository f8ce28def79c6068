"""The kernel side: the only code in overlaynet that changes (or reads) kernel state.

Network objects go through pyroute2 (netlink) with the calling thread switched into the
target namespace, never through spawned ``ip`` commands. ``ensure_*`` functions are
idempotent; ``delete_*`` functions succeed when the object is already gone.
"""

__all__ = ["apply", "bird", "capture", "cluster_view", "faults", "host", "iptables", "netns", "observe", "preflight",
           "processes", "routes"]
__all__ += ["arp"]  # LoadBalancer Services
