"""The one exception hierarchy of overlaynet.

Every error a user can cause or meet derives from ``OverlaynetError``. The edges (the CLI,
the CNI executables, the agent's RPC) turn these into exit codes or error replies; nothing
else catches them. Messages name the object and the field, e.g.
``pod "web-1": containerPort 70000 is out of range 1-65535``.
"""

from __future__ import annotations


class OverlaynetError(Exception):
    """Root of every error overlaynet raises on purpose."""

    exit_code = 1


def one_line(text: str) -> str:
    """``text`` with what does not print escaped as Python writes it in a literal ("\\n",
    "\\u200b"): a value quoted from input (a name with a newline or a zero-width space in it)
    can neither break an error's one line, forge a second one, nor hide in it."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class InvalidInput(OverlaynetError):
    """A manifest, flag or name is wrong; nothing was changed. The message quotes the input,
    so it is kept to one line (``one_line``)."""

    exit_code = 2

    def __init__(self, message: str = "") -> None:
        super().__init__(one_line(message))


class InvalidName(InvalidInput):
    """A kernel-visible name the kernel would refuse or truncate: an interface name over 15
    characters, a network namespace name over 255."""


class ConflictError(OverlaynetError):
    """The request collides with existing state (a cluster that exists, a taken name)."""


class NotFoundError(OverlaynetError):
    """The named cluster, node or pod does not exist."""


class BusyError(ConflictError):
    """Another operation holds the cluster's lock (raised only to callers that asked not to wait)."""


class CapacityError(OverlaynetError):
    """An address range or a node cannot hold what was asked for."""


class HostError(OverlaynetError):
    """The host lacks something overlaynet needs (root, a kernel feature, a command)."""


class StoreError(HostError):
    """The state directory cannot be written (read-only, full) or read; the store is as it was."""


class KernelError(OverlaynetError):
    """The kernel refused an operation overlaynet asked for."""


class BirdError(HostError):
    """A BIRD daemon did not start, is unreachable through its control socket, or refused."""


class AgentError(OverlaynetError):
    """The per-cluster agent process is unreachable or answered with an error."""


class RuleError(OverlaynetError):
    """iptables rule text overlaynet cannot read or follow: in rules it wrote, a defect the
    tests catch; in rules someone added to a node, what ``trace`` and reconcile report."""


def invalid(kind: str, name: str, message: str) -> InvalidInput:
    """An ``InvalidInput`` that names the object: ``pod "web-1": <message>``."""
    return InvalidInput(f'{kind} "{name}": {message}')


class CniError(OverlaynetError):
    """A CNI operation failed; ``code`` is the CNI error code (spec: 1-7, 11, 50, 51; 999 for
    plugin-specific failures), ``msg`` the short message and ``details`` the long one, as the
    error object a CNI plugin prints (``{"code", "msg", "details"}``)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        self.code = code
        self.msg = msg
        self.details = details
        super().__init__(f"{msg}: {details}" if details else msg)
