"""BGP route distribution for a routed cluster: one BIRD 2 daemon per node in a full mesh.

This module owns each node's BIRD files (``<state>/<cluster>.bird/<node>.{conf,ctl,pid}``),
keeps every node's configuration in step with the IPAM blocks (rewrite, then ``birdc
configure``), starts a node's BIRD the first time (recorded in the store *before* it starts,
so ``down`` stops it after any crash), and waits, boundedly, until the routes a change
implies have been learned. Rendering the configuration is ``overlaynet.node.bird_config``'s (pure); the
files and the daemons are reached only through the ``Bird`` seam it is given
(``overlaynet.kernel.bird`` on a real host).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from overlaynet import names
from overlaynet.api.model import DEFAULT_BGP_AS, ClusterSpec
from overlaynet.control.ownership import BIRD, PATH
from overlaynet.control.seams import Bird
from overlaynet.control.store import Store
from overlaynet.datapath.topology import NodeInfo
from overlaynet.node import bird_config

if TYPE_CHECKING:  # the report's type only: kernel.bird is the host runtime's to load
    from overlaynet.kernel.bird import MeshReport

ROUTE_WAIT = 15.0  # seconds to wait for BGP to carry a change to every node


def bird_dir(state_dir: str, cluster: str) -> str:
    return os.path.join(state_dir, f"{cluster}.bird")


def bird_files(state_dir: str, cluster: str, node: str) -> tuple[str, str, str]:
    base = os.path.join(bird_dir(state_dir, cluster), node)
    return f"{base}.conf", f"{base}.ctl", f"{base}.pid"


def sync(store: Store, bird: Bird, spec: ClusterSpec, nodes: list[NodeInfo]) -> None:
    store.record(spec.name, PATH, bird_dir(store.directory, spec.name))
    for node in nodes:
        conf, ctl, pid = bird_files(store.directory, spec.name, node.name)
        changed = bird.write_config(conf, bird_config.render_node_config(node, nodes, as_number=DEFAULT_BGP_AS))
        if bird.running_pid(pid) is None:
            store.record(spec.name, BIRD, pid)
            bird.start(names.node_netns(spec.name, node.name), conf, ctl, pid)
        elif changed:
            bird.reconfigure(ctl)
    wait_for_routes(bird, spec, nodes)


def wait_for_routes(bird: Bird, spec: ClusterSpec, nodes: list[NodeInfo], timeout: float = ROUTE_WAIT) -> list[str]:
    """Wait until every node has a BIRD route for every other node's blocks; return what is missing."""
    deadline = time.monotonic() + timeout
    while True:
        missing = []
        for node in nodes:
            learned = bird.learned_routes(names.node_netns(spec.name, node.name))
            for peer in nodes:
                if peer.name != node.name:
                    missing += [f"{node.name}: {block} via {peer.name}" for block in peer.blocks
                                if str(block) not in learned]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.1)


def stop_all(store: Store, bird: Bird, cluster: str) -> None:
    """Stop every BIRD the cluster started (before its namespaces go)."""
    for pid_path in store.owned(cluster, BIRD):
        bird.stop(pid_path)
        store.forget(cluster, BIRD, pid_path)


def stop_node(store: Store, bird: Bird, cluster: str, node: str) -> None:
    _, _, pid_path = bird_files(store.directory, cluster, node)
    bird.stop(pid_path)
    store.forget(cluster, BIRD, pid_path)


def sessions(manager, spec: ClusterSpec, node: str) -> list[dict]:
    """The BGP sessions of a node's BIRD (``manager``: the store and the runtime of the cluster)."""
    _, ctl, _ = bird_files(manager.store.directory, spec.name, node)
    try:
        return [s for s in manager.runtime.bird.sessions(ctl) if s.get("proto") == "BGP"]
    except Exception as error:  # describe shows what it can
        return [{"name": "(bird)", "state": "down", "info": str(error)}]


def mesh_report(manager, spec: ClusterSpec, timeout: float) -> MeshReport:
    """Wait (bounded) for every BGP session to be Established; the report says which are not."""
    controls = {n["metadata"]["name"]: bird_files(manager.store.directory, spec.name, n["metadata"]["name"])[1]
                for n in manager.nodes(spec.name)}
    return manager.runtime.bird.wait_established(controls, timeout)
