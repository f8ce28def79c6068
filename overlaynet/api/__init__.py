"""The Kubernetes API as overlaynet reads it: object types and their parsing (pure).

What a user writes (Pod, Deployment, Service, EndpointSlice, our Cluster document, probes),
validated into plain values with errors that name the object and the field. Nothing here
stores, plans or touches the kernel.
"""

__all__ = ["manifests", "model", "objects", "probes", "services"]
__all__ += ["loadbalancer"]  # LoadBalancer Services
__all__ += ["netpol"]  # NetworkPolicy
