"""NetworkPolicy for overlaynet's nodes: what the API means, and the iptables that enforce it (pure).

- ``policy.semantics``: pods, namespaces and policies -> is a connection allowed (the
  API's rules: isolation per direction only for selected pods, the union of policies, egress
  at the source and ingress at the destination, replies allowed);
- ``policy.render``: the same inputs -> the ``iptables-restore`` payload of one node's
  ``filter`` table, Calico-style chains per pod interface and per policy.

Loading the payload is ``overlaynet.node.netpol_sync``'s (through the ``Iptables`` seam).
Nothing is re-exported here.
"""

__all__ = ["render", "semantics"]
