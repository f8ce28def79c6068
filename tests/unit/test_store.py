"""The store's files are its owner's only: it holds every object of every cluster."""

import os
import stat
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
