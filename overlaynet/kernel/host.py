"""The few host-wide kernel settings a cluster depends on, raised while clusters exist.

The IPv4 neighbour (ARP) table is one table for every network namespace on the host, and
its size limits (``net.ipv4.neigh.default.gc_thresh1/2/3``) exist only in the initial
namespace. With the defaults (128/512/1024) a cluster of a few hundred pods fills it: new
ARP lookups then fail with "No buffer space available" and pods silently stop reaching each
other. Production nodes raise these limits for the same reason.

This module owns reading and writing those values; the controller records the originals
in the store before changing anything and restores them when the last cluster goes.
"""

from __future__ import annotations

import os

from overlaynet.errors import HostError

# key -> the value a cluster needs at least (room for ~30,000 pods' neighbours)
NEIGHBOUR_TABLE_LIMITS = {
    "net.ipv4.neigh.default.gc_thresh1": 4096,
    "net.ipv4.neigh.default.gc_thresh2": 16384,
    "net.ipv4.neigh.default.gc_thresh3": 32768,
}


def _path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def read(key: str) -> int:
    with open(_path(key)) as handle:
        return int(handle.read().split()[0])


def write(key: str, value: int) -> None:
    try:
        with open(_path(key), "w") as handle:
            handle.write(str(value))
    except OSError as exc:
        raise HostError(f"cannot set {key} to {value}: {os.strerror(exc.errno or 0)}") from None


def current_limits() -> dict[str, int]:
    return {key: read(key) for key in NEIGHBOUR_TABLE_LIMITS}


def raise_limits() -> None:
    """Raise each limit that is below what clusters need (never lowers one)."""
    for key, wanted in NEIGHBOUR_TABLE_LIMITS.items():
        if read(key) < wanted:
            write(key, wanted)


def restore(originals: dict[str, int]) -> None:
    for key in sorted(originals):
        write(key, originals[key])
