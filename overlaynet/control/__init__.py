"""The control plane: the store (etcd and the API server) and the controllers over it.

- ``store``: desired and observed state on local disk, transactional, per-cluster locks;
- ``manager``: a cluster's lifecycle (up, down, nodes, apply, delete), in the order that makes
  crashes harmless; ``ownership``: the kinds of what a cluster owns outside the store;
- ``node_ipam``: each node's pod CIDR and address; ``deployments``: the Deployment controller;
- ``pods``: the pods' lifecycle (scheduled, sandboxed, attached, served); ``records``: the
  shapes of Node and Pod objects (pure);
- ``scheduler``: pod placement (pure); ``endpoints``: the EndpointSlice controller (pure);
- ``seams``: the typed interfaces to the kernel, iptables, BIRD and the agent; ``runtime``: the
  host's implementations; ``offline``: one that builds nothing, for ``overlaynet render``.
The controllers decide; what a node runs is in ``overlaynet.node``.
"""

__all__ = ["deployments", "endpoints", "manager", "node_ipam", "offline", "ownership", "pods", "records",
           "runtime", "scheduler", "seams", "store"]
__all__ += ["loadbalancers"]  # LoadBalancer Services
__all__ += ["policies"]  # NetworkPolicy
