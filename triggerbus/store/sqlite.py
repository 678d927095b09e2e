"""The embedded store: functions, triggers, async configs, records, leases, timer state.

It shares the SQLite file (and writer thread) with the embedded bus, so one
process with no servers keeps everything durable.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from bus.sqlitedb import Database
from invoker.records import PAYLOAD_KEEP_BYTES, RESPONSE_KEEP_BYTES, Attempt, Record, RecordQuery, RecordState
from schemas.async_config import AsyncInvokeConfig
from schemas.records import AsyncStatus
from triggerbus.store.models import (
    QueueDepth,
    StoredDISStream,
    StoredFunction,
    StoredLogGroup,
    StoredLogStream,
    StoredTopic,
    StoredTrigger,
)
from triggerbus.store.stats import STATS_LOOKBACK_S, AttemptSample, StatsBucket, bucket_samples, check_window
from triggerbus.store.traces import (
    TraceEntry,
    TraceQuery,
    UnknownMarker,
    absorbed_by_request,
    audit_view,
    system_entry,
    trace_columns,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS functions(
    urn TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    doc TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS functions_project ON functions(project_id, created);
CREATE TABLE IF NOT EXISTS code(
    digest TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS triggers(
    trigger_id TEXT PRIMARY KEY,
    function_urn TEXT NOT NULL,
    trigger_type TEXT NOT NULL,
    status TEXT NOT NULL,
    doc TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS triggers_function ON triggers(function_urn, created);
CREATE INDEX IF NOT EXISTS triggers_type ON triggers(trigger_type);
CREATE TABLE IF NOT EXISTS async_configs(
    function_urn TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records(
    request_id TEXT PRIMARY KEY,
    function_urn TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    error_code INTEGER NOT NULL DEFAULT 0,
    error_message TEXT NOT NULL DEFAULT '',
    start_time REAL,
    end_time REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    trigger_id TEXT,
    trigger_type TEXT,
    source TEXT,
    condition TEXT NOT NULL DEFAULT '',
    redrive_of TEXT,
    payload BLOB,
    response BLOB,
    destination TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS records_function ON records(function_urn, created);
CREATE INDEX IF NOT EXISTS records_function_status ON records(function_urn, status, created);
CREATE INDEX IF NOT EXISTS records_status ON records(status, created);
CREATE INDEX IF NOT EXISTS records_trigger ON records(trigger_id, created);
CREATE INDEX IF NOT EXISTS records_redrive ON records(redrive_of);
CREATE TABLE IF NOT EXISTS record_sources(
    request_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY(name, value, request_id)
);
CREATE INDEX IF NOT EXISTS record_sources_request ON record_sources(request_id);
CREATE TABLE IF NOT EXISTS attempts(
    request_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    start REAL NOT NULL,
    end REAL,
    status TEXT NOT NULL,
    error_code INTEGER NOT NULL DEFAULT 0,
    error_message TEXT NOT NULL DEFAULT '',
    duration_ms REAL NOT NULL DEFAULT 0,
    memory_mb REAL NOT NULL DEFAULT 0,
    logs TEXT NOT NULL DEFAULT '',
    PRIMARY KEY(request_id, n)
);
CREATE TABLE IF NOT EXISTS leases(
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS timer_state(
    trigger_id TEXT PRIMARY KEY,
    last_fire REAL,
    next_fire REAL
);
CREATE TABLE IF NOT EXISTS timer_fires(
    trigger_id TEXT NOT NULL,
    scheduled REAL NOT NULL,
    request_id TEXT NOT NULL,
    fired_by TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY(trigger_id, scheduled)
);
CREATE TABLE IF NOT EXISTS checkpoints(
    trigger_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY(trigger_id, name)
);
CREATE TABLE IF NOT EXISTS audit(
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    action TEXT NOT NULL,
    resource TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""

# Added with CTS traces and SMN topics (additive: new tables only, so older data files just
# gain them). ``audit`` above is no longer written; retention empties it.
TRACES_TOPICS_SCHEMA = """
CREATE TABLE IF NOT EXISTS traces(
    seq INTEGER PRIMARY KEY,
    trace_id TEXT NOT NULL UNIQUE,
    time_ms INTEGER NOT NULL,
    recorded REAL NOT NULL,
    trace_name TEXT NOT NULL,
    trace_type TEXT NOT NULL,
    service_type TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    resource_name TEXT NOT NULL,
    trace_status TEXT NOT NULL,
    user_name TEXT NOT NULL,
    doc TEXT NOT NULL,
    detail TEXT NOT NULL,
    targets TEXT
);
CREATE INDEX IF NOT EXISTS traces_time ON traces(time_ms, seq);
CREATE INDEX IF NOT EXISTS traces_resource ON traces(resource_id, time_ms);
CREATE INDEX IF NOT EXISTS traces_name ON traces(trace_name, time_ms);
CREATE INDEX IF NOT EXISTS traces_recorded ON traces(recorded);
CREATE INDEX IF NOT EXISTS traces_pending ON traces(recorded) WHERE targets IS NOT NULL;
CREATE TABLE IF NOT EXISTS smn_topics(
    topic_urn TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS smn_topics_project ON smn_topics(project_id, created);
"""
# Added with DIS streams and LTS log groups/streams (additive: new tables only). Names are
# unique where the APIs say so: a DIS stream per project, a log group per project, a log
# stream per group.
STREAMS_SCHEMA = """
CREATE TABLE IF NOT EXISTS dis_streams(
    project_id TEXT NOT NULL,
    stream_name TEXT NOT NULL,
    doc TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY(project_id, stream_name)
);
CREATE TABLE IF NOT EXISTS lts_groups(
    log_group_id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    doc TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE(project_id, name)
);
CREATE TABLE IF NOT EXISTS lts_streams(
    log_stream_id TEXT PRIMARY KEY,
    log_group_id TEXT NOT NULL,
    name TEXT NOT NULL,
    doc TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE(log_group_id, name)
);
"""
_TRACE_COLUMNS = (
    "trace_id", "time_ms", "recorded", "trace_name", "trace_type", "service_type", "resource_type", "resource_id",
    "resource_name", "trace_status", "user_name", "doc", "detail", "targets",
)  # fmt: skip

_RECORD_COLUMNS = (
    "request_id", "function_urn", "status", "created", "error_code", "error_message", "start_time",
    "end_time", "attempts", "next_attempt_at", "trigger_id", "trigger_type", "source", "condition",
    "redrive_of", "payload", "response", "destination", "cancel_requested",
)  # fmt: skip
_UPDATABLE = set(_RECORD_COLUMNS) - {"request_id", "function_urn", "created"}


def _record_values(record: Record) -> tuple[Any, ...]:
    return (
        record.request_id,
        record.function_urn,
        record.status.value,
        record.created,
        record.error_code,
        record.error_message,
        record.start_time,
        record.end_time,
        record.attempts,
        record.next_attempt_at,
        record.trigger_id,
        record.trigger_type,
        json.dumps(record.source) if record.source else None,
        record.condition,
        record.redrive_of,
        record.payload[:PAYLOAD_KEEP_BYTES],
        record.response[:RESPONSE_KEEP_BYTES],
        json.dumps(record.destination) if record.destination else None,
        int(record.cancel_requested),
    )


def _encode(name: str, value: Any) -> Any:
    if name in ("source", "destination"):
        return json.dumps(value) if value else None
    if name == "status":
        return AsyncStatus(value).value
    if name == "payload":
        return bytes(value)[:PAYLOAD_KEEP_BYTES]
    if name == "response":
        return bytes(value)[:RESPONSE_KEEP_BYTES]
    if name == "cancel_requested":
        return int(bool(value))
    return value


def _row_to_record(row: sqlite3.Row) -> Record:
    return Record(
        request_id=row["request_id"],
        function_urn=row["function_urn"],
        status=AsyncStatus(row["status"]),
        created=row["created"],
        error_code=row["error_code"],
        error_message=row["error_message"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        trigger_id=row["trigger_id"],
        trigger_type=row["trigger_type"],
        source=json.loads(row["source"]) if row["source"] else {},
        condition=row["condition"],
        redrive_of=row["redrive_of"],
        payload=bytes(row["payload"] or b""),
        response=bytes(row["response"] or b""),
        destination=json.loads(row["destination"]) if row["destination"] else {},
        cancel_requested=bool(row["cancel_requested"]),
    )


def _source_rows(record_id: str, source: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Flatten scalar source coordinates so operators can search by them."""
    return [
        (record_id, str(name), str(value))
        for name, value in source.items()
        if isinstance(value, str | int | float) and not isinstance(value, bool) and len(str(value)) <= 1024
    ]


class SQLiteStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def start(self) -> None:
        await self.db.migrate([SCHEMA, TRACES_TOPICS_SCHEMA, STREAMS_SCHEMA])

    async def close(self) -> None:
        return None  # the Database is shared with the bus; its owner closes it

    # -- functions ---------------------------------------------------------------------------

    async def put_function(self, fn: StoredFunction, *, create: bool) -> bool:
        """Insert (create=True: only if absent) or replace. False if create found one."""

        def run(conn: sqlite3.Connection) -> bool:
            if create:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO functions(urn, project_id, name, doc, created) VALUES (?,?,?,?,?)",
                    (fn.urn, fn.project_id, fn.name, fn.model_dump_json(), fn.created),
                )
                return cur.rowcount == 1
            conn.execute("UPDATE functions SET doc = ? WHERE urn = ?", (fn.model_dump_json(), fn.urn))
            return True

        return await self.db.write(run)

    async def get_function(self, urn: str) -> StoredFunction | None:
        row = await self.db.read(lambda c: c.execute("SELECT doc FROM functions WHERE urn = ?", (urn,)).fetchone())
        return StoredFunction.model_validate_json(row["doc"]) if row else None

    async def list_functions(self, project_id: str, marker: int, limit: int) -> tuple[list[StoredFunction], int]:
        def run(conn: sqlite3.Connection) -> tuple[list[StoredFunction], int]:
            rows = conn.execute(
                "SELECT doc FROM functions WHERE project_id = ? ORDER BY created, urn LIMIT ? OFFSET ?",
                (project_id, limit, marker),
            ).fetchall()
            count = conn.execute("SELECT COUNT(*) FROM functions WHERE project_id = ?", (project_id,)).fetchone()[0]
            return [StoredFunction.model_validate_json(r["doc"]) for r in rows], int(count)

        return await self.db.read(run)

    async def delete_function(self, urn: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM functions WHERE urn = ?", (urn,))
            conn.execute("DELETE FROM async_configs WHERE function_urn = ?", (urn,))
            prefix = urn + ":"  # (not LIKE: '_' in a name would be a wildcard)
            conn.execute("DELETE FROM triggers WHERE substr(function_urn, 1, ?) = ?", (len(prefix), prefix))
            return cur.rowcount == 1

        return await self.db.write(run)

    async def put_code(self, digest: str, data: bytes) -> None:
        await self.db.write(
            lambda c: c.execute("INSERT OR IGNORE INTO code(digest, data) VALUES (?, ?)", (digest, data))
        )

    async def get_code(self, digest: str) -> bytes | None:
        row = await self.db.read(lambda c: c.execute("SELECT data FROM code WHERE digest = ?", (digest,)).fetchone())
        return bytes(row["data"]) if row else None

    # -- triggers ----------------------------------------------------------------------------

    async def put_trigger(self, trigger: StoredTrigger) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO triggers(trigger_id, function_urn, trigger_type, status, doc, created) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT(trigger_id) DO UPDATE SET status = excluded.status, "
                "doc = excluded.doc",
                (
                    trigger.trigger_id,
                    trigger.function_urn,
                    trigger.trigger_type,
                    trigger.status,
                    trigger.model_dump_json(),
                    trigger.created,
                ),
            )

        await self.db.write(run)

    async def get_trigger(self, trigger_id: str) -> StoredTrigger | None:
        row = await self.db.read(
            lambda c: c.execute("SELECT doc FROM triggers WHERE trigger_id = ?", (trigger_id,)).fetchone()
        )
        return StoredTrigger.model_validate_json(row["doc"]) if row else None

    async def list_triggers(
        self, function_urn: str | None = None, trigger_type: str | None = None
    ) -> list[StoredTrigger]:
        sql = "SELECT doc FROM triggers"
        clauses: list[str] = []
        args: list[Any] = []
        if function_urn is not None:
            clauses.append("function_urn = ?")
            args.append(function_urn)
        if trigger_type is not None:
            clauses.append("trigger_type = ?")
            args.append(trigger_type)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY created, trigger_id"
        rows = await self.db.read(lambda c: c.execute(sql, args).fetchall())
        return [StoredTrigger.model_validate_json(r["doc"]) for r in rows]

    async def delete_trigger(self, trigger_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM triggers WHERE trigger_id = ?", (trigger_id,))
            conn.execute("DELETE FROM timer_state WHERE trigger_id = ?", (trigger_id,))
            conn.execute("DELETE FROM checkpoints WHERE trigger_id = ?", (trigger_id,))
            return cur.rowcount == 1

        return await self.db.write(run)

    # -- async configs -------------------------------------------------------------------------

    async def put_async_config(self, config: AsyncInvokeConfig, unqualified_urn: str) -> None:
        await self.db.write(
            lambda c: c.execute(
                "INSERT INTO async_configs(function_urn, doc) VALUES (?, ?) "
                "ON CONFLICT(function_urn) DO UPDATE SET doc = excluded.doc",
                (unqualified_urn, config.model_dump_json()),
            )
        )

    async def get_async_config(self, unqualified_urn: str) -> AsyncInvokeConfig | None:
        row = await self.db.read(
            lambda c: c.execute("SELECT doc FROM async_configs WHERE function_urn = ?", (unqualified_urn,)).fetchone()
        )
        return AsyncInvokeConfig.model_validate_json(row["doc"]) if row else None

    async def all_async_configs(self) -> dict[str, AsyncInvokeConfig]:
        rows = await self.db.read(lambda c: c.execute("SELECT function_urn, doc FROM async_configs").fetchall())
        return {r["function_urn"]: AsyncInvokeConfig.model_validate_json(r["doc"]) for r in rows}

    async def delete_async_config(self, unqualified_urn: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM async_configs WHERE function_urn = ?", (unqualified_urn,)).rowcount == 1

        return await self.db.write(run)

    # -- records (invoker.records.RecordStore) ---------------------------------------------------

    async def insert_record(self, record: Record) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                f"INSERT OR IGNORE INTO records({', '.join(_RECORD_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_RECORD_COLUMNS))})",
                _record_values(record),
            )
            if cur.rowcount == 1 and record.source:
                conn.executemany(
                    "INSERT OR IGNORE INTO record_sources(request_id, name, value) VALUES (?,?,?)",
                    _source_rows(record.request_id, record.source),
                )
            return cur.rowcount == 1

        return await self.db.write(run)

    async def get_record(self, request_id: str) -> Record | None:
        row = await self.db.read(
            lambda c: c.execute("SELECT * FROM records WHERE request_id = ?", (request_id,)).fetchone()
        )
        return _row_to_record(row) if row else None

    async def record_state(self, request_id: str) -> RecordState | None:
        row = await self.db.read(
            lambda c: c.execute(
                "SELECT status, attempts, error_message FROM records WHERE request_id = ?", (request_id,)
            ).fetchone()
        )
        return RecordState(AsyncStatus(row["status"]), row["attempts"], row["error_message"]) if row else None

    @staticmethod
    def _update_sql(fields: dict[str, Any]) -> tuple[str, list[Any]]:
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"cannot update record fields {sorted(unknown)}")
        sets = ", ".join(f"{name} = ?" for name in fields)
        return sets, [_encode(name, value) for name, value in fields.items()]

    async def update_record(self, request_id: str, **fields: Any) -> None:
        if not fields:
            return
        sets, args = self._update_sql(fields)

        def run(conn: sqlite3.Connection) -> None:
            cur = conn.execute(f"UPDATE records SET {sets} WHERE request_id = ?", (*args, request_id))
            if "source" in fields and cur.rowcount:
                self._index_source(conn, request_id, fields["source"] or {})

        await self.db.write(run)

    @staticmethod
    def _index_source(conn: sqlite3.Connection, request_id: str, source: dict[str, Any]) -> None:
        conn.execute("DELETE FROM record_sources WHERE request_id = ?", (request_id,))
        conn.executemany(
            "INSERT OR IGNORE INTO record_sources(request_id, name, value) VALUES (?,?,?)",
            _source_rows(request_id, source),
        )

    async def start_attempt(self, request_id: str, attempt: Attempt) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE records SET status = 'RUNNING', attempts = ?, next_attempt_at = NULL, "
                "start_time = COALESCE(start_time, ?) WHERE request_id = ? AND status IN ('WAIT', 'RUNNING')",
                (attempt.n, attempt.start, request_id),
            )
            if cur.rowcount != 1:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO attempts(request_id, n, start, status) VALUES (?,?,?,?)",
                (request_id, attempt.n, attempt.start, attempt.status),
            )
            return True

        return await self.db.write(run)

    async def cancel_waiting(self, request_id: str, message: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE records SET status = 'DISCARD', error_code = 4208, error_message = ?, condition = 'Canceled', "
                "end_time = ?, next_attempt_at = NULL, cancel_requested = 1 WHERE request_id = ? AND status = 'WAIT'",
                (message, time.time(), request_id),
            )
            return cur.rowcount == 1

        return await self.db.write(run)

    async def finish_attempt(self, request_id: str, attempt: Attempt, **record_fields: Any) -> None:
        sets, args = self._update_sql(record_fields) if record_fields else ("", [])

        def run(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM records WHERE request_id = ?", (request_id,)).fetchone() is None:
                return  # no record (purged or never created): nothing to attach the attempt to
            conn.execute(
                "INSERT OR REPLACE INTO attempts(request_id, n, start, end, status, error_code, error_message, "
                "duration_ms, memory_mb, logs) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    request_id,
                    attempt.n,
                    attempt.start,
                    attempt.end,
                    attempt.status,
                    attempt.error_code,
                    attempt.error_message,
                    attempt.duration_ms,
                    attempt.memory_mb,
                    attempt.logs,
                ),
            )
            if sets:
                conn.execute(f"UPDATE records SET {sets} WHERE request_id = ?", (*args, request_id))

        await self.db.write(run)

    async def list_attempts(self, request_id: str) -> list[Attempt]:
        rows = await self.db.read(
            lambda c: c.execute("SELECT * FROM attempts WHERE request_id = ? ORDER BY n", (request_id,)).fetchall()
        )
        return [
            Attempt(
                n=r["n"],
                start=r["start"],
                end=r["end"],
                status=r["status"],
                error_code=r["error_code"],
                error_message=r["error_message"],
                duration_ms=r["duration_ms"],
                memory_mb=r["memory_mb"],
                logs=r["logs"],
            )
            for r in rows
        ]

    async def list_records(self, query: RecordQuery) -> tuple[list[Record], int]:
        clauses = ["r.function_urn = ?"]
        args: list[Any] = [query.function_urn]
        if query.status is not None:
            clauses.append("r.status = ?")
            args.append(query.status.value)
        if query.request_id:
            clauses.append("r.request_id = ?")
            args.append(query.request_id)
        if query.begin is not None:
            clauses.append("r.created >= ?")
            args.append(query.begin)
        if query.end is not None:
            clauses.append("r.created <= ?")
            args.append(query.end)
        if query.trigger_id:
            clauses.append("r.trigger_id = ?")
            args.append(query.trigger_id)
        if query.redrive_of:
            clauses.append("r.redrive_of = ?")
            args.append(query.redrive_of)
        for name, value in query.source.items():
            clauses.append("r.request_id IN (SELECT request_id FROM record_sources WHERE name = ? AND value = ?)")
            args.extend([name, str(value)])
        where = " AND ".join(clauses)

        def run(conn: sqlite3.Connection) -> tuple[list[Record], int]:
            rows = conn.execute(
                f"SELECT r.* FROM records r WHERE {where} ORDER BY r.created DESC, r.request_id LIMIT ? OFFSET ?",
                (*args, query.limit, query.marker),
            ).fetchall()
            count = conn.execute(f"SELECT COUNT(*) FROM records r WHERE {where}", args).fetchone()[0]
            return [_row_to_record(r) for r in rows], int(count)

        return await self.db.read(run)

    async def attempt_stats(self, function_urn: str, begin: float, end: float, bucket_s: float) -> list[StatsBucket]:
        check_window(begin, end, bucket_s)

        def run(conn: sqlite3.Connection) -> list[AttemptSample]:
            rows = conn.execute(
                "SELECT a.start, a.status, a.error_code, a.duration_ms FROM records r "
                "JOIN attempts a ON a.request_id = r.request_id "
                "WHERE r.function_urn = ? AND r.created >= ? AND r.created < ? AND a.start >= ? AND a.start < ?",
                (function_urn, begin - STATS_LOOKBACK_S, end, begin, end),
            ).fetchall()
            return [AttemptSample(r[0], r[1], r[2], r[3]) for r in rows]

        return bucket_samples(await self.db.read(run), begin, end, bucket_s)

    async def queue_depths(self) -> list[QueueDepth]:
        def run(conn: sqlite3.Connection) -> list[QueueDepth]:
            rows = conn.execute(
                "SELECT function_urn, SUM(status = 'WAIT'), SUM(status = 'RUNNING'), "
                "MIN(CASE WHEN status = 'WAIT' THEN created END) FROM records "
                "WHERE status IN ('WAIT', 'RUNNING') GROUP BY function_urn"
            ).fetchall()
            return [QueueDepth(r[0], int(r[1]), int(r[2]), r[3]) for r in rows]

        return await self.db.read(run)

    async def purge_records(self, older_than: float) -> int:
        """Retention: drop terminal records (and their attempts) created before ``older_than``."""

        def run(conn: sqlite3.Connection) -> int:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT request_id FROM records WHERE created < ? AND status IN ('SUCCESS','FAIL','DISCARD') "
                    "LIMIT 5000",
                    (older_than,),
                )
            ]
            conn.executemany("DELETE FROM attempts WHERE request_id = ?", [(i,) for i in ids])
            conn.executemany("DELETE FROM record_sources WHERE request_id = ?", [(i,) for i in ids])
            conn.executemany("DELETE FROM records WHERE request_id = ?", [(i,) for i in ids])
            conn.execute("DELETE FROM audit WHERE ts < ?", (older_than,))  # same retention as records
            conn.execute("DELETE FROM traces WHERE recorded < ?", (older_than,))
            return len(ids)

        return await self.db.write(run)

    # -- leases -----------------------------------------------------------------------------------

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take or renew ``name`` for ``ttl`` seconds; True if ``owner`` holds it now."""
        now = time.time()

        def run(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "INSERT INTO leases(name, owner, until) VALUES (?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, until = excluded.until "
                "WHERE leases.owner = excluded.owner OR leases.until < ?",
                (name, owner, now + ttl, now),
            )
            row = conn.execute("SELECT owner FROM leases WHERE name = ?", (name,)).fetchone()
            return bool(row and row["owner"] == owner)

        return await self.db.write(run)

    async def release_lease(self, name: str, owner: str) -> None:
        await self.db.write(lambda c: c.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner)))

    # -- timer state --------------------------------------------------------------------------------

    async def get_timer_state(self, trigger_id: str) -> tuple[float | None, float | None]:
        row = await self.db.read(
            lambda c: c.execute(
                "SELECT last_fire, next_fire FROM timer_state WHERE trigger_id = ?", (trigger_id,)
            ).fetchone()
        )
        return (row["last_fire"], row["next_fire"]) if row else (None, None)

    async def set_timer_next(self, trigger_id: str, next_fire: float | None) -> None:
        await self.db.write(
            lambda c: c.execute(
                "INSERT INTO timer_state(trigger_id, next_fire) VALUES (?, ?) "
                "ON CONFLICT(trigger_id) DO UPDATE SET next_fire = excluded.next_fire",
                (trigger_id, next_fire),
            )
        )

    async def claim_timer_fire(
        self, trigger_id: str, scheduled: float, request_id: str, owner: str, next_fire: float | None
    ) -> bool:
        """Record that ``scheduled`` fired; False if it had been fired already (by anyone).

        The primary key on (trigger, scheduled time) is the fence that keeps a fire
        single even when two schedulers both believe they hold the lease.
        """

        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO timer_fires(trigger_id, scheduled, request_id, fired_by, created) "
                "VALUES (?,?,?,?,?)",
                (trigger_id, scheduled, request_id, owner, time.time()),
            )
            conn.execute(
                "INSERT INTO timer_state(trigger_id, last_fire, next_fire) VALUES (?,?,?) "
                "ON CONFLICT(trigger_id) DO UPDATE SET last_fire = MAX(COALESCE(last_fire, 0), excluded.last_fire), "
                "next_fire = excluded.next_fire",
                (trigger_id, scheduled, next_fire),
            )
            return cur.rowcount == 1

        return await self.db.write(run)

    async def unsent_timer_fires(self, since: float) -> list[tuple[str, float, str]]:
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT f.trigger_id, f.scheduled, f.request_id FROM timer_fires f "
                "LEFT JOIN records r ON r.request_id = f.request_id "
                "WHERE f.created >= ? AND r.request_id IS NULL ORDER BY f.scheduled",
                (since,),
            ).fetchall()
        )
        return [(r["trigger_id"], r["scheduled"], r["request_id"]) for r in rows]

    async def purge_timer_fires(self, older_than: float) -> None:
        await self.db.write(lambda c: c.execute("DELETE FROM timer_fires WHERE created < ?", (older_than,)))

    # -- connector checkpoints (resume tokens, requested offset resets ...) -----------------------

    async def get_checkpoint(self, trigger_id: str, name: str) -> Any:
        row = await self.db.read(
            lambda c: c.execute(
                "SELECT value FROM checkpoints WHERE trigger_id = ? AND name = ?", (trigger_id, name)
            ).fetchone()
        )
        return json.loads(row["value"]) if row else None

    async def put_checkpoint(self, trigger_id: str, name: str, value: Any) -> None:
        await self.db.write(
            lambda c: c.execute(
                "INSERT INTO checkpoints(trigger_id, name, value, updated) VALUES (?,?,?,?) "
                "ON CONFLICT(trigger_id, name) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                (trigger_id, name, json.dumps(value), time.time()),
            )
        )

    async def delete_checkpoints(self, trigger_id: str) -> None:
        await self.db.write(lambda c: c.execute("DELETE FROM checkpoints WHERE trigger_id = ?", (trigger_id,)))

    # -- audit: CTS traces (triggerbus.store.traces) ---------------------------------------------------

    async def audit(self, action: str, resource: str, detail: dict[str, Any]) -> None:
        if absorbed_by_request(action, resource, detail):
            return  # the running API request writes the trace, with its HTTP outcome
        await self.insert_trace(system_entry(action, resource, detail))

    async def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        return [audit_view(e) for e in await self.list_traces(TraceQuery(audited_only=True, limit=limit))]

    async def insert_trace(self, entry: TraceEntry) -> bool:
        row = {
            **trace_columns(entry.trace),
            "trace_id": entry.trace_id,
            "recorded": entry.recorded,
            "doc": json.dumps(entry.trace, ensure_ascii=False),
            "detail": json.dumps(entry.detail, default=str),
            "targets": json.dumps(entry.targets) if entry.targets else None,
        }
        values = tuple(row[c] for c in _TRACE_COLUMNS)

        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                f"INSERT OR IGNORE INTO traces({', '.join(_TRACE_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_TRACE_COLUMNS))})",
                values,
            )
            return cur.rowcount == 1

        return await self.db.write(run)

    async def list_traces(self, query: TraceQuery) -> list[TraceEntry]:
        clauses: list[str] = []
        args: list[Any] = []
        if query.begin_ms is not None:
            clauses.append("time_ms >= ?")
            args.append(query.begin_ms)
        if query.end_ms is not None:
            clauses.append("time_ms <= ?")
            args.append(query.end_ms)
        for column, value in query.filters().items():  # column names from a fixed set
            clauses.append(f"{column} = ?")
            args.append(value)
        if query.trace_id is not None:
            clauses.append("trace_id = ?")
            args.append(query.trace_id)
        if query.audited_only:
            clauses.append("detail != 'null'")

        def run(conn: sqlite3.Connection) -> list[TraceEntry]:
            where, params = list(clauses), list(args)
            if query.after is not None:
                marker = conn.execute("SELECT time_ms, seq FROM traces WHERE trace_id = ?", (query.after,)).fetchone()
                if marker is None:
                    raise UnknownMarker(query.after)
                where.append("(time_ms < ? OR (time_ms = ? AND seq < ?))")
                params.extend([marker["time_ms"], marker["time_ms"], marker["seq"]])
            sql = "SELECT * FROM traces" + (" WHERE " + " AND ".join(where) if where else "")
            rows = conn.execute(sql + " ORDER BY time_ms DESC, seq DESC LIMIT ?", (*params, query.limit)).fetchall()
            return [_row_to_trace(r) for r in rows]

        return await self.db.read(run)

    async def pending_traces(self, recorded_before: float, limit: int) -> list[TraceEntry]:
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT * FROM traces WHERE targets IS NOT NULL AND recorded < ? ORDER BY recorded LIMIT ?",
                (recorded_before, limit),
            ).fetchall()
        )
        return [_row_to_trace(r) for r in rows]

    async def trace_delivered(self, trace_id: str) -> None:
        await self.db.write(lambda c: c.execute("UPDATE traces SET targets = NULL WHERE trace_id = ?", (trace_id,)))

    # -- SMN topics ----------------------------------------------------------------------------------

    async def put_topic(self, topic: StoredTopic) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO smn_topics(topic_urn, project_id, doc, created) VALUES (?,?,?,?)",
                (topic.topic_urn, topic.project_id, topic.model_dump_json(), topic.created),
            )
            return cur.rowcount == 1

        return await self.db.write(run)

    async def get_topic(self, topic_urn: str) -> StoredTopic | None:
        row = await self.db.read(
            lambda c: c.execute("SELECT doc FROM smn_topics WHERE topic_urn = ?", (topic_urn,)).fetchone()
        )
        return StoredTopic.model_validate_json(row["doc"]) if row else None

    async def list_topics(self, project_id: str, offset: int, limit: int) -> tuple[list[StoredTopic], int]:
        def run(conn: sqlite3.Connection) -> tuple[list[StoredTopic], int]:
            rows = conn.execute(
                "SELECT doc FROM smn_topics WHERE project_id = ? ORDER BY created, topic_urn LIMIT ? OFFSET ?",
                (project_id, limit, offset),
            ).fetchall()
            count = conn.execute("SELECT COUNT(*) FROM smn_topics WHERE project_id = ?", (project_id,)).fetchone()[0]
            return [StoredTopic.model_validate_json(r["doc"]) for r in rows], int(count)

        return await self.db.read(run)

    async def delete_topic(self, topic_urn: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM smn_topics WHERE topic_urn = ?", (topic_urn,)).rowcount == 1

        return await self.db.write(run)

    # -- DIS streams -----------------------------------------------------------------------------------

    async def put_dis_stream(self, stream: StoredDISStream) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO dis_streams(project_id, stream_name, doc, created) VALUES (?,?,?,?)",
                (stream.project_id, stream.stream_name, stream.model_dump_json(), stream.created),
            )
            return cur.rowcount == 1

        return await self.db.write(run)

    async def get_dis_stream(self, project_id: str, stream_name: str) -> StoredDISStream | None:
        row = await self.db.read(
            lambda c: c.execute(
                "SELECT doc FROM dis_streams WHERE project_id = ? AND stream_name = ?", (project_id, stream_name)
            ).fetchone()
        )
        return StoredDISStream.model_validate_json(row["doc"]) if row else None

    async def list_dis_streams(self, project_id: str, offset: int, limit: int) -> tuple[list[StoredDISStream], int]:
        def run(conn: sqlite3.Connection) -> tuple[list[StoredDISStream], int]:
            rows = conn.execute(
                "SELECT doc FROM dis_streams WHERE project_id = ? ORDER BY created, stream_name LIMIT ? OFFSET ?",
                (project_id, limit, offset),
            ).fetchall()
            count = conn.execute("SELECT COUNT(*) FROM dis_streams WHERE project_id = ?", (project_id,)).fetchone()[0]
            return [StoredDISStream.model_validate_json(r["doc"]) for r in rows], int(count)

        return await self.db.read(run)

    async def delete_dis_stream(self, project_id: str, stream_name: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "DELETE FROM dis_streams WHERE project_id = ? AND stream_name = ?", (project_id, stream_name)
            )
            return cur.rowcount == 1

        return await self.db.write(run)

    # -- LTS log groups and log streams ------------------------------------------------------------------

    async def put_log_group(self, group: StoredLogGroup) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO lts_groups(log_group_id, project_id, name, doc, created) VALUES (?,?,?,?,?)",
                (group.log_group_id, group.project_id, group.name, group.model_dump_json(), group.created),
            )
            return cur.rowcount == 1

        return await self.db.write(run)

    async def get_log_group(self, log_group_id: str) -> StoredLogGroup | None:
        row = await self.db.read(
            lambda c: c.execute("SELECT doc FROM lts_groups WHERE log_group_id = ?", (log_group_id,)).fetchone()
        )
        return StoredLogGroup.model_validate_json(row["doc"]) if row else None

    async def list_log_groups(self, project_id: str) -> list[StoredLogGroup]:
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT doc FROM lts_groups WHERE project_id = ? ORDER BY created, log_group_id", (project_id,)
            ).fetchall()
        )
        return [StoredLogGroup.model_validate_json(r["doc"]) for r in rows]

    async def delete_log_group(self, log_group_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM lts_streams WHERE log_group_id = ?", (log_group_id,))
            return conn.execute("DELETE FROM lts_groups WHERE log_group_id = ?", (log_group_id,)).rowcount == 1

        return await self.db.write(run)

    async def put_log_stream(self, stream: StoredLogStream) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO lts_streams(log_stream_id, log_group_id, name, doc, created) VALUES (?,?,?,?,?)",
                (stream.log_stream_id, stream.log_group_id, stream.name, stream.model_dump_json(), stream.created),
            )
            return cur.rowcount == 1

        return await self.db.write(run)

    async def get_log_stream(self, log_stream_id: str) -> StoredLogStream | None:
        row = await self.db.read(
            lambda c: c.execute("SELECT doc FROM lts_streams WHERE log_stream_id = ?", (log_stream_id,)).fetchone()
        )
        return StoredLogStream.model_validate_json(row["doc"]) if row else None

    async def list_log_streams(self, log_group_id: str) -> list[StoredLogStream]:
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT doc FROM lts_streams WHERE log_group_id = ? ORDER BY created, log_stream_id", (log_group_id,)
            ).fetchall()
        )
        return [StoredLogStream.model_validate_json(r["doc"]) for r in rows]

    async def delete_log_stream(self, log_stream_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM lts_streams WHERE log_stream_id = ?", (log_stream_id,)).rowcount == 1

        return await self.db.write(run)


def _row_to_trace(row: sqlite3.Row) -> TraceEntry:
    return TraceEntry(
        trace=json.loads(row["doc"]),
        detail=json.loads(row["detail"]),
        targets=json.loads(row["targets"]) if row["targets"] else [],
        recorded=row["recorded"],
    )
