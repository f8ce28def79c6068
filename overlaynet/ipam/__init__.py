"""IP address management: who gets which addresses (pure logic; state passed in or in files).

- ``allocators``: node pod CIDRs (kube-controller-manager's range allocator), node and pod
  addresses (host-local's order) over what is already in use;
- ``hostlocal``: the CNI host-local plugin's semantics with its on-disk store;
- ``blocks``: Calico-like IPAM in blocks with affinity and borrowing.
"""

__all__ = ["allocators", "blocks", "hostlocal"]
