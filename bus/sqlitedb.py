"""SQLite in WAL mode with one writer thread and group commit.

Why this shape:

* SQLite allows one writer at a time. Funnelling every write through one thread
  removes lock contention, and draining the queue into a single transaction
  (group commit) pays one fsync for many callers: hundreds of durable appends per
  fsync under load, one per fsync when idle.
* Each caller's work runs inside its own SAVEPOINT, so one failing write does not
  roll back its neighbours in the same group.
* A caller's future resolves only after COMMIT returned, so "the call returned"
  means "the data is on disk" (``synchronous=FULL``; ``NORMAL`` survives a killed
  process but not a power cut).
* Reads use a small pool of separate connections; WAL lets them run while the
  writer commits, and they always see committed data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

_MAX_GROUP = 512
_STOP = object()


def connect(path: Path, *, synchronous: str = "FULL", readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=30000")
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class Database:
    """An SQLite file with an async write queue (group commit) and async reads."""

    def __init__(self, path: Path, *, synchronous: str = "FULL", readers: int = 4) -> None:
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        self.path = path
        self._synchronous = synchronous
        self._readers = readers
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._read_pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0  # transactions committed (for benchmarks and tests)
        self.writes = 0  # write calls served

    async def open(self, migrations: Iterable[str] = ()) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._loop = asyncio.get_running_loop()
        conn = connect(self.path, synchronous=self._synchronous)
        for statement in migrations:
            conn.executescript(statement)
        self._read_pool = ThreadPoolExecutor(self._readers, thread_name_prefix="sqlite-read")
        self._thread = threading.Thread(target=self._writer, args=(conn,), name="sqlite-writer", daemon=True)
        self._thread.start()

    async def migrate(self, statements: Iterable[str]) -> None:
        """Run DDL (idempotent ``CREATE ... IF NOT EXISTS``) through the writer."""
        # executescript() would COMMIT the writer's open transaction, so run DDL
        # statement by statement inside it instead.
        parts = [p.strip() for script in statements for p in script.split(";") if p.strip()]

        def run(conn: sqlite3.Connection) -> None:
            for part in parts:
                conn.execute(part)

        await self.write(run)

    async def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._read_pool is not None:
            self._read_pool.shutdown(wait=True)
            self._read_pool = None
        with self._read_lock:
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in the next group transaction; returns after COMMIT."""
        if self._thread is None or self._loop is None:
            raise RuntimeError("database is not open")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put((fn, future))
        return await future

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._read_pool is None or self._loop is None:
            raise RuntimeError("database is not open")
        return await self._loop.run_in_executor(self._read_pool, self._run_read, fn)

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, synchronous=self._synchronous, readonly=True)
            self._local.conn = conn
            with self._read_lock:
                self._read_conns.append(conn)
        return fn(conn)

    # -- writer thread -------------------------------------------------------------

    def _writer(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                group = [first]
                stop_after = False
                while len(group) < _MAX_GROUP:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop_after = True
                        break
                    group.append(item)
                self._run_group(conn, group)
                if stop_after:
                    return
        finally:
            conn.close()

    def _run_group(self, conn: sqlite3.Connection, group: list[Any]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, future in group:
                conn.execute("SAVEPOINT item")
                try:
                    result = fn(conn)
                except BaseException as exc:
                    conn.execute("ROLLBACK TO item")
                    conn.execute("RELEASE item")
                    outcomes.append((future, False, exc))
                else:
                    conn.execute("RELEASE item")
                    outcomes.append((future, True, result))
            conn.execute("COMMIT")
            self.commits += 1
            self.writes += len(group)
        except BaseException as exc:
            log.exception("sqlite group commit failed")
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            outcomes = [(future, False, exc) for _, future in group]
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_resolve_all, outcomes)


def _resolve_all(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
