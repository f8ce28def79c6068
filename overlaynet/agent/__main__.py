"""``python -m overlaynet.agent --cluster NAME --socket PATH``: run the agent in the foreground.

``client.start_agent`` runs exactly this command line (detached, output to a log file), and
``client.find_agent_pids`` finds the process again by it; keep the two in step.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m overlaynet.agent", description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", required=True, help="the cluster this agent serves")
    parser.add_argument("--socket", required=True, help="path of the control socket (unix, JSON lines)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s agent[%(process)d] %(levelname)s %(message)s",
    )
    from overlaynet.agent.server import serve_forever

    return serve_forever(args.cluster, args.socket)


if __name__ == "__main__":
    sys.exit(main())
