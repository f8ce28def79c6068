"""Making and undoing the kernel side of a break-it fault (``tools.faults`` plans it).

What this module owns: carrying out the actions of a planned fault inside a node's namespace:
an interface's MTU (netlink, pyroute2), planned steps deleted or re-created (through
``kernel.apply``'s ``remove``/``apply``: deleting what is gone and ensuring what exists are
no-ops), and one iptables rule appended or deleted (one ``iptables-restore --noflush`` through
``kernel.iptables``, after ``iptables-save`` shows whether it is there). Every action is
idempotent, so a clear after a crash half-way through a fault, or a second clear, is harmless.

What it never does: decide what a fault changes, start or stop BIRD (the caller does, through
the control plane's BIRD collaborator), or touch a namespace the action does not name.
"""

from __future__ import annotations

from overlaynet.errors import KernelError
from overlaynet.kernel import apply, iptables, netns
from overlaynet.tools.faults import Action, AppendRule, ApplySteps, DeleteRule, DeleteSteps, SetMtu


@apply.off_event_loop
def ensure_link_mtu(ns: str, dev: str, mtu: int) -> None:
    """``ip link set dev DEV mtu MTU`` inside ``ns``."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    netns.require(ns)
    with netns.inside(ns):
        ipr = IPRoute(groups=0)
    try:
        ipr.link("set", ifname=dev, mtu=mtu)
    except NetlinkError as exc:
        raise KernelError(f'netns "{ns}": link set dev {dev} mtu {mtu}: {exc.args[1] if len(exc.args) > 1 else exc}'
                          ) from None
    finally:
        ipr.close()


def _has_rule(ns: str, table: str, rule: str, backend: str) -> bool:
    return rule in iptables.save(ns, backend, table).splitlines()


def carry_out(action: Action, backend: str) -> None:
    """Make one kernel action true (BIRD actions are the caller's)."""
    if isinstance(action, SetMtu):
        ensure_link_mtu(action.netns, action.dev, action.mtu)
    elif isinstance(action, DeleteSteps):
        apply.remove(action.steps)
    elif isinstance(action, ApplySteps):
        apply.apply(action.steps)
    elif isinstance(action, AppendRule):
        if not _has_rule(action.netns, action.table, action.rule, backend):
            iptables.restore(action.netns, f"*{action.table}\n{action.rule}\nCOMMIT\n", backend)
    elif isinstance(action, DeleteRule):
        if _has_rule(action.netns, action.table, action.rule, backend):
            iptables.restore(action.netns, f"*{action.table}\n-D{action.rule[2:]}\nCOMMIT\n", backend)
    else:
        raise TypeError(f"not a kernel action: {action!r}")
