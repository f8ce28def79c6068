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
import resource
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


def delete_all(names: list[str]) -> None:
    """Remove the namespaces ``names`` (the caller orders them: pods before their nodes) as
    one: the kernel destroys them in one pass.

    The kernel destroys a namespace in a work queue once its last reference is gone, and
    each pass takes every namespace queued by then. Unmounted one after another, a thousand
    namespaces reach it over several passes: each unmount then waits on the pass under way
    (0.2 s for 1,051 namespaces here, against 0.04 s) and a node destroyed in a later pass
    than its pods takes 0.4-1 s more. So each namespace is first pinned by a descriptor,
    then all are unmounted, then every pin is dropped in a close_range(2) per run of
    descriptors: the last references go within a millisecond. Before that, one RCU grace
    period: the sockets of a process that has just exited (the agent's, one or more in
    every namespace) let go of their namespaces only in RCU callbacks, and a pin must not
    be outlived by them.
    """
    for chunk in _pinnable_chunks(names):
        pins: list[int] = []
        try:
            for name in chunk:
                try:
                    pins.append(os.open(path(name), os.O_RDONLY | os.O_CLOEXEC))
                except FileNotFoundError:
                    continue
                except OSError as exc:  # out of descriptors after all: it goes unpinned
                    if exc.errno not in (errno.EMFILE, errno.ENFILE):
                        raise
            for name in chunk:
                delete(name)
            _rcu_grace_period()
        finally:
            _close_together(pins)


# membarrier(2) has no glibc wrapper: its syscall number, per architecture
_SYS_MEMBARRIER = {"x86_64": 324, "aarch64": 283}.get(os.uname().machine)
_MEMBARRIER_CMD_GLOBAL = 1  # the kernel implements it as synchronize_rcu()


def _rcu_grace_period() -> None:
    """Wait for one RCU grace period (~8 ms here); without membarrier(2), do not wait."""
    if _SYS_MEMBARRIER is not None:
        _libc.syscall(_SYS_MEMBARRIER, _MEMBARRIER_CMD_GLOBAL, 0)


_SPARE_DESCRIPTORS = 64  # for whatever else the process opens meanwhile


def _pinnable_chunks(names: list[str]) -> Iterator[list[str]]:
    """``names`` in as few chunks as the descriptor limit allows (one, normally): the soft
    limit is raised toward the hard one for the time the pins are held, then put back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    wanted = in_use + len(names) + _SPARE_DESCRIPTORS
    raised = soft
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    try:
        size = max(1, len(names) if raised == resource.RLIM_INFINITY else raised - in_use - _SPARE_DESCRIPTORS)
        for start in range(0, len(names), size):
            yield names[start:start + size]
    finally:
        if raised != soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _close_together(fds: list[int]) -> None:
    """Close ``fds`` with one close_range(2) per run of consecutive numbers: the files are
    released together as the call returns."""
    fds = sorted(fds)
    start = 0
    for end in range(1, len(fds) + 1):
        if end == len(fds) or fds[end] != fds[end - 1] + 1:
            os.closerange(fds[start], fds[end - 1] + 1)
            start = end


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
