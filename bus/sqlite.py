"""The embedded default bus: a durable partitioned log in one SQLite file.

One process owns the file (the service takes a lock on its data directory), so
offsets are assigned in memory by the single writer thread and every append is
durable before ``publish`` returns (group commit, see :mod:`bus.sqlitedb`).

Delayed messages (``deliver_at``) wait in ``bus_delayed`` and are moved into the
log, atomically, when due. Log rows are deleted once every consumer group that
reads the topic has committed past them; nothing unconsumed is ever deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Sequence

from bus.aio import stop_tasks
from bus.base import DEFAULT_PARTITIONS, Bus, Message, Outgoing, Subscription, partition_for
from bus.positions import PartitionPositions
from bus.sqlitedb import Database

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS bus_topics(
    topic TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bus_log(
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    key TEXT,
    value BLOB NOT NULL,
    headers TEXT,
    ts REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS bus_log_pos ON bus_log(topic, partition, offset);
CREATE TABLE IF NOT EXISTS bus_offsets(
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    committed INTEGER NOT NULL,
    PRIMARY KEY(grp, topic, partition)
);
CREATE TABLE IF NOT EXISTS bus_delayed(
    id INTEGER PRIMARY KEY,
    due REAL NOT NULL,
    topic TEXT NOT NULL,
    key TEXT,
    value BLOB NOT NULL,
    headers TEXT
);
CREATE INDEX IF NOT EXISTS bus_delayed_due ON bus_delayed(due);
"""

_FETCH_PER_PARTITION = 256


