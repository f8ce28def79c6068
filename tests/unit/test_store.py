"""The store's files are its owner's only: it holds every object of every cluster; several
connections in one process (the agent's threads) keep what they commit."""

import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time

from overlaynet.control.store import Store


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_store_is_private(tmp_path):
    directory = tmp_path / "state"
    store = Store(str(directory))
    store.set_meta("c1", "probe", "1")  # a write: SQLite makes its -wal and -shm files
    database_files = sorted(name for name in os.listdir(directory) if name.startswith("state.db"))
    modes = {name: _mode(directory / name) for name in database_files}
    store.close()
    assert _mode(directory) == 0o700
    assert database_files == ["state.db", "state.db-shm", "state.db-wal"]
    assert modes == dict.fromkeys(database_files, 0o600)


def test_a_world_readable_database_is_narrowed(tmp_path):
    database = tmp_path / "state.db"
    database.touch(mode=0o644)
    os.chmod(database, 0o644)
    Store(str(tmp_path)).close()
    assert _mode(database) == 0o600


def test_a_lock_removed_by_its_holder_is_not_shared(tmp_path):
    """``down`` removes the cluster's lock file while holding it: a process that was waiting on
    the old file must not think it holds the lock beside one that opens the new file."""
    store, other = Store(str(tmp_path)), Store(str(tmp_path))
    order = []
    entered = threading.Event()

    def waiter():
        entered.set()
        with other.cluster_lock("c1"):
            order.append("waiter in")
            assert (tmp_path / "c1.lock").exists()  # it locked a file the path names
            order.append("waiter out")

    with store.cluster_lock("c1"):
        thread = threading.Thread(target=waiter)
        thread.start()
        entered.wait()
        time.sleep(0.2)  # the waiter now blocks in flock on the old file
        store.remove_lock("c1")
        order.append("holder out")
    thread.join(5)
    assert order == ["holder out", "waiter in", "waiter out"]


def _pod(name: str) -> dict:
    return {"kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "status": {}}


def _names_read_by_another_process(directory) -> list[str]:
    """The pods another process reads from the store, closing its connection after (the last
    close of a WAL database checkpoints and deletes the WAL unless a connection still holds it)."""
    read = ("import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
            "print(' '.join(n for (n,) in db.execute('SELECT name FROM resources ORDER BY name'))); db.close()")
    out = subprocess.run([sys.executable, "-c", read, str(directory / "state.db")],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def test_a_second_store_in_the_process_does_not_cost_the_first_its_commits(tmp_path):
    """The agent keeps a store open while its threads open and close others. Opening the
    database file outside SQLite would cancel the kept connection's POSIX lock; another
    process's close would then delete the WAL it still writes to, and its commits would be
    lost (a probe's Ready written, then gone from every other reader)."""
    kept = Store(str(tmp_path))
    kept.put("c1", _pod("first"))
    Store(str(tmp_path)).close()
    assert _names_read_by_another_process(tmp_path) == ["first"]
    kept.put("c1", _pod("second"))
    assert _names_read_by_another_process(tmp_path) == ["first", "second"]
    kept.close()
    with sqlite3.connect(tmp_path / "state.db") as database:
        assert database.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
