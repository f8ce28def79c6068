"""The store: overlaynet's etcd, an SQLite database on local disk.

It owns the desired and observed state of every cluster on this host:
- ``clusters``   one row per cluster: its Cluster document and phase;
- ``resources``  Kubernetes-shaped objects (Node, Pod, Deployment) as JSON, keyed like the
                 API server keys them (kind, namespace, name);
- ``owned``      every kernel object and process a cluster owns, written *before* the object
                 is created, so ``down`` can remove exactly these after any crash;
- ``meta``       allocator cursors and other small per-cluster values.

Writes happen in ``transaction()`` (``BEGIN IMMEDIATE``, WAL journal), so concurrent
``overlaynet`` processes never see half an update; ``cluster_lock`` serialises whole
operations on one cluster (kernel work included) across processes with ``flock``.
The location is ``$OVERLAYNET_STATE_DIR`` (default ``/var/lib/overlaynet``); it is its owner's only
(a directory it creates is 0700, the database 0600, narrowed if it was wider).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from typing import overload

from overlaynet.errors import BusyError, StoreError

DEFAULT_STATE_DIR = "/var/lib/overlaynet"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clusters (
    name TEXT PRIMARY KEY, document TEXT NOT NULL, phase TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    cluster TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    body TEXT NOT NULL, PRIMARY KEY (cluster, kind, namespace, name));
CREATE TABLE IF NOT EXISTS owned (
    cluster TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (cluster, kind, name));
CREATE TABLE IF NOT EXISTS meta (
    cluster TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (cluster, key));
"""


def state_dir() -> str:
    return os.environ.get("OVERLAYNET_STATE_DIR") or DEFAULT_STATE_DIR


_PREPARING = threading.Lock()  # a database being created here is not yet SQLite's to open


def _prepare_private(path: str) -> None:
    """Create the database ``path`` readable by its owner only, or narrow it if it exists: the
    store holds every object of every cluster (SQLite gives its -wal and -shm files the
    database's mode). Raises OSError when it cannot be written (read-only, no permission).

    An existing database is never opened here, only stat-ed and chmod-ed by path: closing any
    descriptor of the file cancels every POSIX lock this process holds on it, so the SQLite
    connections of the process's other threads (the agent's) would lose their shared lock, and
    another process's last close would then delete the WAL they still write to, losing their
    commits (https://www.sqlite.org/howtocorrupt.html, 2.2). A new one is opened once, before
    any connection to it exists; the lock keeps this process's other threads from connecting
    to it until that descriptor is closed.
    """
    with _PREPARING:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            return
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    if not os.access(path, os.W_OK):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
    if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
        os.chmod(path, 0o600)


_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def unwritable(directory: str, why: str) -> StoreError:
    return StoreError(f'state directory "{directory}": cannot write: {why}; nothing was changed '
                      "(make room or make it writable, or set OVERLAYNET_STATE_DIR to another directory)")


