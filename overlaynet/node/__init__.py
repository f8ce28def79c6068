"""What runs on every node: the kubelet's network part, kube-proxy's sync, the routes.

- ``kubelet``: each node's CNI configuration and the CNI calls for its pods;
- ``proxier``: kube-proxy: Services' ClusterIPs and NodePorts, rendered by ``overlaynet.proxy``
  and loaded into every node;
- ``routes``: route distribution for modes with IPAM blocks (Felix's part);
- ``bgp_mesh`` and ``bird_config``: the BIRD 2 full mesh that learns those routes over BGP.
"""

__all__ = ["bgp_mesh", "bird_config", "kubelet", "proxier", "routes"]
__all__ += ["speaker"]  # LoadBalancer Services
__all__ += ["netpol_sync"]  # NetworkPolicy
