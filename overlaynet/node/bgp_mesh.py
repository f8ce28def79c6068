"""BGP route distribution for a routed cluster: one BIRD 2 daemon per node in a full mesh.

This module owns each node's BIRD files (``<state>/<cluster>.bird/<node>.{conf,ctl,pid}``),
keeps every node's configuration in step with the IPAM blocks (rewrite, then ``birdc
configure``), starts a node's BIRD the first time (recorded in the store *before* it starts,
so ``down`` stops it after any crash), and waits, boundedly, until the routes a change
implies have been learned. Rendering the configuration is ``overlaynet.node.bird_config``'s (pure); the
daemon itself is driven by ``overlaynet.kernel.bird``.
"""

from __future__ import annotations

import os
import time

from overlaynet import names
from overlaynet.api.model import DEFAULT_BGP_AS, ClusterSpec
from overlaynet.datapath.topology import NodeInfo
from overlaynet.node import bird_config

BIRD = "bird"  # store ownership kind: a BIRD daemon, named by its pid file
ROUTE_WAIT = 15.0  # seconds to wait for BGP to carry a change to every node


def bird_dir(state_dir: str, cluster: str) -> str:
    return os.path.join(state_dir, f"{cluster}.bird")


def bird_files(state_dir: str, cluster: str, node: str) -> tuple[str, str, str]:
    base = os.path.join(bird_dir(state_dir, cluster), node)
    return f"{base}.conf", f"{base}.ctl", f"{base}.pid"


def sync(manager, spec: ClusterSpec, nodes: list[NodeInfo]) -> None:
    from overlaynet.control.manager import PATH
    from overlaynet.kernel import bird

    directory = bird_dir(manager.store.directory, spec.name)
    manager.store.record(spec.name, PATH, directory)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    for node in nodes:
        conf, ctl, pid = bird_files(manager.store.directory, spec.name, node.name)
        text = bird_config.render_node_config(node, nodes, as_number=DEFAULT_BGP_AS)
        changed = not os.path.exists(conf) or open(conf).read() != text
        if changed:
            with open(conf + ".tmp", "w") as handle:
                handle.write(text)
            os.replace(conf + ".tmp", conf)
        if bird.running_pid(pid) is None:
            manager.store.record(spec.name, BIRD, pid)
            bird.start_bird(names.node_netns(spec.name, node.name), conf, ctl, pid)
        elif changed:
            bird.reconfigure(ctl)
    wait_for_routes(spec, nodes)


def wait_for_routes(spec: ClusterSpec, nodes: list[NodeInfo], timeout: float = ROUTE_WAIT) -> list[str]:
    """Wait until every node has a BIRD route for every other node's blocks; return what is missing."""
    from overlaynet.kernel import observe

    deadline = time.monotonic() + timeout
    while True:
        missing = []
        for node in nodes:
            learned = {r["dst"] for r in observe.observe_routes(names.node_netns(spec.name, node.name))
                       if r["proto"] == "bird"}
            for peer in nodes:
                if peer.name != node.name:
                    missing += [f"{node.name}: {block} via {peer.name}" for block in peer.blocks
                                if str(block) not in learned]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.1)


def stop_all(manager, cluster: str) -> None:
    """Stop every BIRD the cluster started (before its namespaces go)."""
    from overlaynet.kernel import bird

    for pid_path in manager.store.owned(cluster, BIRD):
        bird.stop_bird(pid_path)
        manager.store.forget(cluster, BIRD, pid_path)


def stop_node(manager, cluster: str, node: str) -> None:
    from overlaynet.kernel import bird

    _, _, pid_path = bird_files(manager.store.directory, cluster, node)
    bird.stop_bird(pid_path)
    manager.store.forget(cluster, BIRD, pid_path)


def sessions(manager, spec: ClusterSpec, node: str) -> list[dict]:
    from overlaynet.kernel import bird

    _, ctl, _ = bird_files(manager.store.directory, spec.name, node)
    try:
        return [s for s in bird.sessions(ctl) if s.get("proto") == "BGP"]
    except Exception as error:  # describe shows what it can
        return [{"name": "(bird)", "state": "down", "info": str(error)}]


def mesh_report(manager, spec: ClusterSpec, timeout: float):
    """Wait (bounded) for every BGP session to be Established; the report says which are not."""
    from overlaynet.kernel import bird

    controls = {n["metadata"]["name"]: bird_files(manager.store.directory, spec.name, n["metadata"]["name"])[1]
                for n in manager.nodes(spec.name)}
    return bird.wait_established(controls, timeout)