def _os_why(exc: OSError) -> str:
    words = {errno.EROFS: "it is read-only", errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk is full"}
    return words.get(exc.errno or 0, (exc.strerror or str(exc)).lower())


def _why(exc: sqlite3.Error, directory: str) -> str:
    text = str(exc)
    if "readonly" in text:
        return "it is read-only"
    try:
        full = os.statvfs(directory).f_bavail == 0  # SQLite often says only "disk I/O error"
    except OSError:
        full = False
    if "disk is full" in text or full:
        return "the disk is full"
    return f"the database says: {text}"


class _Guarded:
    """The SQLite connection of a store, its failures turned into one ``StoreError`` naming the
    directory (a full disk or a read-only mount is the user's to fix, not a traceback)."""

    def __init__(self, connection: sqlite3.Connection, directory: str):
        self._connection = connection
        self._directory = directory

    def execute(self, sql: str, parameters: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._connection.execute(sql, parameters)
        except sqlite3.Error as exc:
            raise unwritable(self._directory, _why(exc, self._directory)) from None

    def executescript(self, script: str) -> None:
        try:
            self._connection.executescript(script)
        except sqlite3.Error as exc:
            raise unwritable(self._directory, _why(exc, self._directory)) from None

    def close(self) -> None:
        self._connection.close()


def database_path(directory: str) -> str:
    """The SQLite file of the store in ``directory``."""
    return os.path.join(directory, "state.db")


class Store:
    def __init__(self, directory: str | None = None, *, any_thread: bool = False):
        """The store in ``directory`` (default: ``state_dir()``). ``any_thread``: the connection
        may be used from threads other than this one, one at a time (the caller serialises)."""
        self.directory = directory or state_dir()
        database = database_path(self.directory)
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            _prepare_private(database)
        except OSError as exc:
            if exc.errno not in _READ_ONLY or not os.path.exists(database):
                raise unwritable(self.directory, _os_why(exc)) from None
            # A read-only state directory can still be read (`get`, `describe`); writes refuse.
            # Nothing can change it under a read-only mount: SQLite may read it as immutable.
            self._db = _Guarded(sqlite3.connect(f"file:{database}?immutable=1", uri=True, timeout=30,
                                                isolation_level=None, check_same_thread=not any_thread),
                                self.directory)
        else:
            self._db = _Guarded(sqlite3.connect(database, timeout=30, isolation_level=None,
                                                check_same_thread=not any_thread), self.directory)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        self._depth = 0

    def close(self) -> None:
        self._db.close()

    # -- transactions and locks -------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes atomically; nested uses join the outer transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            with contextlib.suppress(StoreError):  # SQLite may have rolled back already (a full disk)
                self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")
        finally:
            self._depth = 0

    @contextlib.contextmanager
    def cluster_lock(self, cluster: str, wait: bool = True) -> Iterator[None]:
        """Hold the cluster's operation lock (blocks while another process holds it; with
        ``wait=False``, raises ``BusyError`` instead, also when the cluster has no lock file).

        The lock file may be removed by its holder (``remove_lock``, once the cluster is gone):
        a process that was waiting on it then holds a lock on a file no longer there, so after
        each ``flock`` the path must still name the file locked, else it locks afresh.
        """
        path = self.runtime_path(cluster, "lock")
        while True:
            try:
                handle = open(path, "a" if wait else "r")  # noqa: SIM115 (closed by the with below)
            except OSError as exc:
                if not wait and isinstance(exc, FileNotFoundError):
                    raise BusyError(f'cluster "{cluster}": no lock file (being removed)') from None
                raise unwritable(self.directory, _os_why(exc)) from None
            with handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise BusyError(f'cluster "{cluster}": another operation holds its lock') from None
                try:
                    current: int | None = os.stat(path).st_ino
                except FileNotFoundError:
                    current = None
                if current == os.fstat(handle.fileno()).st_ino:
                    try:
                        yield
                    finally:
                        fcntl.flock(handle, fcntl.LOCK_UN)
                    return

    def remove_lock(self, cluster: str) -> None:
        """Remove the lock file of a cluster that is gone; called with the lock held."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.runtime_path(cluster, "lock"))

    def runtime_path(self, cluster: str, suffix: str) -> str:
        """A per-cluster file beside the database: ``<dir>/<cluster>.<suffix>``."""
        return os.path.join(self.directory, f"{cluster}.{suffix}")

    # -- clusters -----------------------------------------------------------------------------

    def get_cluster(self, name: str) -> dict | None:
        row = self._db.execute("SELECT document, phase FROM clusters WHERE name=?", (name,)).fetchone()
        if row is None:
            return None
        return {"document": json.loads(row[0]), "phase": row[1]}

    def cluster_names(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT name FROM clusters ORDER BY name")]

    def put_cluster(self, name: str, document: dict, phase: str) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT INTO clusters(name, document, phase, created) VALUES (?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET document=excluded.document, phase=excluded.phase",
                (name, json.dumps(document), phase, time.time()),
            )

    def set_phase(self, name: str, phase: str) -> None:
        with self.transaction():
            self._db.execute("UPDATE clusters SET phase=? WHERE name=?", (phase, name))

    def delete_cluster(self, name: str) -> None:
        """Forget everything about a cluster (after its kernel objects are gone)."""
        with self.transaction():
            for table in ("resources", "owned", "meta"):
                self._db.execute(f"DELETE FROM {table} WHERE cluster=?", (name,))
            self._db.execute("DELETE FROM clusters WHERE name=?", (name,))

    # -- Kubernetes-shaped resources ----------------------------------------------------------

    def put(self, cluster: str, body: dict) -> None:
        meta = body["metadata"]
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO resources(cluster, kind, namespace, name, body) VALUES (?,?,?,?,?)",
                (cluster, body["kind"], meta.get("namespace", ""), meta["name"], json.dumps(body)),
            )

    def get(self, cluster: str, kind: str, name: str, namespace: str = "") -> dict | None:
        row = self._db.execute(
            "SELECT body FROM resources WHERE cluster=? AND kind=? AND namespace=? AND name=?",
            (cluster, kind, namespace, name),
        ).fetchone()
        return json.loads(row[0]) if row else None

    def list(self, cluster: str, kind: str, namespace: str | None = None) -> list[dict]:
        query = "SELECT body FROM resources WHERE cluster=? AND kind=?"
        args: list = [cluster, kind]
        if namespace is not None:
            query += " AND namespace=?"
            args.append(namespace)
        query += " ORDER BY namespace, name"
        return [json.loads(r[0]) for r in self._db.execute(query, args)]

    def delete(self, cluster: str, kind: str, name: str, namespace: str = "") -> None:
        with self.transaction():
            self._db.execute(
                "DELETE FROM resources WHERE cluster=? AND kind=? AND namespace=? AND name=?",
                (cluster, kind, namespace, name),
            )

    # -- ownership of kernel objects ----------------------------------------------------------

    def record(self, cluster: str, kind: str, name: str) -> None:
        """Record that ``cluster`` owns (or is about to create) a kernel object."""
        with self.transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO owned(cluster, kind, name, seq) "
                "VALUES (?,?,?,(SELECT COALESCE(MAX(seq),0)+1 FROM owned))",
                (cluster, kind, name),
            )

    def owned(self, cluster: str, kind: str) -> builtins.list[str]:  # `list` here is the method above
        """Owned objects of one kind, most recently recorded first (the order to remove them)."""
        rows = self._db.execute(
            "SELECT name FROM owned WHERE cluster=? AND kind=? ORDER BY seq DESC", (cluster, kind)
        )
        return [r[0] for r in rows]

    def forget(self, cluster: str, kind: str, name: str) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM owned WHERE cluster=? AND kind=? AND name=?", (cluster, kind, name))

    # -- small values -------------------------------------------------------------------------

    @overload
    def get_meta(self, cluster: str, key: str) -> str | None: ...

    @overload
    def get_meta(self, cluster: str, key: str, default: str) -> str: ...

    def get_meta(self, cluster: str, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE cluster=? AND key=?", (cluster, key)).fetchone()
        return row[0] if row else default

    def set_meta(self, cluster: str, key: str, value: str) -> None:
        with self.transaction():
            self._db.execute("INSERT OR REPLACE INTO meta(cluster, key, value) VALUES (?,?,?)", (cluster, key, value))
