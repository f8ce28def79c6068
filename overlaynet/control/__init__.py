"""The control plane: the store (etcd and the API server) and the controllers over it.

- ``store``: desired and observed state on local disk, transactional, per-cluster locks;
- ``manager``: a cluster's lifecycle, node IPAM, Deployments and the pods' lifecycle;
- ``scheduler``: pod placement (pure); ``endpoints``: the EndpointSlice controller (pure);
- ``dryrun``: a cluster as it would be, for ``overlaynet render``.
The controllers decide; what a node runs is in ``overlaynet.node``.
"""

__all__ = ["dryrun", "endpoints", "manager", "scheduler", "store"]
