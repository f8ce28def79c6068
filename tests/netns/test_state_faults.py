"""A state directory that cannot be written — read-only, or on a full disk — gets one clear
error naming it, changes nothing, and leaves a store that is whole: once the directory is
writable again the same cluster is used and removed as if nothing had happened."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import tempfile

import pytest

from tests.netns.clusters import Cli, namespaces_of, pod, write_manifest

CLUSTER = "sfault"


def mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True)


@pytest.fixture
def tmpfs():
    """A 2 MiB tmpfs of its own, short enough a path for the agent's socket."""
    directory = tempfile.mkdtemp(prefix="ovn-sf-", dir="/tmp")
    mount("-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", directory)
    cli = Cli(directory)
    try:
        yield cli
    finally:
        cli.down_quietly(CLUSTER)  # the cluster's state lives in the tmpfs: down first
        subprocess.run(["umount", "--lazy", directory], capture_output=True, check=False)  # a process may be exiting
        os.rmdir(directory)


def _store_is_whole(directory: str) -> bool:
    with sqlite3.connect(os.path.join(directory, "state.db")) as database:
        return database.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_a_read_only_state_directory_refuses_writes_clearly_and_still_reads(tmpfs, tmp_path):
    cli = tmpfs
    cli.run("up", "--name", CLUSTER, "--nodes", "1", "--no-dns")
    manifest = write_manifest(str(tmp_path), "p.yaml", [pod("solo")])
    # A read-only bind mount over it (the agent keeps its log open, so the tmpfs itself stays rw).
    mount("--bind", cli.state_dir, cli.state_dir)
    mount("-o", "remount,bind,ro", cli.state_dir)
    try:
        assert "node-1" in cli.run("get", "nodes", "--name", CLUSTER).stdout  # reading still works
        refused = cli.run("apply", "-f", manifest, "--name", CLUSTER, check=False)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert refused.stderr == (f'error: state directory "{cli.state_dir}": cannot write: it is read-only; nothing '
                                  "was changed (make room or make it writable, or set OVERLAYNET_STATE_DIR to another "
                                  "directory)\n")
        assert not [n for n in namespaces_of(CLUSTER) if ".pod." in n]
    finally:
        subprocess.run(["umount", cli.state_dir], check=True)
    assert _store_is_whole(cli.state_dir)
    cli.run("apply", "-f", manifest, "--name", CLUSTER)
    assert cli.pods(CLUSTER)["solo"]["status"]["phase"] == "Running"
    cli.run("down", "--name", CLUSTER)
    assert namespaces_of(CLUSTER) == []


def test_a_full_disk_gets_a_clear_error_and_the_store_survives(tmpfs, tmp_path):
    cli = tmpfs
    cli.run("up", "--name", CLUSTER, "--nodes", "1", "--no-dns")
    manifest = write_manifest(str(tmp_path), "p.yaml", [pod("solo")])
    filler = os.path.join(cli.state_dir, "filler")
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True, check=False)
    refused = cli.run("apply", "-f", manifest, "--name", CLUSTER, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert refused.stderr.startswith(f'error: state directory "{cli.state_dir}": cannot write: the disk is full;')
    assert refused.stderr.count("\n") == 1
    os.unlink(filler)
    assert _store_is_whole(cli.state_dir)
    cli.run("apply", "-f", manifest, "--name", CLUSTER)
    assert cli.pods(CLUSTER)["solo"]["status"]["phase"] == "Running"
    cli.run("down", "--name", CLUSTER)
    assert namespaces_of(CLUSTER) == []
