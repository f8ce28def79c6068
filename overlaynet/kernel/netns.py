"""Named network namespaces, created and entered in-process.

``ip netns add`` semantics (a bind mount of the namespace on ``/run/netns/<name>``) without a
fork: the calling *thread* unshares a new network namespace, pyroute2 binds it to its name,
and the thread returns to where it was. ``inside(name)`` switches the calling thread into a
namespace for the duration of a ``with`` block; a socket opened there stays in that namespace
after the thread leaves, which is how one process serves sockets in many namespaces.
``ifindex(name, ifname)`` asks a namespace for an interface's index by name (``SIOCGIFINDEX``
on a socket made there): no netlink socket, so cheap enough for every CNI ADD.

Network namespaces are per thread (setns(2) with CLONE_NEWNET affects only the caller), so
these helpers are safe in a multi-threaded process as long as each thread restores itself;
``inside`` always does.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from overlaynet.errors import KernelError

NETNS_RUN_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


_PYROUTE2_IMPORT = threading.Lock()


def load_pyroute2() -> None:
    """Import the pyroute2 package whole, once, under a lock, before any of its submodules:
    its ``__init__`` imports them in the order they need, and a thread importing a submodule
    by name while another runs that ``__init__`` meets a partially initialized module
    ("cannot import name ... circular import"), as concurrent CNI ADDs in the agent did."""
    with _PYROUTE2_IMPORT:
        import pyroute2  # noqa: F401


def path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def require(name: str) -> None:
    """Refuse to act in a namespace that is not there: a ``KernelError`` that names it."""
    if not exists(name):
        raise KernelError(f'netns "{name}": does not exist')


def list_names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def _setns(fd: int, name: str) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise KernelError(f'netns "{name}": cannot enter: {os.strerror(err)}')


@contextlib.contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the block with the calling thread inside namespace ``name``."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(path(name), os.O_RDONLY)
        except FileNotFoundError:
            raise KernelError(f'netns "{name}": does not exist') from None
        try:
            _setns(target, name)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home, "(original)")
    finally:
        os.close(home)


def ifindex(name: str, ifname: str) -> int | None:
    """The index of interface ``ifname`` in namespace ``name``; None if there is none."""
    with inside(name):
        try:
            return socket.if_nametoindex(ifname)
        except OSError:  # "no interface with this name" (no errno)
            return None


def ensure(name: str) -> bool:
    """Create namespace ``name`` unless it exists; return True if it was created."""
    if exists(name):
        return False
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if _libc.unshare(_CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise KernelError(f'netns "{name}": unshare failed: {os.strerror(err)}')
        load_pyroute2()  # lazy: the agent only needs inside()
        from pyroute2 import netns as pyroute2_netns

        try:
            pyroute2_netns.attach(name, "thread-self")
        except OSError as exc:
            raise KernelError(f'netns "{name}": cannot create: {exc}') from exc
    finally:
        _setns(home, "(original)")
        os.close(home)
    return True


def delete(name: str) -> bool:
    """Remove namespace ``name``; return False if it was already gone.

    The kernel destroys the namespace (and the interfaces in it) asynchronously once the
    last reference goes; use ``wait_gone`` before reusing interface names elsewhere.
    """
    if not exists(name):
        return False
    load_pyroute2()
    from pyroute2 import netns as pyroute2_netns

    try:
        pyroute2_netns.remove(name)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EINVAL):
            return False
        raise KernelError(f'netns "{name}": cannot delete: {exc}') from exc
    return True


def throwaway_name(purpose: str) -> str:
    """A namespace name for a short-lived probe: ``overlaynet-<purpose>-<pid>-<random>``; one a
    killed process left behind is removed by the next ``sweep_throwaways``."""
    return f"overlaynet-{purpose}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def sweep_throwaways(purpose: str) -> None:
    """Delete the throwaway namespaces of ``purpose`` whose process is gone (killed mid-probe)."""
    prefix = f"overlaynet-{purpose}-"
    for name in list_names():
        pid = name[len(prefix):].split("-")[0] if name.startswith(prefix) else ""
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            delete(name)


def wait_gone(names: list[str], timeout: float = 5.0) -> list[str]:
    """Wait until none of ``names`` is mounted; return those still present at the timeout."""
    deadline = time.monotonic() + timeout
    left = [n for n in names if exists(n)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [n for n in left if exists(n)]
    return left
