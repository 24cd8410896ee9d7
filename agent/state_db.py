"""The agent's transactional state store: one SQLite database (`state.db`) in the state dir.

The only module that imports sqlite3. It holds everything the agent persists: the endpoint
records (one row each, the row owns its pod's address: `ip` is UNIQUE), named JSON documents
(the IPAM cursor, the identity numbering), the standalone object store (one row per Kubernetes
object, its batch number in `meta`) and the Kubernetes-mode cluster cache (one row per stream
object, its version and stream id in `meta`). A CNI ADD commits its endpoint row and the IPAM
cursor in one transaction, a store batch all its objects and its number in one, a stream update
all its changes and its version in one: a crash at any moment leaves all of it or none.

Durability is chosen per transaction (WAL mode; `synchronous` is switched around a durable
transaction, SQLite forbids changing it inside one):
- `durable=True` (`synchronous=FULL`, the WAL fsynced before COMMIT returns) where losing an
  acknowledged commit breaks a promise that outlives the kernel: a store batch. Pods and
  policies given to a standalone agent exist only here, and `membranectl apply` has told the
  user they are stored; a power loss after that answer must not take them back.
- otherwise `synchronous=NORMAL`: a commit is in the WAL (the OS page cache) when it returns,
  so a killed agent (kill -9, OOM) loses nothing; only a power loss or kernel crash can lose the
  last commits before a checkpoint. That is safe for what those transactions hold: endpoint
  rows, the IPAM cursor and identity numbers describe kernel objects (veths, pinned maps, the
  pods themselves) that a power loss destroys too (after the reboot kubelet re-creates every
  sandbox with a new ADD; the answer given for the lost one describes a pod that no longer
  exists), and the cluster cache is refetched from the operator. FULL for a CNI ADD measured
  1.2-1.3x slower on concurrent ADD bursts (bench-results/sqlite-store.md) for no such gain.
A FULL commit also makes every NORMAL commit before it durable (one log, written in order). The
WAL is checkpointed into the main file on a clean stop, so at rest the state is one file.

Damage: a file SQLite cannot read (garbage, truncated pages, a malformed image) raises
`DamagedFile` from `open_db`; the caller decides (agent/state_storing.py). The file is created
0600 in a 0700 directory whatever the umask (SQLite gives -wal/-shm the file's mode).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .persisting import FILE_MODE, private_dir
from .state_files import DamagedFile

log = logging.getLogger("membrane.state")

DB_NAME = "state.db"
SIDE_FILES = ("-wal", "-shm")
SCHEMA_VERSION = 2  # 2: the object store and the cluster cache moved in (1 is upgraded in place)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS endpoints (key TEXT PRIMARY KEY, ip TEXT NOT NULL UNIQUE, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS objects (kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
                                    body TEXT NOT NULL, PRIMARY KEY (kind, namespace, name));
CREATE TABLE IF NOT EXISTS cluster_objects (kind TEXT NOT NULL, key TEXT NOT NULL, body BLOB NOT NULL,
                                            PRIMARY KEY (kind, key));
"""
UPGRADABLE = ("1",)  # schema versions whose files this one reads (its tables are a subset)
ObjectKey = tuple[str, str, str]  # kind, namespace ("" when cluster-scoped), name


