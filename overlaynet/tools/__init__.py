"""The tools a learner reaches for over a running cluster: ``verify`` (the network model,
proven with real packets)."""

__all__ = ["verify"]
