"""overlaynet: a Kubernetes cluster's network, emulated on one Linux host with real kernel objects."""

__version__ = "0.1.0"