class StateDb:
    """One connection shared by the agent's threads; `lock` serialises its use (SQLite allows
    one writer at a time anyway, and a transaction is a few microseconds plus one fsync)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, created: bool) -> None:
        self.path = path
        self.created = created  # a new file (first start, or upgrade from the JSON files)
        self.damaged_before: str | None = None  # why the file found at open was set aside (its rows are lost)
        self._conn = conn
        self._lock = threading.RLock()
        self._depth = 0
        self._durable = False

    # --- transactions ----------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, durable: bool = False) -> Iterator[StateDb]:
        """Everything written inside commits together (nested blocks join the outer one).
        `durable`: on disk when the block ends (see the module docstring for which are). The
        level is fixed when the outermost block begins (SQLite refuses to change it inside a
        transaction), so a durable block inside a plain one is a programming error."""
        with self._lock:
            if self._depth:
                if durable and not self._durable:
                    raise RuntimeError("a durable transaction cannot join a plain one")
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            if durable:
                self._conn.execute("PRAGMA synchronous=FULL")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._depth, self._durable = 1, durable
                try:
                    yield self
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                finally:
                    self._depth = 0
                try:
                    self._conn.execute("COMMIT")
                except BaseException:  # a COMMIT that failed (disk full) may leave it open: never half
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            finally:
                if durable:
                    self._conn.execute("PRAGMA synchronous=NORMAL")

    # --- documents ---------------------------------------------------------------------------
    def get_doc(self, name: str) -> Any:
        with self._lock:
            row = self._conn.execute("SELECT body FROM documents WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_doc(self, name: str, body: Any) -> None:
        text = json.dumps(body, separators=(",", ":"), sort_keys=True)
        with self.transaction():
            self._conn.execute("INSERT INTO documents(name, body) VALUES (?, ?) "
                               "ON CONFLICT(name) DO UPDATE SET body = excluded.body", (name, text))

    def get_meta(self, name: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def put_meta(self, name: str, value: str) -> None:
        with self.transaction():
            self._conn.execute("INSERT INTO meta(name, value) VALUES (?, ?) "
                               "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))

    # --- endpoint rows -------------------------------------------------------------------------
    def endpoint_rows(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(key, ip, record) of every endpoint; a record that is not a JSON object is skipped
        with a warning (the kernel rebuilds it)."""
        with self._lock:
            rows = self._conn.execute("SELECT key, ip, record FROM endpoints ORDER BY key").fetchall()
        found = []
        for key, ip, text in rows:
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                log.warning("endpoint row unreadable: rebuilt from the kernel", extra={"fields": {"endpoint": key}})
                continue
            found.append((str(key), str(ip), record))
        return found

    def put_endpoint(self, key: str, ip: str, record: dict[str, Any]) -> None:
        text = json.dumps(record, separators=(",", ":"), sort_keys=True)
        with self.transaction():
            self._conn.execute("INSERT INTO endpoints(key, ip, record) VALUES (?, ?, ?) ON CONFLICT(key) "
                               "DO UPDATE SET ip = excluded.ip, record = excluded.record", (key, ip, text))

    def delete_endpoint(self, key: str) -> None:
        with self.transaction():
            self._conn.execute("DELETE FROM endpoints WHERE key = ?", (key,))

    # --- the standalone object store ------------------------------------------------------
    def object_rows(self) -> list[tuple[ObjectKey, str]]:
        """(key, body text) of every stored object, in key order (parsed by the caller)."""
        with self._lock:
            rows = self._conn.execute("SELECT kind, namespace, name, body FROM objects "
                                      "ORDER BY kind, namespace, name").fetchall()
        return [((str(k), str(ns), str(n)), str(body)) for k, ns, n, body in rows]

    def put_object(self, key: ObjectKey, body: dict[str, Any]) -> None:
        text = json.dumps(body, separators=(",", ":"), sort_keys=True)
        with self.transaction():
            self._conn.execute("INSERT INTO objects(kind, namespace, name, body) VALUES (?, ?, ?, ?) "
                               "ON CONFLICT(kind, namespace, name) DO UPDATE SET body = excluded.body", (*key, text))

    def delete_object(self, key: ObjectKey) -> None:
        with self.transaction():
            self._conn.execute("DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?", key)

    def clear_objects(self) -> None:
        with self.transaction():
            self._conn.execute("DELETE FROM objects")

    # --- the Kubernetes-mode cluster cache ---------------------------------------------------
    def cluster_rows(self) -> list[tuple[str, str, bytes]]:
        """(kind, key, encoded object) of every cached stream object."""
        with self._lock:
            rows = self._conn.execute("SELECT kind, key, body FROM cluster_objects ORDER BY kind, key").fetchall()
        return [(str(kind), str(key), bytes(body)) for kind, key, body in rows]

    def put_cluster_object(self, kind: str, key: str, body: bytes) -> None:
        with self.transaction():
            self._conn.execute("INSERT INTO cluster_objects(kind, key, body) VALUES (?, ?, ?) "
                               "ON CONFLICT(kind, key) DO UPDATE SET body = excluded.body", (kind, key, body))

    def delete_cluster_object(self, kind: str, key: str) -> None:
        with self.transaction():
            self._conn.execute("DELETE FROM cluster_objects WHERE kind = ? AND key = ?", (kind, key))

    def clear_cluster_objects(self) -> None:
        with self.transaction():
            self._conn.execute("DELETE FROM cluster_objects")

    # --- life cycle --------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Fold the WAL into the main file (clean stop): at rest the state is one file."""
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def copy_to(self, target: Path) -> None:
        """A consistent copy of the whole database (WAL included) as one file, 0600."""
        with self._lock:
            target.unlink(missing_ok=True)
            fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            os.close(fd)
            copy = sqlite3.connect(target)
            try:
                self._conn.backup(copy)
            finally:
                copy.close()
            os.chmod(target, FILE_MODE)

    def close(self) -> None:
        with self._lock:
            try:
                self.checkpoint()
            except sqlite3.Error as exc:
                log.warning("state checkpoint failed", extra={"fields": {"file": str(self.path), "error": str(exc)}})
            self._conn.close()


