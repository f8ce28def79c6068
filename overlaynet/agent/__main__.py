"""``python -m overlaynet.agent --cluster NAME --socket PATH``: run the agent in the foreground.

``client.start_agent`` runs exactly this command line (detached, output to a log file), and
``client.find_agent_pids`` finds the process again by it; keep the two in step. With
``--guard PID`` in front, the process is the agent's guardian instead (``agent.guardian``;
``client.guardian_argv``, ``client.find_guardian_pids``). This is the
edge where the agent meets the control plane: probe results are reported to the cluster's
``ClusterManager.pod_health``, and the watcher's and the guardian's heal passes run ``ClusterManager.heal``, over
the store beside the socket; nowhere else in ``overlaynet.agent`` is the controller known.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from overlaynet.agent import guardian
from overlaynet.agent.client import find_agent_pids
from overlaynet.agent.server import HealthReport, serve_forever
from overlaynet.agent.watcher import Heal


def report_to_controller(cluster: str, state_dir: str) -> HealthReport:
    """The callback that hands a probe result to the controller, over the store in ``state_dir``."""

    def report(namespace: str, name: str, kind: str, ok: bool, current: Callable[[], bool]) -> None:
        # Imported on the first report: the controller (yaml, the planners) would cost every
        # agent start, and most agents serve pods without probes.
        from overlaynet.control.manager import ClusterManager
        from overlaynet.control.store import Store

        manager = ClusterManager(Store(state_dir))
        try:
            manager.pod_health(cluster, namespace, name, kind, ok, current)
        finally:
            manager.store.close()

    return report


def heal_with_controller(cluster: str, state_dir: str, agent_lost: bool = False) -> Heal:
    """The watcher's pass (or, ``agent_lost``, the guardian's): ``ClusterManager.heal`` over the
    store in ``state_dir``."""

    def heal(kernel_changed: bool, rules_changed: bool) -> list[str] | None:
        from overlaynet.control.manager import ClusterManager
        from overlaynet.control.store import Store

        manager = ClusterManager(Store(state_dir))
        try:
            repairs = manager.heal(cluster, kernel_changed, rules_changed, agent_lost)
        finally:
            manager.store.close()
        if repairs is None:
            return None
        return [f"{r.where}: {r.what}" + ("" if r.repaired else " (not repaired)") for r in repairs]

    return heal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m overlaynet.agent", description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", required=True, help="the cluster this agent serves")
    parser.add_argument("--socket", required=True, help="path of the control socket (unix, JSON lines)")
    parser.add_argument("--guard", type=int, metavar="PID", help="be the guardian of the agent PID instead")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s agent[%(process)d] %(levelname)s %(message)s",
    )
    state_dir = os.path.dirname(args.socket)
    if args.guard is not None:
        heal = heal_with_controller(args.cluster, state_dir, agent_lost=True)
        return guardian.guard(args.guard, lambda pid: pid in find_agent_pids(args.cluster, args.socket),
                              lambda: heal(True, True))
    status = serve_forever(args.cluster, args.socket, report_to_controller(args.cluster, state_dir),
                           heal_with_controller(args.cluster, state_dir))
    # Everything is closed by now (the CNI pool drained, the served sockets closed): leave
    # without the interpreter's teardown of every object, 50 ms or more with 200 pods served,
    # which `down` would wait for.
    logging.shutdown()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
