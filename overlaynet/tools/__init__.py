"""The tools a learner reaches for over a running cluster: ``verify`` (the network model,
proven with real packets), ``graph`` (the topology, drawn), ``capture`` (packets decoded), and
``doctor`` (the host's readiness, before any cluster)."""

__all__ = ["capture", "doctor", "graph", "verify"]
