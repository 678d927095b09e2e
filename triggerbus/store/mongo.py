"""The shared store: the same contract as the embedded SQLite store, kept in MongoDB.

Several Triggerbus processes point at one database (``--store mongodb://...``) and
coordinate only through it, so every rule that SQLite gets from its single writer is
carried here by a *conditional* single-document write: a filter on status or owner,
a unique key that refuses the second claimant, an upsert that fails with a duplicate
key when someone else holds the row. Nothing reads, decides in Python and writes back.

Only standard MongoDB features are used (pipeline updates and ``$lookup`` with a
sub-pipeline need MongoDB 5.0+; partial indexes with ``$in`` need 6.0+), so a plain
replica set or a managed service runs it unchanged.

Collections and why they look the way they do:

``functions``, ``triggers``, ``async_configs``
    The pydantic model dump (``model_dump(mode="json")``) with ``_id`` set to the key,
    so the documents are readable in any MongoDB tool and load back with
    ``model_validate``.
``records``
    One document per async invocation, ``_id`` = request id. The attempts are embedded
    (``attempt_log``), so starting and finishing an attempt is one atomic ``update_one``
    on one document, exactly as the invoker's contract requires. Timestamps stay epoch
    floats as in the API; ``created_at`` (a BSON Date of ``created``) exists only for the
    TTL index. Payload and response are BSON binary, truncated like the SQLite store.
    ``source`` and ``destination`` are kept as JSON text, like SQLite: they come from
    event sources and may carry keys MongoDB will not store in an update (``$``-prefixed,
    dotted) or keys JSON turns into strings, and the text round-trips exactly as the
    embedded store does. Searching by source coordinates uses ``source_kv`` instead, a
    multikey array of ``name=value`` strings (see :func:`_source_key`).
``code.files``, ``code.chunks``
    Code packages (GridFS bucket ``code``, file name = sha256): they reach 40 MB, past
    the 16 MB document limit.
``leases``
    ``_id`` = lease name, ``owner``, ``until`` (epoch seconds of the holder's clock; hosts
    must keep NTP time anyway, timers fire on wall-clock schedules).
``timer_state``, ``timer_fires``, ``checkpoints``
    As in SQLite; the fire fence is a unique index on (trigger_id, scheduled).
``traces``
    The audit log as CTS traces (:mod:`triggerbus.store.traces`): the searchable scalar
    fields as top-level fields, the trace itself, its audit detail and its owed CTS-trigger
    deliveries as JSON text (ingested traces are arbitrary JSON: keys MongoDB would refuse
    or read as operators stay text). ``trace_id`` is unique; newest-first pages sort by
    (``time_ms``, ``_id``). The older ``audit`` collection is no longer written; its TTL
    index empties it.
``smn_topics``
    The SMN topics of the built-in SMN API, ``_id`` = topic URN.
``dis_streams``, ``lts_groups``, ``lts_streams``
    Metadata of the built-in DIS and LTS APIs (their records live in Redis). ``_id`` =
    ``<project_id>/<stream_name>`` for DIS streams (the name is the key, per project), the
    group or stream UUID for LTS; unique indexes keep group names unique per project and
    stream names per group.

Retention: ``records`` (terminal ones only, through a partial index), ``traces`` and
``timer_fires`` carry a TTL index on ``created_at`` with ``expireAfterSeconds =
retention_s`` (default 7 days), so the database drops old documents by itself even if
no process runs housekeeping. :meth:`MongoStore.purge_records` and
:meth:`MongoStore.purge_timer_fires` stay available for the service's own retention
pass. Restarting with a different ``retention_s`` changes the TTL in place (``collMod``).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from datetime import UTC, datetime
from typing import Any

from gridfs.errors import NoFile
from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorGridFSBucket
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure

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

DEFAULT_RETENTION_S = 7 * 86400
PURGE_SLICE = 5000  # records deleted per purge_records call, so other writers are not held up

TERMINAL = [AsyncStatus.SUCCESS.value, AsyncStatus.FAIL.value, AsyncStatus.DISCARD.value]
RETRYABLE = [AsyncStatus.WAIT.value, AsyncStatus.RUNNING.value]

# Index names are fixed so start() is idempotent and tests (and operators) can find them.
RECORDS_BY_FUNCTION = "records_function"
RECORDS_BY_FUNCTION_STATUS = "records_function_status"
RECORDS_BY_STATUS = "records_status"
RECORDS_BY_TRIGGER = "records_trigger"
RECORDS_BY_SOURCE = "records_source"
RECORDS_TTL = "records_ttl"
AUDIT_TTL = "audit_ttl"  # on ``traces`` (the audit log)
TRACES_BY_TIME = "traces_time"
TIMER_FIRES_TTL = "timer_fires_ttl"

# Codes MongoDB answers when an index of that name exists with other options
# (IndexOptionsConflict, IndexKeySpecsConflict): for TTL indexes we then collMod.
_INDEX_CONFLICT_CODES = (85, 86)

_RECORD_FIELDS = (
    "request_id", "function_urn", "status", "created", "error_code", "error_message", "start_time",
    "end_time", "attempts", "next_attempt_at", "trigger_id", "trigger_type", "source", "condition",
    "redrive_of", "payload", "response", "destination", "cancel_requested",
)  # fmt: skip
_UPDATABLE = set(_RECORD_FIELDS) - {"request_id", "function_urn", "created"}

# Reading a record never needs the attempts or the search keys.
_RECORD_PROJECTION = {"attempt_log": 0, "source_kv": 0, "created_at": 0}


def _date(ts: float) -> datetime:
    """The BSON Date the TTL monitor needs; the API keeps epoch floats."""
    return datetime.fromtimestamp(ts, UTC)


def _json_or_none(value: Any) -> str | None:
    return json.dumps(value) if value else None


def _source_key(name: str, value: str) -> str:
    """One searchable ``name=value`` coordinate.

    ``=`` and ``\\`` in the name are escaped, so the split point is unambiguous
    (``{"a=b": "c"}`` and ``{"a": "b=c"}`` must not find each other).
    """
    return name.replace("\\", "\\\\").replace("=", "\\=") + "=" + value


def _source_keys(source: dict[str, Any]) -> list[str]:
    """Flatten scalar source coordinates so operators can search by them (as SQLite does)."""
    return [
        _source_key(str(name), str(value))
        for name, value in source.items()
        if isinstance(value, str | int | float) and not isinstance(value, bool) and len(str(value)) <= 1024
    ]


def _encode(name: str, value: Any) -> dict[str, Any]:
    """The document fields that store record field ``name`` (source also refreshes its keys)."""
    if name == "source":
        return {"source": _json_or_none(value), "source_kv": _source_keys(value or {})}
    if name == "destination":
        return {"destination": _json_or_none(value)}
    if name == "status":
        return {"status": AsyncStatus(value).value}
    if name == "payload":
        return {"payload": bytes(value)[:PAYLOAD_KEEP_BYTES]}
    if name == "response":
        return {"response": bytes(value)[:RESPONSE_KEEP_BYTES]}
    if name == "cancel_requested":
        return {"cancel_requested": bool(value)}
    return {name: value}


def _record_sets(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - _UPDATABLE
    if unknown:
        raise ValueError(f"cannot update record fields {sorted(unknown)}")
    sets: dict[str, Any] = {}
    for name, value in fields.items():
        sets.update(_encode(name, value))
    return sets


def _record_doc(record: Record) -> dict[str, Any]:
    return {
        "_id": record.request_id,
        "function_urn": record.function_urn,
        "status": AsyncStatus(record.status).value,
        "created": record.created,
        "created_at": _date(record.created),
        "error_code": record.error_code,
        "error_message": record.error_message,
        "start_time": record.start_time,
        "end_time": record.end_time,
        "attempts": record.attempts,
        "next_attempt_at": record.next_attempt_at,
        "trigger_id": record.trigger_id,
        "trigger_type": record.trigger_type,
        "source": _json_or_none(record.source),
        "source_kv": _source_keys(record.source),
        "condition": record.condition,
        "redrive_of": record.redrive_of,
        "payload": bytes(record.payload)[:PAYLOAD_KEEP_BYTES],
        "response": bytes(record.response)[:RESPONSE_KEEP_BYTES],
        "destination": _json_or_none(record.destination),
        "cancel_requested": bool(record.cancel_requested),
        "attempt_log": [],
    }


def _doc_to_record(doc: dict[str, Any]) -> Record:
    return Record(
        request_id=doc["_id"],
        function_urn=doc["function_urn"],
        status=AsyncStatus(doc["status"]),
        created=doc["created"],
        error_code=doc.get("error_code", 0),
        error_message=doc.get("error_message", ""),
        start_time=doc.get("start_time"),
        end_time=doc.get("end_time"),
        attempts=doc.get("attempts", 0),
        next_attempt_at=doc.get("next_attempt_at"),
        trigger_id=doc.get("trigger_id"),
        trigger_type=doc.get("trigger_type"),
        source=json.loads(doc["source"]) if doc.get("source") else {},
        condition=doc.get("condition", ""),
        redrive_of=doc.get("redrive_of"),
        payload=bytes(doc.get("payload") or b""),
        response=bytes(doc.get("response") or b""),
        destination=json.loads(doc["destination"]) if doc.get("destination") else {},
        cancel_requested=bool(doc.get("cancel_requested", False)),
    )


def _attempt_doc(attempt: Attempt) -> dict[str, Any]:
    return {
        "n": attempt.n,
        "start": attempt.start,
        "end": attempt.end,
        "status": attempt.status,
        "error_code": attempt.error_code,
        "error_message": attempt.error_message,
        "duration_ms": attempt.duration_ms,
        "memory_mb": attempt.memory_mb,
        "logs": attempt.logs,
    }


def _doc_to_attempt(doc: dict[str, Any]) -> Attempt:
    return Attempt(
        n=doc["n"],
        start=doc["start"],
        end=doc.get("end"),
        status=doc.get("status", "RUNNING"),
        error_code=doc.get("error_code", 0),
        error_message=doc.get("error_message", ""),
        duration_ms=doc.get("duration_ms", 0.0),
        memory_mb=doc.get("memory_mb", 0.0),
        logs=doc.get("logs", ""),
    )


def _put_attempt(attempt: dict[str, Any]) -> dict[str, Any]:
    """Aggregation expression: ``attempt_log`` with attempt ``n`` replaced (or appended).

    Used inside a pipeline update, so replacing the attempt and changing the record
    happen in one document write. ``$literal`` keeps user text such as ``"$x"`` in
    logs or error messages from being read as a field path.
    """
    return {
        "$concatArrays": [
            {
                "$filter": {
                    "input": {"$ifNull": ["$attempt_log", []]},
                    "as": "a",
                    "cond": {"$ne": ["$$a.n", attempt["n"]]},
                }
            },
            [{"$literal": attempt}],
        ]
    }


class MongoStore:
    """:class:`triggerbus.store.base.Store` on MongoDB, shared by several processes."""

    def __init__(self, uri: str, *, database: str = "triggerbus", retention_s: float = DEFAULT_RETENTION_S) -> None:
        if retention_s <= 0:
            raise ValueError("retention_s must be positive")
        self.retention_s = retention_s
        self.client: Any = AsyncIOMotorClient(uri, tz_aware=True)
        self.db: Any = self.client[database]
        self.functions: Any = self.db["functions"]
        self.triggers: Any = self.db["triggers"]
        self.async_configs: Any = self.db["async_configs"]
        self.records: Any = self.db["records"]
        self.leases: Any = self.db["leases"]
        self.timer_state: Any = self.db["timer_state"]
        self.timer_fires: Any = self.db["timer_fires"]
        self.checkpoints: Any = self.db["checkpoints"]
        self.traces: Any = self.db["traces"]
        self.audit_entries: Any = self.traces  # the audit log is the trace log
        self.topics: Any = self.db["smn_topics"]
        self.dis_streams: Any = self.db["dis_streams"]
        self.log_groups: Any = self.db["lts_groups"]
        self.log_streams: Any = self.db["lts_streams"]
        # Code packages reach 40 MB, past the 16 MB document limit: GridFS (code.files, code.chunks).
        self.code: Any = AsyncIOMotorGridFSBucket(self.db, bucket_name="code")

    async def start(self) -> None:
        """Create the indexes (idempotent; several processes may run it at once)."""
        await self.functions.create_index([("project_id", ASCENDING), ("created", ASCENDING)], name="functions_project")
        await self.triggers.create_index(
            [("function_urn", ASCENDING), ("created", ASCENDING)], name="triggers_function"
        )
        await self.triggers.create_index([("trigger_type", ASCENDING)], name="triggers_type")
        # The record queries: equality on the function (and status), then time, so a page
        # is one index range; the request-id tie-break of the sort is done on that range,
        # as in SQLite. (A trailing _id key would let MongoDB skip that sort, but SecantusDB
        # 0.7, the test server, then drops rows on inclusive time bounds: kept out for now.)
        await self.records.create_index(
            [("function_urn", ASCENDING), ("created", DESCENDING)], name=RECORDS_BY_FUNCTION
        )
        await self.records.create_index(
            [("function_urn", ASCENDING), ("status", ASCENDING), ("created", DESCENDING)],
            name=RECORDS_BY_FUNCTION_STATUS,
        )
        await self.records.create_index([("status", ASCENDING), ("created", ASCENDING)], name=RECORDS_BY_STATUS)
        await self.records.create_index([("trigger_id", ASCENDING), ("created", ASCENDING)], name=RECORDS_BY_TRIGGER)
        # Multikey on the flattened coordinates: one key per "name=value", then the
        # function and time, so a coordinate lookup is an index range of its matches only.
        await self.records.create_index(
            [("source_kv", ASCENDING), ("function_urn", ASCENDING), ("created", DESCENDING)], name=RECORDS_BY_SOURCE
        )
        # Records expire only once terminal, like purge_records: a record still in flight
        # must not vanish under the invoker.
        await self._ttl_index(self.records, RECORDS_TTL, partial={"status": {"$in": TERMINAL}})
        await self.timer_fires.create_index(
            [("trigger_id", ASCENDING), ("scheduled", ASCENDING)], name="timer_fires_fence", unique=True
        )
        await self.timer_fires.create_index([("created", ASCENDING)], name="timer_fires_created")
        await self._ttl_index(self.timer_fires, TIMER_FIRES_TTL)
        await self.checkpoints.create_index(
            [("trigger_id", ASCENDING), ("name", ASCENDING)], name="checkpoints_key", unique=True
        )
        await self.traces.create_index([("trace_id", ASCENDING)], name="traces_id", unique=True)
        await self.traces.create_index([("time_ms", DESCENDING), ("_id", DESCENDING)], name=TRACES_BY_TIME)
        await self.traces.create_index([("resource_id", ASCENDING), ("time_ms", DESCENDING)], name="traces_resource")
        await self.traces.create_index([("trace_name", ASCENDING), ("time_ms", DESCENDING)], name="traces_name")
        await self.traces.create_index([("pending", ASCENDING), ("recorded", ASCENDING)], name="traces_pending")
        await self._ttl_index(self.traces, AUDIT_TTL)
        await self.topics.create_index([("project_id", ASCENDING), ("created", ASCENDING)], name="smn_topics_project")
        await self.dis_streams.create_index(
            [("project_id", ASCENDING), ("created", ASCENDING)], name="dis_streams_project"
        )
        await self.log_groups.create_index(
            [("project_id", ASCENDING), ("name", ASCENDING)], name="lts_groups_name", unique=True
        )
        await self.log_streams.create_index(
            [("log_group_id", ASCENDING), ("name", ASCENDING)], name="lts_streams_name", unique=True
        )

    async def _ttl_index(self, collection: Any, name: str, partial: dict[str, Any] | None = None) -> None:
        """A TTL index on ``created_at``; an existing one gets the configured expiry via collMod."""
        expire = max(1, int(self.retention_s))
        options: dict[str, Any] = {"name": name, "expireAfterSeconds": expire}
        if partial is not None:
            options["partialFilterExpression"] = partial
        try:
            await collection.create_index([("created_at", ASCENDING)], **options)
        except OperationFailure as exc:
            if exc.code not in _INDEX_CONFLICT_CODES:
                raise
            await self.db.command({"collMod": collection.name, "index": {"name": name, "expireAfterSeconds": expire}})

    async def close(self) -> None:
        self.client.close()

    # -- functions ---------------------------------------------------------------------------

    async def put_function(self, fn: StoredFunction, *, create: bool) -> bool:
        """Insert (create=True: only if absent) or replace. False if create found one.

        The unique ``_id`` decides between two processes creating the same function.
        Replacing an absent function writes nothing (as SQLite's UPDATE does).
        """
        doc = {**fn.model_dump(mode="json"), "_id": fn.urn}
        if create:
            try:
                await self.functions.insert_one(doc)
            except DuplicateKeyError:
                return False
            return True
        await self.functions.replace_one({"_id": fn.urn}, doc)
        return True

    async def get_function(self, urn: str) -> StoredFunction | None:
        doc = await self.functions.find_one({"_id": urn})
        return StoredFunction.model_validate(doc) if doc else None

    async def list_functions(self, project_id: str, marker: int, limit: int) -> tuple[list[StoredFunction], int]:
        cursor = (
            self.functions.find({"project_id": project_id})
            .sort([("created", ASCENDING), ("_id", ASCENDING)])
            .skip(marker)
            .limit(limit)
        )
        docs = await cursor.to_list(None)
        count = await self.functions.count_documents({"project_id": project_id})
        return [StoredFunction.model_validate(d) for d in docs], int(count)

    async def delete_function(self, urn: str) -> bool:
        """Also deletes the function's async config and triggers.

        Dependents go first and the function last: if the process dies in between, the
        function is still there and deleting it again finishes the job (no orphans).
        """
        await self.async_configs.delete_one({"_id": urn})
        await self.triggers.delete_many({"function_urn": {"$regex": "^" + re.escape(urn + ":")}})
        result = await self.functions.delete_one({"_id": urn})
        return bool(result.deleted_count == 1)

    async def put_code(self, digest: str, data: bytes) -> None:
        """Keep a code package by its sha256 (first write wins, as INSERT OR IGNORE).

        GridFS writes the chunks first and the ``code.files`` entry last, so a reader
        never sees a partial package. Two processes uploading the same digest at once
        may both store it: harmless, same content, either copy is read.
        """
        if await self.db["code.files"].find_one({"filename": digest}, {"_id": 1}) is not None:
            return
        await self.code.upload_from_stream(digest, data)

    async def get_code(self, digest: str) -> bytes | None:
        try:
            stream = await self.code.open_download_stream_by_name(digest)
        except NoFile:
            return None
        return bytes(await stream.read())

    # -- triggers ----------------------------------------------------------------------------

    async def put_trigger(self, trigger: StoredTrigger) -> None:
        doc = {**trigger.model_dump(mode="json"), "_id": trigger.trigger_id}
        await self.triggers.replace_one({"_id": trigger.trigger_id}, doc, upsert=True)

    async def get_trigger(self, trigger_id: str) -> StoredTrigger | None:
        doc = await self.triggers.find_one({"_id": trigger_id})
        return StoredTrigger.model_validate(doc) if doc else None

    async def list_triggers(
        self, function_urn: str | None = None, trigger_type: str | None = None
    ) -> list[StoredTrigger]:
        query: dict[str, Any] = {}
        if function_urn is not None:
            query["function_urn"] = function_urn
        if trigger_type is not None:
            query["trigger_type"] = trigger_type
        docs = await self.triggers.find(query).sort([("created", ASCENDING), ("_id", ASCENDING)]).to_list(None)
        return [StoredTrigger.model_validate(d) for d in docs]

    async def delete_trigger(self, trigger_id: str) -> bool:
        """Also deletes the trigger's timer state and checkpoints (dependents first, see delete_function)."""
        await self.timer_state.delete_one({"_id": trigger_id})
        await self.checkpoints.delete_many({"trigger_id": trigger_id})
        result = await self.triggers.delete_one({"_id": trigger_id})
        return bool(result.deleted_count == 1)

    # -- async configs -------------------------------------------------------------------------

    async def put_async_config(self, config: AsyncInvokeConfig, unqualified_urn: str) -> None:
        doc = {**config.model_dump(mode="json"), "_id": unqualified_urn}
        await self.async_configs.replace_one({"_id": unqualified_urn}, doc, upsert=True)

    async def get_async_config(self, unqualified_urn: str) -> AsyncInvokeConfig | None:
        doc = await self.async_configs.find_one({"_id": unqualified_urn}, {"_id": 0})
        return AsyncInvokeConfig.model_validate(doc) if doc else None

    async def all_async_configs(self) -> dict[str, AsyncInvokeConfig]:
        docs = await self.async_configs.find({}).to_list(None)
        return {d.pop("_id"): AsyncInvokeConfig.model_validate(d) for d in docs}

    async def delete_async_config(self, unqualified_urn: str) -> bool:
        result = await self.async_configs.delete_one({"_id": unqualified_urn})
        return bool(result.deleted_count == 1)

    # -- records (invoker.records.RecordStore) ---------------------------------------------------

    async def insert_record(self, record: Record) -> bool:
        """Insert if absent; the unique ``_id`` makes a second insert (any process) a no-op."""
        try:
            await self.records.insert_one(_record_doc(record))
        except DuplicateKeyError:
            return False
        return True

    async def get_record(self, request_id: str) -> Record | None:
        doc = await self.records.find_one({"_id": request_id}, _RECORD_PROJECTION)
        return _doc_to_record(doc) if doc else None

    async def record_state(self, request_id: str) -> RecordState | None:
        doc = await self.records.find_one({"_id": request_id}, {"status": 1, "attempts": 1, "error_message": 1})
        if doc is None:
            return None
        return RecordState(AsyncStatus(doc["status"]), doc.get("attempts", 0), doc.get("error_message", ""))

    async def update_record(self, request_id: str, **fields: Any) -> None:
        """Set the given fields. A new ``source`` also refreshes the searchable coordinates."""
        if not fields:
            return
        await self.records.update_one({"_id": request_id}, {"$set": _record_sets(fields)})

    async def start_attempt(self, request_id: str, attempt: Attempt) -> bool:
        """RUNNING + the attempt in one write, only while the record is WAIT/RUNNING.

        The status filter is what loses the race against a concurrent cancel: once
        another process made the record DISCARD, nothing matches and nothing is written.
        The attempt is written fresh (start and status only), as SQLite's INSERT OR REPLACE.
        """
        fresh = _attempt_doc(Attempt(n=attempt.n, start=attempt.start, status=attempt.status))
        result = await self.records.update_one(
            {"_id": request_id, "status": {"$in": RETRYABLE}},
            [
                {
                    "$set": {
                        "status": AsyncStatus.RUNNING.value,
                        "attempts": {"$literal": attempt.n},
                        "next_attempt_at": None,
                        "start_time": {"$ifNull": ["$start_time", {"$literal": attempt.start}]},
                        "attempt_log": _put_attempt(fresh),
                    }
                }
            ],
        )
        return bool(result.matched_count == 1)

    async def cancel_waiting(self, request_id: str, message: str) -> bool:
        """WAIT -> DISCARD (4208, Canceled); the status filter makes it lose to a starting attempt."""
        result = await self.records.update_one(
            {"_id": request_id, "status": AsyncStatus.WAIT.value},
            {
                "$set": {
                    "status": AsyncStatus.DISCARD.value,
                    "error_code": 4208,
                    "error_message": message,
                    "condition": "Canceled",
                    "end_time": time.time(),
                    "next_attempt_at": None,
                    "cancel_requested": True,
                }
            },
        )
        return bool(result.matched_count == 1)

    async def finish_attempt(self, request_id: str, attempt: Attempt, **record_fields: Any) -> None:
        """Close the attempt and update the record in one document write."""
        sets = {name: {"$literal": value} for name, value in _record_sets(record_fields).items()}
        await self.records.update_one(
            {"_id": request_id}, [{"$set": {**sets, "attempt_log": _put_attempt(_attempt_doc(attempt))}}]
        )

    async def list_attempts(self, request_id: str) -> list[Attempt]:
        doc = await self.records.find_one({"_id": request_id}, {"attempt_log": 1})
        attempts = [_doc_to_attempt(a) for a in (doc or {}).get("attempt_log") or []]
        return sorted(attempts, key=lambda a: a.n)

    def _records_cursor(self, query: RecordQuery) -> tuple[Any, dict[str, Any], str]:
        """The find list_records issues (newest first, then request id), its filter and index.

        The query's shape names the index that serves it (a hint): each shape has an index
        built for it, and pinning it keeps a coordinate search or a trigger's records
        from ever turning into a walk over the function's whole time range.
        """
        match: dict[str, Any] = {"function_urn": query.function_urn}
        index = RECORDS_BY_FUNCTION
        if query.status is not None:
            match["status"] = AsyncStatus(query.status).value
            index = RECORDS_BY_FUNCTION_STATUS
        created: dict[str, float] = {}
        if query.begin is not None:
            created["$gte"] = query.begin
        if query.end is not None:
            created["$lte"] = query.end
        if created:
            match["created"] = created
        if query.trigger_id:
            match["trigger_id"] = query.trigger_id
            index = RECORDS_BY_TRIGGER
        if query.redrive_of:
            match["redrive_of"] = query.redrive_of
        if query.source:
            match["source_kv"] = {"$all": [_source_key(str(k), str(v)) for k, v in query.source.items()]}
            index = RECORDS_BY_SOURCE
        if query.request_id:
            match["_id"] = query.request_id
            index = "_id_"  # one document at most
        cursor = (
            self.records.find(match, _RECORD_PROJECTION)
            .sort([("created", DESCENDING), ("_id", ASCENDING)])
            .hint(index)
            .skip(query.marker)
            .limit(query.limit)
        )
        return cursor, match, index

    async def list_records(self, query: RecordQuery) -> tuple[list[Record], int]:
        """A page of records (newest first) and the total count matching the query."""
        cursor, match, index = self._records_cursor(query)
        docs = await cursor.to_list(None)
        count = await self.records.count_documents(match, hint=index)
        return [_doc_to_record(d) for d in docs], int(count)

    async def explain_list_records(self, query: RecordQuery) -> dict[str, Any]:
        """The server's ``explain`` of the page query, to check which index serves a query."""
        cursor, _, _ = self._records_cursor(query)
        return dict(await cursor.explain())

    async def attempt_stats(self, function_urn: str, begin: float, end: float, bucket_s: float) -> list[StatsBucket]:
        check_window(begin, end, bucket_s)
        match = {"function_urn": function_urn, "created": {"$gte": begin - STATS_LOOKBACK_S, "$lt": end}}
        fields = {f"attempt_log.{name}": 1 for name in ("start", "status", "error_code", "duration_ms")}
        cursor = self.records.find(match, {"_id": 0, **fields}).hint(RECORDS_BY_FUNCTION)
        samples = [
            AttemptSample(a["start"], a.get("status", "RUNNING"), a.get("error_code", 0), a.get("duration_ms", 0.0))
            async for doc in cursor
            for a in doc.get("attempt_log") or []
        ]
        return bucket_samples(samples, begin, end, bucket_s)

    async def queue_depths(self) -> list[QueueDepth]:
        """Counted here (not with $group): unfinished records are few, and the status index serves it."""
        match = {"status": {"$in": [AsyncStatus.WAIT.value, AsyncStatus.RUNNING.value]}}
        cursor = self.records.find(match, {"_id": 0, "function_urn": 1, "status": 1, "created": 1})
        waiting: dict[str, int] = {}
        running: dict[str, int] = {}
        oldest: dict[str, float] = {}
        async for doc in cursor.hint(RECORDS_BY_STATUS):
            urn = doc["function_urn"]
            if doc["status"] == AsyncStatus.WAIT.value:
                waiting[urn] = waiting.get(urn, 0) + 1
                oldest[urn] = min(oldest.get(urn, math.inf), float(doc["created"]))
            else:
                running[urn] = running.get(urn, 0) + 1
        return [
            QueueDepth(urn, waiting.get(urn, 0), running.get(urn, 0), oldest.get(urn))
            for urn in sorted({*waiting, *running})
        ]

    async def purge_records(self, older_than: float) -> int:
        """Retention: drop terminal records (attempts are inside) created before ``older_than``.

        One slice per call, so the caller loops while it returns > 0 and other writers
        get their turn between slices.
        """
        old = {"status": {"$in": TERMINAL}, "created": {"$lt": older_than}}
        cursor = self.records.find(old, {"_id": 1}).hint(RECORDS_BY_STATUS).limit(PURGE_SLICE)
        ids = [d["_id"] for d in await cursor.to_list(None)]
        if not ids:
            return 0
        result = await self.records.delete_many({**old, "_id": {"$in": ids}})
        return int(result.deleted_count)

    # -- leases -----------------------------------------------------------------------------------

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take or renew ``name`` for ``ttl`` seconds; True if ``owner`` holds it now.

        One upsert: it matches only a lease this owner holds or one that expired. When
        another owner holds a live lease, nothing matches, the upsert tries to insert
        a second document with the same ``_id`` and the unique key refuses it.
        """
        now = time.time()
        try:
            doc = await self.leases.find_one_and_update(
                {"_id": name, "$or": [{"owner": owner}, {"until": {"$lt": now}}]},
                {"$set": {"owner": owner, "until": now + ttl}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return False
        return bool(doc is not None and doc.get("owner") == owner)

    async def release_lease(self, name: str, owner: str) -> None:
        await self.leases.delete_one({"_id": name, "owner": owner})

    # -- timer state --------------------------------------------------------------------------------

    async def get_timer_state(self, trigger_id: str) -> tuple[float | None, float | None]:
        doc = await self.timer_state.find_one({"_id": trigger_id})
        return (doc.get("last_fire"), doc.get("next_fire")) if doc else (None, None)

    async def set_timer_next(self, trigger_id: str, next_fire: float | None) -> None:
        await _upsert(self.timer_state, {"_id": trigger_id}, {"$set": {"next_fire": next_fire}})

    async def claim_timer_fire(
        self, trigger_id: str, scheduled: float, request_id: str, owner: str, next_fire: float | None
    ) -> bool:
        """Record that ``scheduled`` fired; False if it had been fired already (by anyone).

        The unique index on (trigger, scheduled time) is the fence that keeps a fire
        single even when two schedulers both believe they hold the lease. The timer
        position moves either way; ``$max`` keeps ``last_fire`` from going backwards.
        """
        now = time.time()
        try:
            await self.timer_fires.insert_one(
                {
                    "trigger_id": trigger_id,
                    "scheduled": scheduled,
                    "request_id": request_id,
                    "fired_by": owner,
                    "created": now,
                    "created_at": _date(now),
                }
            )
            claimed = True
        except DuplicateKeyError:
            claimed = False
        await _upsert(
            self.timer_state,
            {"_id": trigger_id},
            {"$max": {"last_fire": scheduled}, "$set": {"next_fire": next_fire}},
        )
        return claimed

    async def unsent_timer_fires(self, since: float) -> list[tuple[str, float, str]]:
        """Fires claimed since ``since`` whose request id has no record (lost in a crash)."""
        pipeline = [
            {"$match": {"created": {"$gte": since}}},
            {
                "$lookup": {
                    "from": self.records.name,
                    "localField": "request_id",
                    "foreignField": "_id",
                    "pipeline": [{"$project": {"_id": 1}}],
                    "as": "record",
                }
            },
            {"$match": {"record": {"$size": 0}}},
            {"$sort": {"scheduled": ASCENDING, "trigger_id": ASCENDING}},
            {"$project": {"_id": 0, "trigger_id": 1, "scheduled": 1, "request_id": 1}},
        ]
        docs = await self.timer_fires.aggregate(pipeline).to_list(None)
        return [(d["trigger_id"], d["scheduled"], d["request_id"]) for d in docs]

    async def purge_timer_fires(self, older_than: float) -> None:
        await self.timer_fires.delete_many({"created": {"$lt": older_than}})

    # -- connector checkpoints (resume tokens, requested offset resets ...) -----------------------

    async def get_checkpoint(self, trigger_id: str, name: str) -> Any:
        doc = await self.checkpoints.find_one({"trigger_id": trigger_id, "name": name})
        return json.loads(doc["value"]) if doc else None

    async def put_checkpoint(self, trigger_id: str, name: str, value: Any) -> None:
        """Stored as JSON text, so any JSON value (and any key) round-trips as with SQLite."""
        await _upsert(
            self.checkpoints,
            {"trigger_id": trigger_id, "name": name},
            {"$set": {"value": json.dumps(value), "updated": time.time()}},
        )

    async def delete_checkpoints(self, trigger_id: str) -> None:
        await self.checkpoints.delete_many({"trigger_id": trigger_id})

    # -- audit: CTS traces (triggerbus.store.traces) ---------------------------------------------------

    async def audit(self, action: str, resource: str, detail: dict[str, Any]) -> None:
        if absorbed_by_request(action, resource, detail):
            return  # the running API request writes the trace, with its HTTP outcome
        await self.insert_trace(system_entry(action, resource, detail))

    async def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first: by time, then by ObjectId (its counter orders one process's entries)."""
        return [audit_view(e) for e in await self.list_traces(TraceQuery(audited_only=True, limit=limit))]

    async def insert_trace(self, entry: TraceEntry) -> bool:
        """Insert if absent; the unique ``trace_id`` makes a second insert (any process) a no-op."""
        doc = {
            **trace_columns(entry.trace),
            "trace_id": entry.trace_id,
            "recorded": entry.recorded,
            "created_at": _date(entry.recorded),
            "doc": json.dumps(entry.trace, ensure_ascii=False),
            "detail": json.dumps(entry.detail, default=str),
            "targets": json.dumps(entry.targets) if entry.targets else None,
            "pending": bool(entry.targets),
        }
        try:
            await self.traces.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    async def list_traces(self, query: TraceQuery) -> list[TraceEntry]:
        match: dict[str, Any] = dict(query.filters())
        when: dict[str, int] = {}
        if query.begin_ms is not None:
            when["$gte"] = query.begin_ms
        if query.end_ms is not None:
            when["$lte"] = query.end_ms
        if when:
            match["time_ms"] = when
        if query.trace_id is not None:
            match["trace_id"] = query.trace_id
        if query.audited_only:
            match["detail"] = {"$ne": "null"}
        if query.after is not None:
            marker = await self.traces.find_one({"trace_id": query.after}, {"time_ms": 1})
            if marker is None:
                raise UnknownMarker(query.after)
            match["$or"] = [
                {"time_ms": {"$lt": marker["time_ms"]}},
                {"time_ms": marker["time_ms"], "_id": {"$lt": marker["_id"]}},
            ]
        cursor = self.traces.find(match).sort([("time_ms", DESCENDING), ("_id", DESCENDING)]).limit(query.limit)
        return [_doc_to_trace(d) for d in await cursor.to_list(None)]

    async def pending_traces(self, recorded_before: float, limit: int) -> list[TraceEntry]:
        cursor = (
            self.traces.find({"pending": True, "recorded": {"$lt": recorded_before}})
            .sort([("recorded", ASCENDING)])
            .limit(limit)
        )
        return [_doc_to_trace(d) for d in await cursor.to_list(None)]

    async def trace_delivered(self, trace_id: str) -> None:
        await self.traces.update_one({"trace_id": trace_id}, {"$set": {"pending": False, "targets": None}})

    # -- SMN topics ----------------------------------------------------------------------------------

    async def put_topic(self, topic: StoredTopic) -> bool:
        """Insert if absent; the unique ``_id`` decides between two processes creating one topic."""
        try:
            await self.topics.insert_one({**topic.model_dump(mode="json"), "_id": topic.topic_urn})
        except DuplicateKeyError:
            return False
        return True

    async def get_topic(self, topic_urn: str) -> StoredTopic | None:
        doc = await self.topics.find_one({"_id": topic_urn})
        return StoredTopic.model_validate(doc) if doc else None

    async def list_topics(self, project_id: str, offset: int, limit: int) -> tuple[list[StoredTopic], int]:
        cursor = (
            self.topics.find({"project_id": project_id})
            .sort([("created", ASCENDING), ("_id", ASCENDING)])
            .skip(offset)
            .limit(limit)
        )
        docs = await cursor.to_list(None)
        count = await self.topics.count_documents({"project_id": project_id})
        return [StoredTopic.model_validate(d) for d in docs], int(count)

    async def delete_topic(self, topic_urn: str) -> bool:
        result = await self.topics.delete_one({"_id": topic_urn})
        return bool(result.deleted_count == 1)

    # -- DIS streams -----------------------------------------------------------------------------------

    async def put_dis_stream(self, stream: StoredDISStream) -> bool:
        """Insert if absent; the unique ``_id`` decides between two processes creating one stream."""
        try:
            await self.dis_streams.insert_one(
                {**stream.model_dump(mode="json"), "_id": f"{stream.project_id}/{stream.stream_name}"}
            )
        except DuplicateKeyError:
            return False
        return True

    async def get_dis_stream(self, project_id: str, stream_name: str) -> StoredDISStream | None:
        doc = await self.dis_streams.find_one({"_id": f"{project_id}/{stream_name}"})
        return StoredDISStream.model_validate(doc) if doc else None

    async def list_dis_streams(self, project_id: str, offset: int, limit: int) -> tuple[list[StoredDISStream], int]:
        cursor = (
            self.dis_streams.find({"project_id": project_id})
            .sort([("created", ASCENDING), ("stream_name", ASCENDING)])
            .skip(offset)
            .limit(limit)
        )
        docs = await cursor.to_list(None)
        count = await self.dis_streams.count_documents({"project_id": project_id})
        return [StoredDISStream.model_validate(d) for d in docs], int(count)

    async def delete_dis_stream(self, project_id: str, stream_name: str) -> bool:
        result = await self.dis_streams.delete_one({"_id": f"{project_id}/{stream_name}"})
        return bool(result.deleted_count == 1)

    # -- LTS log groups and log streams ------------------------------------------------------------------

    async def put_log_group(self, group: StoredLogGroup) -> bool:
        """Insert if absent; the unique (project, name) index decides between two creators."""
        try:
            await self.log_groups.insert_one({**group.model_dump(mode="json"), "_id": group.log_group_id})
        except DuplicateKeyError:
            return False
        return True

    async def get_log_group(self, log_group_id: str) -> StoredLogGroup | None:
        doc = await self.log_groups.find_one({"_id": log_group_id})
        return StoredLogGroup.model_validate(doc) if doc else None

    async def list_log_groups(self, project_id: str) -> list[StoredLogGroup]:
        cursor = self.log_groups.find({"project_id": project_id}).sort([("created", ASCENDING), ("_id", ASCENDING)])
        return [StoredLogGroup.model_validate(d) for d in await cursor.to_list(None)]

    async def delete_log_group(self, log_group_id: str) -> bool:
        await self.log_streams.delete_many({"log_group_id": log_group_id})
        result = await self.log_groups.delete_one({"_id": log_group_id})
        return bool(result.deleted_count == 1)

    async def put_log_stream(self, stream: StoredLogStream) -> bool:
        """Insert if absent; the unique (group, name) index decides between two creators."""
        try:
            await self.log_streams.insert_one({**stream.model_dump(mode="json"), "_id": stream.log_stream_id})
        except DuplicateKeyError:
            return False
        return True

    async def get_log_stream(self, log_stream_id: str) -> StoredLogStream | None:
        doc = await self.log_streams.find_one({"_id": log_stream_id})
        return StoredLogStream.model_validate(doc) if doc else None

    async def list_log_streams(self, log_group_id: str) -> list[StoredLogStream]:
        cursor = self.log_streams.find({"log_group_id": log_group_id}).sort(
            [("created", ASCENDING), ("_id", ASCENDING)]
        )
        return [StoredLogStream.model_validate(d) for d in await cursor.to_list(None)]

    async def delete_log_stream(self, log_stream_id: str) -> bool:
        result = await self.log_streams.delete_one({"_id": log_stream_id})
        return bool(result.deleted_count == 1)


def _doc_to_trace(doc: dict[str, Any]) -> TraceEntry:
    return TraceEntry(
        trace=json.loads(doc["doc"]),
        detail=json.loads(doc.get("detail") or "null"),
        targets=json.loads(doc["targets"]) if doc.get("targets") else [],
        recorded=doc["recorded"],
    )


async def _upsert(collection: Any, query: dict[str, Any], update: dict[str, Any]) -> None:
    """``update_one(upsert=True)`` that survives the insert race.

    Two processes upserting the same absent key may both try to insert; the loser gets
    a duplicate key error although a plain update would now succeed, so try again
    (MongoDB retries this itself only in some cases).
    """
    for attempt in range(3):
        try:
            await collection.update_one(query, update, upsert=True)
            return
        except DuplicateKeyError:
            if attempt == 2:
                raise
            await asyncio.sleep(0)