class SQLiteBus(Bus):
    def __init__(
        self,
        db: Database,
        *,
        partitions: int = DEFAULT_PARTITIONS,
        commit_interval: float = 0.05,
        retention_interval: float = 30.0,
        compact_slice: int = 2000,
    ) -> None:
        self.db = db
        self.default_partitions = partitions
        self.commit_interval = commit_interval
        self.retention_interval = retention_interval
        self.compact_slice = compact_slice
        self._partitions: dict[str, int] = {}
        self._next_offset: dict[tuple[str, int], int] = {}
        self._high_water: dict[tuple[str, int], int] = {}  # last committed-to-disk offset
        self._wakeups: dict[str, asyncio.Event] = {}
        self._delayed_wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions: list[SQLiteSubscription] = []
        self._closed = False

    async def start(self) -> None:
        await self.db.migrate([SCHEMA])

        def load(conn: sqlite3.Connection) -> tuple[list[sqlite3.Row], list[sqlite3.Row]]:
            topics = conn.execute("SELECT topic, partitions FROM bus_topics").fetchall()
            highs = conn.execute(
                "SELECT topic, partition, MAX(offset) AS high FROM bus_log GROUP BY topic, partition"
            ).fetchall()
            return topics, highs

        topics, highs = await self.db.read(load)
        for row in topics:
            self._partitions[row["topic"]] = row["partitions"]
        # Offsets never go backwards, even after retention emptied a partition:
        # committed positions in bus_offsets may be ahead of what is left in the log.
        committed = await self.db.read(
            lambda c: c.execute(
                "SELECT topic, partition, MAX(committed) AS c FROM bus_offsets GROUP BY 1, 2"
            ).fetchall()
        )
        for row in committed:
            key = (row["topic"], row["partition"])
            self._next_offset[key] = max(self._next_offset.get(key, 0), row["c"] + 1)
        for row in highs:
            key = (row["topic"], row["partition"])
            self._next_offset[key] = max(self._next_offset.get(key, 0), row["high"] + 1)
            self._high_water[key] = row["high"]
        self._tasks.append(asyncio.create_task(self._move_delayed(), name="bus-delayed"))
        self._tasks.append(asyncio.create_task(self._retention(), name="bus-retention"))

    async def close(self) -> None:
        self._closed = True
        for sub in list(self._subscriptions):
            await sub.close()
        await stop_tasks(*self._tasks)
        self._tasks.clear()

    # -- publishing ------------------------------------------------------------------

    def partitions_of(self, topic: str) -> int:
        return self._partitions.get(topic, self.default_partitions)

    async def publish(self, *messages: Outgoing) -> None:
        if not messages:
            return
        now = time.time()
        immediate = [m for m in messages if m.deliver_at is None or m.deliver_at <= now]
        delayed = [m for m in messages if m.deliver_at is not None and m.deliver_at > now]
        new_topics = {m.topic for m in immediate} - self._partitions.keys()
        appended: list[tuple[str, int, int]] = []

        def append(conn: sqlite3.Connection) -> None:
            appended.clear()
            for topic in new_topics:
                conn.execute(
                    "INSERT OR IGNORE INTO bus_topics(topic, partitions) VALUES (?, ?)",
                    (topic, self.default_partitions),
                )
            staged: dict[tuple[str, int], int] = {}
            rows: list[tuple[object, ...]] = []
            for m in immediate:
                part = partition_for(m.key, self.partitions_of(m.topic), fallback=len(rows))
                pos = (m.topic, part)
                offset = staged.get(pos, self._next_offset.get(pos, 0))
                staged[pos] = offset + 1
                rows.append((m.topic, part, offset, m.key, m.value, _headers(m.headers), now))
                appended.append((m.topic, part, offset))
            conn.executemany(
                "INSERT INTO bus_log(topic, partition, offset, key, value, headers, ts) VALUES (?,?,?,?,?,?,?)",
                rows,
            )
            conn.executemany(
                "INSERT INTO bus_delayed(due, topic, key, value, headers) VALUES (?,?,?,?,?)",
                [(m.deliver_at, m.topic, m.key, m.value, _headers(m.headers)) for m in delayed],
            )
            # Only now, with every insert done, move the in-memory counters.
            self._next_offset.update(staged)

        await self.db.write(append)
        for topic in new_topics:
            self._partitions.setdefault(topic, self.default_partitions)
        self._advance_high_water(appended)
        if delayed:
            self._delayed_wakeup.set()

    def _advance_high_water(self, appended: list[tuple[str, int, int]]) -> None:
        touched = set()
        for topic, part, offset in appended:
            key = (topic, part)
            if offset > self._high_water.get(key, -1):
                self._high_water[key] = offset
            touched.add(topic)
        for topic in touched:
            event = self._wakeups.get(topic)
            if event is not None:
                event.set()

    def _wakeup(self, topic: str) -> asyncio.Event:
        return self._wakeups.setdefault(topic, asyncio.Event())

    def high_water(self, topic: str, partition: int) -> int:
        return self._high_water.get((topic, partition), -1)

    # -- delayed messages ------------------------------------------------------------------

    async def _move_delayed(self) -> None:
        while not self._closed:
            try:
                moved, next_due = await self._move_due_once()
            except Exception:
                log.exception("moving delayed messages failed; retrying")
                moved, next_due = 0, time.time() + 1.0
            if moved:
                continue
            self._delayed_wakeup.clear()
            wait = 5.0 if next_due is None else max(0.0, min(5.0, next_due - time.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._delayed_wakeup.wait()

    async def _move_due_once(self) -> tuple[int, float | None]:
        now = time.time()
        appended: list[tuple[str, int, int]] = []

        def move(conn: sqlite3.Connection) -> tuple[int, float | None]:
            appended.clear()
            due = conn.execute(
                "SELECT id, topic, key, value, headers FROM bus_delayed WHERE due <= ? ORDER BY due, id LIMIT 500",
                (now,),
            ).fetchall()
            staged: dict[tuple[str, int], int] = {}
            for row in due:
                topic = row["topic"]
                if topic not in self._partitions:
                    conn.execute(
                        "INSERT OR IGNORE INTO bus_topics(topic, partitions) VALUES (?, ?)",
                        (topic, self.default_partitions),
                    )
                part = partition_for(row["key"], self.partitions_of(topic), fallback=row["id"])
                pos = (topic, part)
                offset = staged.get(pos, self._next_offset.get(pos, 0))
                staged[pos] = offset + 1
                conn.execute(
                    "INSERT INTO bus_log(topic, partition, offset, key, value, headers, ts) VALUES (?,?,?,?,?,?,?)",
                    (topic, part, offset, row["key"], row["value"], row["headers"], now),
                )
                appended.append((topic, part, offset))
            if due:
                conn.executemany("DELETE FROM bus_delayed WHERE id = ?", [(row["id"],) for row in due])
            self._next_offset.update(staged)
            nxt = conn.execute("SELECT MIN(due) AS due FROM bus_delayed").fetchone()
            return len(due), nxt["due"]

        moved, next_due = await self.db.write(move)
        for topic, _, _ in appended:
            self._partitions.setdefault(topic, self.default_partitions)
        self._advance_high_water(appended)
        return moved, next_due

    async def topics(self) -> list[str]:
        return sorted(self._partitions)

    async def pending_delayed(self, topic: str) -> int:
        row = await self.db.read(
            lambda c: c.execute("SELECT COUNT(*) AS n FROM bus_delayed WHERE topic = ?", (topic,)).fetchone()
        )
        return int(row["n"])

    # -- retention ----------------------------------------------------------------------

    async def _retention(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.retention_interval)
            try:
                await self.compact()
            except Exception:
                log.exception("bus retention pass failed")

    async def compact(self) -> int:
        """Delete log rows every group reading the topic has committed past.

        In slices of :attr:`compact_slice` rows, one short write transaction each: a large
        backlog deleted in one transaction held the single writer (and every append, ack
        and record update queued behind it) for over a second.
        """
        lows = await self.db.read(
            lambda c: c.execute(
                "SELECT topic, partition, MIN(committed) AS low FROM bus_offsets GROUP BY topic, partition"
            ).fetchall()
        )
        deleted = 0
        for row in lows:
            topic, partition, low = row["topic"], row["partition"], row["low"]
            while True:
                delete = functools.partial(self._delete_slice, topic=topic, partition=partition, low=low)
                count = await self.db.write(delete)
                deleted += count
                if count < self.compact_slice:
                    break
        return deleted

    def _delete_slice(self, conn: sqlite3.Connection, topic: str, partition: int, low: int) -> int:
        cur = conn.execute(
            "DELETE FROM bus_log WHERE id IN (SELECT id FROM bus_log"
            " WHERE topic = ? AND partition = ? AND offset <= ? ORDER BY offset LIMIT ?)",
            (topic, partition, low, self.compact_slice),
        )
        return cur.rowcount

    # -- consuming ----------------------------------------------------------------------

    def subscribe(self, group: str, topics: Sequence[str], *, max_in_flight: int = 1000) -> Subscription:
        sub = SQLiteSubscription(self, group, list(topics), max_in_flight)
        self._subscriptions.append(sub)
        return sub

    def _forget(self, sub: SQLiteSubscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscriptions.remove(sub)

    async def lag(self, group: str, topic: str) -> dict[int, int]:
        committed = await self._committed(group, topic)
        return {p: max(0, self.high_water(topic, p) - committed.get(p, -1)) for p in range(self.partitions_of(topic))}

    async def _committed(self, group: str, topic: str) -> dict[int, int]:
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT partition, committed FROM bus_offsets WHERE grp = ? AND topic = ?", (group, topic)
            ).fetchall()
        )
        return {row["partition"]: row["committed"] for row in rows}


class SQLiteSubscription(Subscription):
    def __init__(self, bus: SQLiteBus, group: str, topics: list[str], max_in_flight: int) -> None:
        self.bus = bus
        self.group = group
        self.topics = topics
        self.max_in_flight = max_in_flight
        self._positions: dict[tuple[str, int], PartitionPositions] = {}
        self._loaded = False
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._cursor = 0

    async def _load(self) -> None:
        if self._loaded:
            return
        for topic in self.topics:
            committed = await self.bus._committed(self.group, topic)
            for part in range(self.bus.partitions_of(topic)):
                self._positions[(topic, part)] = PartitionPositions(committed.get(part, -1))

            def register(conn: sqlite3.Connection, topic: str = topic) -> None:
                # Registering the group pins the log for retention from now on.
                conn.executemany(
                    "INSERT OR IGNORE INTO bus_offsets(grp, topic, partition, committed) VALUES (?,?,?,?)",
                    [
                        (self.group, topic, p, self._positions[(topic, p)].committed)
                        for p in range(self.bus.partitions_of(topic))
                    ],
                )

            await self.bus.db.write(register)
        self._loaded = True
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"bus-commit-{self.group}")

    def _position(self, topic: str, part: int) -> PartitionPositions:
        pos = self._positions.get((topic, part))
        if pos is None:  # a topic created after we subscribed
            pos = PartitionPositions(-1)
            self._positions[(topic, part)] = pos
        return pos

    @property
    def in_flight(self) -> int:
        return sum(p.in_flight for p in self._positions.values())

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        await self._load()
        deadline = time.monotonic() + timeout
        while not self._closed:
            budget = min(max_messages, self.max_in_flight - self.in_flight)
            if budget <= 0:
                self._capacity.clear()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._capacity.wait()
                continue
            wakeups = [self.bus._wakeup(t) for t in self.topics]
            for event in wakeups:
                event.clear()
            batch = await self._read(budget)
            if batch:
                return batch
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            waiters = [asyncio.create_task(e.wait()) for e in wakeups]
            try:
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
        return []

    async def _read(self, budget: int) -> list[Message]:
        candidates = []
        for topic in self.topics:
            for part in range(self.bus.partitions_of(topic)):
                pos = self._position(topic, part)
                if self.bus.high_water(topic, part) > pos.last_delivered:
                    candidates.append((topic, part, pos.last_delivered))
        if not candidates:
            return []
        # Rotate the starting partition so a busy partition cannot starve the others.
        self._cursor = (self._cursor + 1) % len(candidates)
        candidates = candidates[self._cursor :] + candidates[: self._cursor]
        share = max(1, min(_FETCH_PER_PARTITION, budget // len(candidates) or 1))

        def read(conn: sqlite3.Connection) -> list[Message]:
            out: list[Message] = []
            # First a fair share per partition, then fill the rest of the budget from
            # partitions that had more.
            pending = list(candidates)
            for limit_of in (lambda: share, lambda: budget - len(out)):
                more = []
                for topic, part, after in pending:
                    limit = min(limit_of(), budget - len(out))
                    if limit <= 0:
                        break
                    rows = conn.execute(
                        "SELECT offset, key, value, headers, ts FROM bus_log "
                        "WHERE topic = ? AND partition = ? AND offset > ? ORDER BY offset LIMIT ?",
                        (topic, part, after, limit),
                    ).fetchall()
                    for row in rows:
                        out.append(
                            Message(
                                topic=topic,
                                partition=part,
                                offset=row["offset"],
                                key=row["key"],
                                value=bytes(row["value"]),
                                headers=json.loads(row["headers"]) if row["headers"] else {},
                                timestamp=row["ts"],
                            )
                        )
                    if len(rows) == limit:
                        more.append((topic, part, rows[-1]["offset"]))
                pending = more
                if not pending or len(out) >= budget:
                    break
            return out

        batch = await self.bus.db.read(read)
        for message in batch:
            self._position(message.topic, message.partition).delivered(message.offset)
        return batch

    def ack(self, message: Message) -> None:
        self._position(message.topic, message.partition).ack(message.offset)
        self._capacity.set()

    async def commit(self) -> None:
        dirty = [(key, pos.committed) for key, pos in self._positions.items() if pos.dirty]
        if not dirty:
            return
        for key, _ in dirty:
            self._positions[key].dirty = False

        def store(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO bus_offsets(grp, topic, partition, committed) VALUES (?,?,?,?) "
                "ON CONFLICT(grp, topic, partition) DO UPDATE SET committed = excluded.committed "
                "WHERE excluded.committed > bus_offsets.committed",
                [(self.group, topic, part, committed) for (topic, part), committed in dirty],
            )

        try:
            await self.bus.db.write(store)
        except BaseException:
            for key, _ in dirty:
                self._positions[key].dirty = True
            raise

    async def _flush_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.bus.commit_interval)
            try:
                await self.commit()
            except Exception:
                log.exception("committing bus positions failed; will retry")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._capacity.set()
        await stop_tasks(self._flusher)
        if self._loaded:
            await self.commit()
        self.bus._forget(self)


def _headers(headers: dict[str, str]) -> str | None:
    return json.dumps(headers, separators=(",", ":")) if headers else None
