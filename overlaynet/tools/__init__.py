"""The tools a learner reaches for over a running cluster: ``verify`` (the network model,
proven with real packets), ``graph`` (the topology, drawn), ``capture`` (packets decoded), and
``doctor`` (the host's readiness, before any cluster), ``trace`` (a packet through a node's
rules and route), ``faults`` (break-it faults, planned with their undo) and ``labs`` (the
course's labs: their definitions and checks)."""

__all__ = ["capture", "doctor", "faults", "graph", "labs", "trace", "verify"]
__all__ += ["verify_policy"]  # NetworkPolicy
