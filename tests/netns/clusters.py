"""Helpers for tests that drive the real CLI against real namespaces."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile

import yaml

from overlaynet import names
from overlaynet.kernel import netns

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Cli:
    """Runs ``python -m overlaynet`` as a user would, with its own state directory."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self.env = {**os.environ, "OVERLAYNET_STATE_DIR": state_dir, "PYTHONPATH": REPO}

    def run(self, *args: str, check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "overlaynet", *args], capture_output=True, text=True,
                                env=self.env, timeout=timeout, cwd=REPO, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"overlaynet {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def json(self, *args: str) -> dict:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def pods(self, cluster: str) -> dict[str, dict]:
        return {p["metadata"]["name"]: p for p in self.json("get", "pods", "-A", "--name", cluster)["items"]}

    def down_quietly(self, cluster: str) -> None:
        self.run("down", "--name", cluster, check=False)


def agent_log(state_dir: str, cluster: str) -> str:
    """The cluster's agent log, whole."""
    return (pathlib.Path(state_dir) / f"{cluster}.agent.log").read_text()


def agent_story(state_dir: str, cluster: str) -> str:
    """The lines of the cluster's agent log that explain a red check (serves, probes, pauses,
    heals, warnings): a check that fails in CI only is then read, not guessed."""
    try:
        lines = agent_log(state_dir, cluster).splitlines()
    except FileNotFoundError:
        return "(no agent log)"
    keep = ("serve ", "probe", "pause", "resume", "heal", "WARNING", "ERROR")
    return "\n".join([line for line in lines if any(k in line for k in keep)][-20:])


def short_state_dir() -> str:
    """A short path: the agent's unix socket lives there (sun_path holds 108 bytes)."""
    return tempfile.mkdtemp(prefix="ovn-", dir="/tmp")


def namespaces_of(cluster: str) -> list[str]:
    return [n for n in netns.list_names() if n.startswith(names.cluster_netns_prefix(cluster))]


def in_netns(name: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True, text=True, timeout=timeout)


def write_manifest(directory: str, name: str, documents: list[dict]) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as handle:
        yaml.safe_dump_all(documents, handle)
    return path


def deployment(name: str, replicas: int, **pod_spec) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": name, "image": "agnhost"}], **pod_spec}}}}


def pod(name: str, **pod_spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], **pod_spec}}


def delete_vxlan_entries(cli, cluster: str) -> tuple[str, str, str, list[str]]:
    """Delete node-1's route, neighbour and FDB entry for node-2 (as a flanneld that lost
    them would leave it); ``(node-1's netns, node-2's podCIDR, its VTEP address, the FDB
    line split in words)``."""
    node1 = f"{cluster}.node.node-1"
    peer_cidr = next(r for r in cli.json("get", "nodes", "--name", cluster)["items"]
                     if r["metadata"]["name"] == "node-2")["spec"]["podCIDR"]
    vtep = peer_cidr.split("/")[0]
    fdb = subprocess.run(["bridge", "-n", node1, "fdb", "show", "dev", "flannel.1"], capture_output=True,
                         text=True, check=True).stdout.split()
    subprocess.run(["ip", "-n", node1, "route", "del", peer_cidr], check=True)
    subprocess.run(["ip", "-n", node1, "neigh", "del", vtep, "dev", "flannel.1"], check=True)
    subprocess.run(["bridge", "-n", node1, "fdb", "del", fdb[0], "dev", "flannel.1", "dst", fdb[fdb.index("dst") + 1]],
                   check=True)
    return node1, peer_cidr, vtep, fdb