def db_path(state_dir: Path) -> Path:
    return state_dir / DB_NAME


def side_paths(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in SIDE_FILES]


def _check_length(path: Path) -> None:
    """An empty file was never written by this agent (the schema goes in at creation): damaged.
    Bytes after the last page the header counts (appended garbage) are cut off, a copy of the
    whole file kept as `.damaged`: the pages themselves are intact."""
    with open(path, "rb") as handle:
        header = handle.read(100)
        size = os.fstat(handle.fileno()).st_size
    if size == 0:
        raise DamagedFile(path, "empty")
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return  # SQLite itself says what is wrong
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    valid = header[24:28] == header[92:96] and pages > 0  # the header's page count is current
    if valid and size > page_size * pages:
        from .state_files import set_aside
        set_aside(path, keep_original=True)
        os.truncate(path, page_size * pages)
        log.warning("bytes after the state database's last page cut off",
                    extra={"fields": {"file": str(path), "bytes": size - page_size * pages}})


def read_endpoint_rows(state_dir: Path) -> list[tuple[str, str]]:
    """(key, ip) of every endpoint row, read-only (tests and tools, while the agent runs)."""
    conn = sqlite3.connect(f"file:{db_path(state_dir)}?mode=ro", uri=True)
    try:
        return [(str(k), str(ip)) for k, ip in conn.execute("SELECT key, ip FROM endpoints ORDER BY key")]
    finally:
        conn.close()


def open_db(state_dir: Path) -> StateDb:
    """Open (or create) `state.db`; DamagedFile when SQLite cannot read it as a database."""
    private_dir(state_dir)
    path = db_path(state_dir)
    created = not path.exists()
    if not created:
        _check_length(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    for side in side_paths(path):  # SQLite reuses existing side files as they are
        if side.exists():
            os.chmod(side, FILE_MODE)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise DamagedFile(path, f"cannot use write-ahead logging (journal mode {mode})")
        conn.execute("PRAGMA synchronous=NORMAL")  # see the module docstring
        check = [str(row[0]) for row in conn.execute("PRAGMA quick_check").fetchall()]
        if check != ["ok"]:
            raise DamagedFile(path, f"integrity check failed: {check[0]}")
        conn.executescript(_SCHEMA)
        version = conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        if version is None or version[0] in UPGRADABLE:
            conn.execute("INSERT INTO meta(name, value) VALUES ('schema', ?) "
                         "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),))
        elif version[0] != str(SCHEMA_VERSION):
            raise DamagedFile(path, f"schema version {version[0]}, this agent reads {SCHEMA_VERSION}")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise DamagedFile(path, f"not a readable SQLite database: {exc}") from None
    except BaseException:
        conn.close()
        raise
    for side in side_paths(path):
        if side.exists():
            os.chmod(side, FILE_MODE)
    return StateDb(path, conn, created)
