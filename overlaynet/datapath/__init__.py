"""The datapath, planned: what the kernel of every node and pod must hold (pure).

- ``plan``: the vocabulary between planning and the kernel, one frozen dataclass per object;
- ``topology``: what every cluster has whatever its CNI mode (underlay, nodes);
- ``modes``: the CNI modes, each behind the closed ``Mode`` interface.
``overlaynet.kernel.apply`` makes a plan true; nothing here imports pyroute2 or runs a command.
"""

__all__ = ["modes", "plan", "topology"]
