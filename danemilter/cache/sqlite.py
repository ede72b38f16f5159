"""SQLite backend: one file shared by the milter and the helper, each in its own process.

* WAL journal: readers never wait for the writer; writers take the lock up front
  (``BEGIN IMMEDIATE``) and wait up to ``busy_timeout`` for each other.
* An entry count kept in the file (``meta``) bounds it at ``max_entries``: beyond
  that, the entries that expire soonest (expired ones first) are removed.
* A file that is corrupt or cannot be opened is renamed to
  ``<path>.corrupt-<UNIX time>`` (with its ``-wal``/``-shm`` files) and a fresh one is
  started; if even that fails, an in-process MemoryBackend takes over. Each is
  logged; nothing raises. A busy or read-only file only costs a miss or a dropped write.
* ``read_only`` (inspection: ``danemilter cache show|stats``) opens the file with
  ``mode=ro`` and never recovers: a file it cannot read is left as it is, and
  ``problem`` says why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from danemilter.cache.memory import MemoryBackend

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_EXPIRED_SWEEP_EVERY = 1000
# Expired rows are kept this long, so a reader whose clock lags a little still sees them.
_EXPIRED_GRACE = 60.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries ("
    " key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS entries_by_expiry ON entries (expires_at)",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


_OPEN_ATTEMPTS = 3
# Primary result codes that make a file unusable for us: moved aside, not retried.
_SQLITE_PERM = 3
_SQLITE_READONLY = 8
_SQLITE_CANTOPEN = 14
_UNUSABLE_CODES = frozenset({_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CANTOPEN})


class _Corrupt(Exception):
    """The file is not a database of ours (wrong schema version, damaged pages)."""


def is_corruption(exc: BaseException) -> bool:
    if isinstance(exc, _Corrupt):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return True
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.OperationalError) and ("malformed" in str(exc) or "not a database"
                                            in str(exc))


def _unusable(exc: BaseException) -> bool:
    """Corrupt, not ours, or not openable (a directory, no permission): not transient."""
    if is_corruption(exc) or isinstance(exc, OSError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) in _UNUSABLE_CODES


class SQLiteBackend:
    name = "sqlite"

    def __init__(self, path: str | Path, max_entries: int, *, max_bytes: int = 0,
                 busy_timeout: float = 2.0, clock: Callable[[], float] = time.time,
                 read_only: bool = False) -> None:
        self.path = Path(path)
        self.max_entries = max_entries
        # Bounds the in-process fallback like the memory backend (cache.memory_max_bytes).
        self.max_bytes = max_bytes
        self.read_only = read_only
        self.problem: str | None = None  # why a read-only file could not be used
        self.busy_timeout = busy_timeout
        self._clock = clock
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._inode: int | None = None
        self._fallback: MemoryBackend | None = None
        self._puts = 0
        self.evictions = 0
        self.errors = 0
        self.recoveries = 0
        self.moved_aside: list[Path] = []
        self._open_or_recover()

    # --- opening and recovery ---------------------------------------------------

    def _open_or_recover(self) -> None:
        if self.read_only:
            self._open_read_only()
            return
        for _ in range(_OPEN_ATTEMPTS):
            try:
                self._conn = self._open()
                return
            except (sqlite3.Error, _Corrupt, OSError) as exc:
                self._close_connection()
                if not _unusable(exc):
                    # Busy, locked, an I/O error: the file may be fine; never move it aside.
                    log.warning("cannot open cache file %s yet: %s", self.path, exc)
                    continue
                log.error("cache file %s cannot be used: %s", self.path, exc)
                break
        else:
            self._fallback = MemoryBackend(self.max_entries, self.max_bytes)
            log.error("cache file %s stays busy: caching in this process only", self.path)
            return
        self._move_aside()
        try:
            self._conn = self._open()
            log.warning("started a fresh cache file %s", self.path)
        except (sqlite3.Error, _Corrupt, OSError) as exc:
            self._close_connection()
            self._fallback = MemoryBackend(self.max_entries, self.max_bytes)
            log.error("cache file %s cannot be created (%s): caching in this process only",
                      self.path, exc)

    def _open_read_only(self) -> None:
        """Inspection (``danemilter cache show|stats``): the file is only ever read. One
        that cannot be read is left exactly as it is (not moved aside, no fresh file
        created in its place by the caller, who may be root) and the reason is kept."""
        try:
            self._conn = self._open()
        except (sqlite3.Error, _Corrupt, OSError) as exc:
            self._give_up(exc)

    def _give_up(self, exc: BaseException) -> None:
        self._close_connection()
        self.problem = str(exc) or type(exc).__name__
        self._fallback = MemoryBackend(1)
        log.debug("cache file %s cannot be read: %s", self.path, exc)

    def _connect(self, target: str | Path, *, uri: bool = False
                 ) -> tuple[sqlite3.Connection, int, set[str]]:
        """A connection (kept as ``_conn``), the file's schema version and its tables."""
        conn = sqlite3.connect(target, uri=uri, timeout=self.busy_timeout,
                               isolation_level=None, check_same_thread=False)
        self._conn = conn
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        return conn, int(version), tables

    def _open(self) -> sqlite3.Connection:
        if self.read_only:
            return self._open_for_reading()
        conn, version, tables = self._connect(self.path)
        if version not in (0, SCHEMA_VERSION) or (version == 0 and tables):
            raise _Corrupt(f"unexpected schema (version {version}, tables {sorted(tables)})")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("cache file %s is not in WAL mode (%s)", self.path, mode)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # Recount on every open, so a counter that drifted (a crash, an old writer) heals.
            count = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
            conn.execute("INSERT INTO meta (name, value) VALUES ('count', ?) "
                         "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (count,))
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self._inode = os.stat(self.path).st_ino
        return conn

    def _open_for_reading(self) -> sqlite3.Connection:
        uri = f"file:{urllib.parse.quote(str(self.path))}?mode=ro"
        if not Path(f"{self.path}-shm").exists():
            # Nobody has the file open in WAL mode; even a read-only connection would
            # create the -shm and -wal files (owned by the caller). immutable reads the
            # file as it is, creating nothing; what a crashed writer left in a -wal is
            # not shown.
            uri += "&immutable=1"
        conn, version, tables = self._connect(uri, uri=True)
        if version != SCHEMA_VERSION or not {"entries", "meta"} <= tables:
            raise _Corrupt(f"not a danemilter cache (version {version}, tables "
                           f"{sorted(tables)})")
        self._inode = os.stat(self.path).st_ino
        return conn

    def _close_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _move_aside(self) -> None:
        """Rename the damaged file (and its WAL) out of the way, unless another process did."""
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("cannot inspect cache file %s: %s", self.path, exc)
            return
        if self._inode is not None and current != self._inode:
            log.warning("cache file %s was already replaced by another process", self.path)
            return
        stamp = f"{self._clock():.6f}"
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            try:
                source.rename(f"{target}{suffix}")
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.error("cannot move %s aside: %s", source, exc)
                continue
        log.error("moved the unusable cache file %s aside to %s", self.path, target)
        self.moved_aside.append(target)

    def _recover(self, exc: BaseException) -> None:
        if self.read_only:
            self._give_up(exc)
            return
        self.recoveries += 1
        log.error("cache file %s is corrupt (%s)", self.path, exc)
        if self._conn is not None:
            _rollback(self._conn)
        self._close_connection()
        self._move_aside()
        self._inode = None
        self._open_or_recover()

    def _reopen_if_replaced(self) -> None:
        """Another process moved a corrupt file aside (or someone removed it): follow it.

        Without this, a long-running process would go on using the renamed file alone.
        """
        try:
            current: int | None = os.stat(self.path).st_ino
        except OSError:
            current = None
        if current != self._inode:
            log.warning("cache file %s was replaced or removed; reopening it", self.path)
            self._close_connection()
            self._inode = None
            self._open_or_recover()

    def _run(self, what: str, operation: Callable[[sqlite3.Connection], T], default: T) -> T:
        with self._lock:
            if self._conn is not None:
                self._reopen_if_replaced()
            if self._conn is None:
                return default
            try:
                return operation(self._conn)
            except (sqlite3.Error, _Corrupt) as exc:
                if is_corruption(exc):
                    self._recover(exc)
                else:
                    self.errors += 1
                    _rollback(self._conn)
                    if self.errors & (self.errors - 1) == 0:  # 1st, 2nd, 4th, 8th...
                        log.warning("cache %s on %s failed (%d failures so far): %s",
                                    what, self.path, self.errors, exc)
                return default

    # --- the backend interface --------------------------------------------------

    @property
    def fallback(self) -> bool:
        return self._fallback is not None

    def get(self, key: str) -> tuple[bytes, float] | None:
        if self._fallback is not None:
            return self._fallback.get(key)

        def read(conn: sqlite3.Connection) -> tuple[bytes, float] | None:
            row = conn.execute("SELECT value, expires_at FROM entries WHERE key = ?",
                               (key,)).fetchone()
            if row is None:
                return None
            value, expires_at = row
            if not isinstance(value, bytes) or not isinstance(expires_at, float | int):
                raise _Corrupt(f"entry {key!r} has the wrong column types")
            return value, float(expires_at)

        return self._run("read", read, None)

    def put(self, key: str, value: bytes, expires_at: float) -> None:
        if self._fallback is not None:
            self._fallback.put(key, value, expires_at)
            return
        self._puts += 1
        sweep = self._puts % _EXPIRED_SWEEP_EVERY == 0

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                updated = conn.execute("UPDATE entries SET value = ?, expires_at = ? "
                                       "WHERE key = ?", (value, expires_at, key)).rowcount
                count = _count(conn)
                if not updated:
                    conn.execute("INSERT INTO entries (key, value, expires_at) VALUES (?, ?, ?)",
                                 (key, value, expires_at))
                    count += 1
                if sweep:
                    count -= conn.execute("DELETE FROM entries WHERE expires_at < ?",
                                          (self._clock() - _EXPIRED_GRACE,)).rowcount
                if count > self.max_entries:
                    evicted = conn.execute(
                        "DELETE FROM entries WHERE key IN (SELECT key FROM entries "
                        "WHERE key != ? ORDER BY expires_at LIMIT ?)",
                        (key, count - self.max_entries)).rowcount
                    self.evictions += evicted
                    count -= evicted
                conn.execute("UPDATE meta SET value = ? WHERE name = 'count'", (count,))
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

        self._run("write", write, None)

    def delete(self, key: str) -> bool:
        if self._fallback is not None:
            return self._fallback.delete(key)

        def remove(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            try:
                removed = conn.execute("DELETE FROM entries WHERE key = ?", (key,)).rowcount
                conn.execute("UPDATE meta SET value = max(value - ?, 0) WHERE name = 'count'",
                             (removed,))
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            return bool(removed)

        return self._run("delete", remove, False)

    def purge(self) -> int:
        if self._fallback is not None:
            return self._fallback.purge()

        def remove_all(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                removed = conn.execute("DELETE FROM entries").rowcount
                conn.execute("UPDATE meta SET value = 0 WHERE name = 'count'")
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            return int(removed)

        return self._run("purge", remove_all, 0)

    def __len__(self) -> int:
        if self._fallback is not None:
            return len(self._fallback)
        return self._run("count", lambda conn: int(
            conn.execute("SELECT count(*) FROM entries").fetchone()[0]), 0)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "backend": self.name, "path": str(self.path), "entries": len(self),
            "max_entries": self.max_entries, "evictions": self.evictions,
            "errors": self.errors, "recoveries": self.recoveries,
            "fallback": self._fallback is not None,
        }
        if self._fallback is None:
            with contextlib.suppress(OSError):
                result["file_bytes"] = self.path.stat().st_size
        else:
            result["fallback_bytes"] = self._fallback.bytes
        return result

    def close(self) -> None:
        with self._lock:
            self._close_connection()
            if self._fallback is not None:
                self._fallback.close()


def _count(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE name = 'count'").fetchone()
    if row is None or not isinstance(row[0], int):
        raise _Corrupt("entry counter missing")
    return int(row[0])


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass
