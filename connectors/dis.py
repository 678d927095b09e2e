"""DIS streams on Redis Streams, and DIS triggers that poll their shards in batches.

Streams (see docs/dis.md): a DIS stream has ``partition_count`` shards (``shardId-0000000000``
...), each one Redis stream ``<prefix>:dis:<stream_id>:<n>``; the stream's metadata is in the
Triggerbus store. A put routes each record by the MD5 of its ``partition_key`` over equal hash
ranges (or to an explicit ``partition_id``); the record's sequence number is its Redis entry id
as digits (:func:`connectors.redis_streams.sequence_number`). Records older than ``data_duration``
hours are unreadable at once and trimmed by a sweep.

Trigger configuration (``event_data``, user guide §6.5):

* ``stream_name`` (must exist in the function's project), ``sharditerator_type``
  ``TRIM_HORIZON`` (the oldest record still retained) | ``LATEST`` (records put after the trigger
  was first enabled).
* ``polling_interval`` + ``polling_unit`` (``s`` | ``ms``): how often each shard is fetched.
* ``max_fetch_bytes`` (1 B-4 MB): bytes per fetch; only records *smaller* than it are fetched.
  ``batch_size`` (1-10000): records per fetch, at most 4 MB in all. Both may be set (both
  apply); with neither, a fetch takes up to 4 MB.
* ``is_serial`` (default true): the next fetch of a shard waits until its previous batch
  finished. False: a shard is fetched every period while the trigger has fewer than
  ``concurrency`` (extension, 1-80, default 10) unfinished batches.

A fetch that came back full (limit reached, more waiting) is followed at once by the next one
instead of waiting for the period, so a backlog drains at the speed of the function.

Event: one per fetch, ``{"ShardID", "Message": {"next_partition_cursor", "records":
[{"partition_key", "data" (Base64), "sequence_number"}], "millis_behind_latest"}, "Tag":
"latest", "StreamName"}`` (contract §1.5).

Delivery: at least once. A shard's position moves (in the store) only over the contiguous
prefix of batches that reached a terminal state; a poison batch goes through the function's
retries, ends FAIL (and its failure destination), and the shard moves on. A record that can
never be fetched (not smaller than ``max_fetch_bytes``) gets a DISCARD record and an audit
entry instead of blocking its shard.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from connectors.base import ConnectorContext, TriggerSpec
from connectors.redis_streams import (
    ZERO_ID,
    Entry,
    ShardState,
    SourceMissing,
    StreamBackend,
    StreamConnector,
    StreamRunner,
    StreamsUnavailable,
    entry_id,
    id_before,
    id_ms,
    sequence_number,
)
from invoker.envelope import StreamItem
from invoker.ingest import OVERSIZED_CODE
from schemas.base import json_compact
from schemas.errors import FSSError, bad_request, conflict, not_found, unavailable
from schemas.events.dis import DISEvent
from schemas.records import AsyncStatus
from schemas.urn import FunctionUrn
from triggerbus.store.models import StoredDISStream

log = logging.getLogger(__name__)

STREAM_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SHARD_ID_RE = re.compile(r"^shardId-(\d{10})$")
MAX_PARTITIONS = 50
RETENTION_HOURS = (24, 168)
DEFAULT_RETENTION_HOURS = 24
MAX_RECORD_BYTES = 1024 * 1024  # a record's data, before Base64 (DIS)
MAX_PUT_RECORDS = 500
MAX_PUT_BYTES = 5 * 1024 * 1024  # a put's data in all, before Base64
MAX_PARTITION_KEY = 256
MAX_FETCH_BYTES = 4 * 1024 * 1024  # a fetch's data in all (both processing modes)
MAX_FETCH_RECORDS = 10000
MAX_EVENT_BYTES = 6 * 1024 * 1024 - 8 * 1024  # the event JSON must stay under FunctionGraph's 6 MB
DEFAULT_CONCURRENCY = 10
MIN_IDLE_POLL_S = 0.01
MAX_POLLING_S = 86400
EXISTS_CHECK_S = 10.0
TAG = "latest"
_RECORD_OVERHEAD = len('{"partition_key":,"data":"","sequence_number":""},')
_EVENT_OVERHEAD = 1024  # ShardID, StreamName, cursor and the rest of the envelope


def shard_id(index: int) -> str:
    return f"shardId-{index:010d}"


def shard_index(value: str, partition_count: int) -> int | None:
    """The shard number named by ``shardId-0000000003`` or ``3``; None if not a shard of the stream."""
    text = value.strip()
    match = SHARD_ID_RE.match(text)
    digits = match.group(1) if match else text
    if not digits.isdigit():
        return None
    index = int(digits)
    return index if index < partition_count else None


def shard_for_key(partition_key: str, partition_count: int) -> int:
    """The shard whose share of the 128-bit MD5 hash space holds the key (equal ranges, as DIS)."""
    digest = int.from_bytes(hashlib.md5(partition_key.encode(), usedforsecurity=False).digest(), "big")
    return (digest * partition_count) >> 128


def hash_range(index: int, partition_count: int) -> str:
    """The DIS-style ``hash_range`` of a shard (over a 63-bit space, as DIS prints it)."""
    top = 2**63 - 1
    low = top * index // partition_count
    high = top * (index + 1) // partition_count - (1 if index + 1 < partition_count else 0)
    return f"[{low} : {high}]"


# -- configuration ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DISTriggerConfig:
    trigger_id: str
    function_urn: str
    project_id: str
    stream_name: str
    cursor_type: str
    interval_s: float
    batch_size: int | None
    max_fetch_bytes: int | None
    serial: bool
    concurrency: int

    @property
    def record_limit(self) -> int:
        return self.batch_size or MAX_FETCH_RECORDS

    @property
    def byte_limit(self) -> int:
        return min(self.max_fetch_bytes or MAX_FETCH_BYTES, MAX_FETCH_BYTES)


def resolve_config(trigger: TriggerSpec) -> DISTriggerConfig:
    """The trigger's settings, checked beyond the schema (FSS.0400 naming the field)."""
    data = trigger.event_data
    stream_name = str(data.get("stream_name", "")).strip()
    if not STREAM_NAME_RE.match(stream_name):
        raise bad_request(
            f"event_data.stream_name: {stream_name[:80]!r} must be 1-64 letters, digits, '-' or '_' (a DIS stream)"
        )
    cursor_type = str(data.get("sharditerator_type", "")).upper()
    if cursor_type not in ("TRIM_HORIZON", "LATEST"):
        raise bad_request(f"event_data.sharditerator_type: must be TRIM_HORIZON or LATEST (got {cursor_type!r})")
    unit = str(data.get("polling_unit") or "s")
    interval = data.get("polling_interval")
    if isinstance(interval, bool) or not isinstance(interval, int) or interval <= 0:
        raise bad_request(f"event_data.polling_interval: must be a positive integer (got {interval!r})")
    interval_s = interval / 1000 if unit == "ms" else float(interval)
    if interval_s > MAX_POLLING_S:
        raise bad_request(
            f"event_data.polling_interval: {interval} {unit} is more than a day; at most {MAX_POLLING_S} s"
        )
    max_fetch_bytes = data.get("max_fetch_bytes")
    if max_fetch_bytes is not None and (
        isinstance(max_fetch_bytes, bool) or not isinstance(max_fetch_bytes, int) or max_fetch_bytes < 1
    ):
        raise bad_request(
            f"event_data.max_fetch_bytes: must be 1-{MAX_FETCH_BYTES} bytes (got {max_fetch_bytes!r}); "
            "0 would never fetch a record"
        )
    if max_fetch_bytes is not None and max_fetch_bytes > MAX_FETCH_BYTES:
        raise bad_request(f"event_data.max_fetch_bytes: must be at most {MAX_FETCH_BYTES} (got {max_fetch_bytes})")
    batch_size = data.get("batch_size")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_FETCH_RECORDS
    ):
        raise bad_request(f"event_data.batch_size: must be 1-{MAX_FETCH_RECORDS} (got {batch_size!r})")
    serial = data.get("is_serial")
    if isinstance(serial, str):
        serial = serial.strip().lower() == "true"
    concurrency = data.get("concurrency", DEFAULT_CONCURRENCY)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 80:
        raise bad_request(f"event_data.concurrency: must be 1-80 (got {concurrency!r})")
    return DISTriggerConfig(
        trigger_id=trigger.trigger_id,
        function_urn=trigger.function_urn,
        project_id=FunctionUrn.parse(trigger.function_urn).project_id,
        stream_name=stream_name,
        cursor_type=cursor_type,
        interval_s=interval_s,
        batch_size=batch_size,
        max_fetch_bytes=max_fetch_bytes,
        serial=True if serial is None else bool(serial),
        concurrency=concurrency,
    )


# -- fetching and the event ------------------------------------------------------------------------------


@dataclass(slots=True)
class Take:
    """What one fetch hands over: ``records`` (may be empty), or an ``oversized`` record first in line."""

    records: list[Entry]
    oversized: Entry | None = None
    full: bool = False  # a limit stopped the batch: more is waiting


def record_parts(entry: Entry) -> tuple[str, bytes]:
    return entry.fields.get("k", b"").decode("utf-8", errors="replace"), entry.fields.get("d", b"")


def event_bytes(entry: Entry) -> int:
    key, data = record_parts(entry)
    return _RECORD_OVERHEAD + len(json_compact(key).encode()) + 4 * ((len(data) + 2) // 3) + 20


def take_batch(
    entries: Sequence[Entry], *, record_limit: int, byte_limit: int, single_limit: int | None, more: bool
) -> Take:
    """Apply the trigger's limits to fetched entries (in order).

    ``single_limit`` is ``max_fetch_bytes``: a record of that size or more can never be fetched
    and comes back as ``oversized`` when it is first in line. ``more``: the read hit its count.
    """
    taken: list[Entry] = []
    data_bytes = 0
    json_bytes = _EVENT_OVERHEAD
    for entry in entries:
        size = len(entry.fields.get("d", b""))
        if single_limit is not None and size >= single_limit:
            if not taken:
                return Take([], oversized=entry, full=True)
            return Take(taken, full=True)
        encoded = event_bytes(entry)
        if taken and (data_bytes + size > byte_limit or json_bytes + encoded > MAX_EVENT_BYTES):
            return Take(taken, full=True)
        taken.append(entry)
        data_bytes += size
        json_bytes += encoded
        if len(taken) >= record_limit:
            return Take(taken, full=True)
    return Take(taken, full=more and len(taken) == len(entries))


def build_event(
    stream_name: str, shard: str, records: Sequence[Entry], *, cursor_type: str, tip: str | None, now_ms: int
) -> DISEvent:
    """The DIS event of one fetch (contract §1.5)."""
    last = records[-1].id
    cursor = DISEvent.partition_cursor(stream_name, shard, cursor_type, str(int(sequence_number(last)) + 1), now_ms)
    # How far the batch's last record is behind the shard's newest, in ms (Kinesis's meaning); ""
    # as in the documented sample when the newest is not known.
    behind = str(max(0, id_ms(tip) - id_ms(last))) if tip else ""
    return DISEvent.build(
        stream_name,
        shard,
        [(*record_parts(e), sequence_number(e.id)) for e in records],
        next_partition_cursor=cursor,
        tag=TAG,
        millis_behind_latest=behind,
    )


# -- the store the connector needs -------------------------------------------------------------------


@runtime_checkable
class DISStore(Protocol):
    async def put_dis_stream(self, stream: StoredDISStream) -> bool: ...

    async def get_dis_stream(self, project_id: str, stream_name: str) -> StoredDISStream | None: ...

    async def list_dis_streams(self, project_id: str, offset: int, limit: int) -> tuple[list[StoredDISStream], int]: ...

    async def delete_dis_stream(self, project_id: str, stream_name: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class PutRecord:
    """One record of a put; routed by ``partition_id``, else ``explicit_hash_key`` (0 to 2^63-1),
    else the MD5 of ``partition_key``, else to a random shard."""

    data: bytes
    partition_key: str | None = None
    partition_id: str | None = None
    explicit_hash_key: int | None = None


# -- one trigger -----------------------------------------------------------------------------------------


class _Runner(StreamRunner):
    kind: ClassVar[str] = "dis"

    def __init__(self, connector: DISConnector, backend: StreamBackend, spec: TriggerSpec, cfg: DISTriggerConfig):
        per_shard = 1 if cfg.serial else cfg.concurrency
        super().__init__(
            connector.ctx,
            backend,
            spec,
            per_shard_in_flight=per_shard,
            concurrency=MAX_PARTITIONS if cfg.serial else cfg.concurrency,
            lease_ttl_s=connector.lease_ttl_s,
        )
        self.connector = connector
        self.cfg = cfg
        self.stream: StoredDISStream | None = None

    async def shard_keys(self) -> dict[str, str]:
        stream = await self.connector.stream(self.cfg.project_id, self.cfg.stream_name)
        if stream is None:
            raise SourceMissing(f"DIS stream {self.cfg.stream_name!r} does not exist in project {self.cfg.project_id}")
        self.stream = stream
        return {shard_id(i): self.connector.shard_key(stream, i) for i in range(stream.partition_count)}

    async def start_position(self, shard: str, key: str) -> str:
        if self.cfg.cursor_type == "LATEST":
            return await self.backend.tip(key)
        return ZERO_ID  # TRIM_HORIZON: reads clip to the retention horizon

    async def shard_loop(self, shard: ShardState) -> None:
        cfg = self.cfg
        catch_up = False
        next_at = 0.0
        checked_at = time.monotonic()
        while True:
            if not catch_up:
                delay = next_at - time.monotonic()
                await asyncio.sleep(max(delay, 0.0))
            next_at = time.monotonic() + max(cfg.interval_s, MIN_IDLE_POLL_S)
            if time.monotonic() - checked_at > EXISTS_CHECK_S:
                checked_at = time.monotonic()
                await self._check_exists()
            await self.acquire_slot(shard)
            handed = False
            try:
                handed, catch_up = await self._fetch(shard)
            finally:
                if not handed:
                    self.release_slot()

    async def _check_exists(self) -> None:
        stream = await self.connector.stream(self.cfg.project_id, self.cfg.stream_name)
        if stream is None or self.stream is None or stream.stream_id != self.stream.stream_id:
            raise SourceMissing(
                f"DIS stream {self.cfg.stream_name!r} was deleted; delete this trigger, or disable and enable "
                "it once the stream exists again"
            )

    async def _fetch(self, shard: ShardState) -> tuple[bool, bool]:
        """One GetRecords: ``(handed_over, fetch_again_at_once)``."""
        cfg = self.cfg
        assert self.stream is not None
        start = await self.clip_to_horizon(shard, shard.read_to, self.stream.data_duration * 3600)
        entries, tip = await self.backend.read_with_tip(shard.key, start, cfg.record_limit)
        shard.last_fetch_at = time.time()
        take = take_batch(
            entries,
            record_limit=cfg.record_limit,
            byte_limit=cfg.byte_limit,
            single_limit=cfg.max_fetch_bytes,
            more=len(entries) >= cfg.record_limit,
        )
        if take.oversized is not None:
            await self._discard(shard, take.oversized)
            return False, True
        if not take.records:
            return False, False
        event = build_event(
            cfg.stream_name,
            shard.shard_id,
            take.records,
            cursor_type=cfg.cursor_type,
            tip=tip,
            now_ms=int(time.time() * 1000),
        )
        first, last = take.records[0].id, take.records[-1].id
        source = {
            "stream_name": cfg.stream_name,
            "shard_id": shard.shard_id,
            "sequence_number": sequence_number(first),
            "last_sequence_number": sequence_number(last),
            "count": len(take.records),
        }
        self.records += len(take.records)
        shard.fetched += len(take.records)
        await self.hand_over(shard, event.dump_json(), commit_to=last, source=source)
        return True, take.full

    def source_detail(self) -> dict[str, Any]:
        assert self.stream is not None
        return {"stream_name": self.cfg.stream_name, "data_duration_hours": self.stream.data_duration}

    async def _discard(self, shard: ShardState, entry: Entry) -> None:
        cfg = self.cfg
        size = len(entry.fields.get("d", b""))
        number = sequence_number(entry.id)
        reason = (
            f"DIS record {cfg.stream_name}/{shard.shard_id}@{number} is {size} bytes, not smaller than the "
            f"trigger's max_fetch_bytes {cfg.max_fetch_bytes}: it can never be fetched, so it was skipped"
        )
        item = StreamItem(
            item_id=f"{cfg.trigger_id}:{shard.shard_id}:{number}",
            trigger_id=cfg.trigger_id,
            trigger_type="DIS",
            function_urn=cfg.function_urn,
            data={},
            size=size,
            source={
                "stream_name": cfg.stream_name,
                "shard_id": shard.shard_id,
                "sequence_number": number,
                "size": size,
            },
        )
        request_id = await self.ctx.ingest.reject(
            [item], status=AsyncStatus.DISCARD, code=OVERSIZED_CODE, reason=reason
        )
        self.discarded += 1
        self.passed(shard, entry.id)
        try:
            await self.ctx.state.audit(
                "disRecordDiscarded",
                cfg.trigger_id,
                {
                    "stream_name": cfg.stream_name,
                    "shard_id": shard.shard_id,
                    "sequence_number": number,
                    "size": size,
                    "max_fetch_bytes": cfg.max_fetch_bytes,
                    "request_id": request_id,
                },
            )
        except Exception as exc:
            self.error("auditing a discarded record", exc)

    def status(self) -> dict[str, Any]:
        body = super().status()
        body["stream_name"] = self.cfg.stream_name
        for shard in body["shards"]:
            for name in ("committed", "read_to"):
                shard[name] = _number_or_none(shard[name])
        return body


def _number_or_none(value: str) -> str | None:
    """The sequence number of a position; None for "before everything"."""
    return None if value == ZERO_ID else sequence_number(value)


# -- the connector ---------------------------------------------------------------------------------------


class DISConnector(StreamConnector):
    trigger_types: ClassVar[tuple[str, ...]] = ("DIS",)
    kind: ClassVar[str] = "dis"
    source_name: ClassVar[str] = "DIS streams"

    def __init__(self, ctx: ConnectorContext) -> None:
        super().__init__(ctx)
        self.store: DISStore | None = ctx.state if isinstance(ctx.state, DISStore) else None

    def new_runner(self, backend: StreamBackend, trigger: TriggerSpec) -> StreamRunner:
        return _Runner(self, backend, trigger, resolve_config(trigger))

    def _require(self) -> tuple[StreamBackend, DISStore]:
        backend = self.require_backend()
        if self.store is None:
            raise unavailable("DIS streams need the service store")
        return backend, self.store

    async def validate(self, trigger: TriggerSpec, *, existing: list[TriggerSpec]) -> dict[str, Any]:
        cfg = resolve_config(trigger)
        self._require()
        if await self.stream(cfg.project_id, cfg.stream_name) is None:
            raise bad_request(
                f"event_data.stream_name: DIS stream {cfg.stream_name!r} does not exist in project "
                f"{cfg.project_id}; create it first (POST /v2/{cfg.project_id}/streams)"
            )
        return {}

    # -- streams -------------------------------------------------------------------------------------

    def shard_key(self, stream: StoredDISStream, index: int) -> str:
        assert self.backend is not None
        return self.backend.key("dis", stream.stream_id, str(index))

    async def stream(self, project_id: str, stream_name: str) -> StoredDISStream | None:
        _, store = self._require()
        return await store.get_dis_stream(project_id, stream_name)

    async def list_streams(self, project_id: str, offset: int, limit: int) -> tuple[list[StoredDISStream], int]:
        _, store = self._require()
        return await store.list_dis_streams(project_id, offset, limit)

    async def existing_stream(self, project_id: str, stream_name: str) -> StoredDISStream:
        stream = await self.stream(project_id, stream_name)
        if stream is None:
            raise not_found(f"DIS stream {stream_name!r} does not exist in project {project_id}")
        return stream

    async def create_stream(
        self, project_id: str, stream_name: str, partition_count: int, data_duration: int
    ) -> StoredDISStream:
        backend, store = self._require()
        stream = StoredDISStream(
            project_id=project_id,
            stream_name=stream_name,
            stream_id=uuid.uuid4().hex,
            partition_count=partition_count,
            data_duration=data_duration,
        )
        if not await store.put_dis_stream(stream):
            raise conflict(f"DIS stream {stream_name!r} already exists in project {project_id}")
        keys = [self.shard_key(stream, i) for i in range(partition_count)]
        try:
            await _redis(backend.set_retention(keys, data_duration * 3600))
        except FSSError:
            await store.delete_dis_stream(project_id, stream_name)
            raise
        return stream

    async def delete_stream(self, project_id: str, stream_name: str) -> None:
        backend, store = self._require()
        stream = await self.existing_stream(project_id, stream_name)
        if not await store.delete_dis_stream(project_id, stream_name):
            raise not_found(f"DIS stream {stream_name!r} does not exist in project {project_id}")
        await _redis(backend.delete([self.shard_key(stream, i) for i in range(stream.partition_count)]))

    async def shard_ranges(self, stream: StoredDISStream) -> list[tuple[str | None, str | None]]:
        """(first, last) sequence number still readable per shard (None, None when empty)."""
        backend, _ = self._require()
        horizon = backend.horizon(stream.data_duration * 3600)
        out: list[tuple[str | None, str | None]] = []
        for index in range(stream.partition_count):
            key = self.shard_key(stream, index)
            first = await _redis(backend.read(key, horizon, 1))
            tip = await _redis(backend.tip(key))
            if first:
                out.append((sequence_number(first[0].id), sequence_number(tip)))
            else:
                out.append((None, None))
        return out

    async def put_records(self, stream: StoredDISStream, records: Sequence[PutRecord]) -> list[tuple[str, str]]:
        """Append records (atomically, all or none); ``(shard_id, sequence_number)`` per record, in order."""
        backend, _ = self._require()
        writes: list[tuple[str, dict[str, bytes | str]]] = []
        shards: list[str] = []
        for index, record in enumerate(records):
            number = self._route(stream, record, index)
            shards.append(shard_id(number))
            writes.append((self.shard_key(stream, number), {"k": record.partition_key or "", "d": record.data}))
        ids = await _redis(backend.append(writes, retention_s=stream.data_duration * 3600))
        return [(shard, sequence_number(i)) for shard, i in zip(shards, ids, strict=True)]

    async def put_once(
        self, project_id: str, stream_name: str, data: bytes, *, partition_key: str, dedupe_key: str
    ) -> tuple[str, str]:
        """Append one record unless ``dedupe_key`` was appended before (destinations): ``(shard, seq)``."""
        backend, _ = self._require()
        stream = await self.stream(project_id, stream_name)
        if stream is None:
            raise SourceMissing(f"DIS stream {stream_name!r} does not exist in project {project_id}")
        number = shard_for_key(partition_key, stream.partition_count)
        found, _ = await backend.append_once(
            self.shard_key(stream, number),
            {"k": partition_key, "d": data},
            dedupe_key=f"dis:{stream.stream_id}:{dedupe_key}",
            retention_s=stream.data_duration * 3600,
        )
        return shard_id(number), sequence_number(found)

    @staticmethod
    def _route(stream: StoredDISStream, record: PutRecord, index: int) -> int:
        if record.partition_id is not None:
            number = shard_index(record.partition_id, stream.partition_count)
            if number is None:
                raise bad_request(
                    f"records[{index}].partition_id: {record.partition_id[:80]!r} is not a partition of stream "
                    f"{stream.stream_name!r} (shardId-0000000000 to {shard_id(stream.partition_count - 1)})"
                )
            return number
        if record.explicit_hash_key is not None:
            return (record.explicit_hash_key * stream.partition_count) >> 63
        if record.partition_key is not None:
            return shard_for_key(record.partition_key, stream.partition_count)
        return secrets.randbelow(stream.partition_count)

    # -- consumers (GetPartitionCursor / GetRecords) ---------------------------------------------------

    async def cursor(
        self,
        stream: StoredDISStream,
        partition: str,
        cursor_type: str,
        starting_sequence_number: str | None,
        timestamp_ms: int | None,
    ) -> str:
        """A partition cursor: Base64 JSON naming where reading starts (resolved for LATEST/AT_TIMESTAMP)."""
        backend, _ = self._require()
        number = shard_index(partition, stream.partition_count)
        if number is None:
            raise bad_request(f"partition-id: {partition[:80]!r} is not a partition of stream {stream.stream_name!r}")
        start: str | None
        if cursor_type == "TRIM_HORIZON":
            start = None
        elif cursor_type == "LATEST":
            start = str(int(sequence_number(await _redis(backend.tip(self.shard_key(stream, number))))) + 1)
        elif cursor_type == "AT_TIMESTAMP":
            if timestamp_ms is None:
                raise bad_request("timestamp: is required with cursor-type AT_TIMESTAMP (epoch milliseconds)")
            start = str(timestamp_ms * 1_000_000)
        else:
            if starting_sequence_number is None or not starting_sequence_number.isdigit():
                raise bad_request(
                    f"starting-sequence-number: {cursor_type} needs a sequence number of digits "
                    f"(got {starting_sequence_number!r})"
                )
            start = starting_sequence_number
            if cursor_type == "AFTER_SEQUENCE_NUMBER":
                start = str(int(start) + 1)
        return DISEvent.partition_cursor(
            stream.stream_name, shard_id(number), cursor_type, start or "", int(time.time() * 1000)
        )

    async def get_records(
        self, project_id: str, cursor: str, max_fetch_bytes: int | None
    ) -> tuple[list[dict[str, Any]], str]:
        """Records from a partition cursor (at most ``max_fetch_bytes``), and the next cursor."""
        backend, _ = self._require()
        try:
            padded = cursor + "=" * (-len(cursor) % 4)
            doc = json.loads(base64.b64decode(padded, validate=True))
            param = doc["getIteratorParam"]
            stream_name, partition = str(param["stream-name"]), str(param["partition-id"])
            cursor_type = str(param.get("cursor-type", "AT_SEQUENCE_NUMBER"))
            start_number = str(param.get("starting-sequence-number") or "")
        except (ValueError, KeyError, TypeError):
            raise bad_request("partition-cursor: not a cursor from GET /v2/{project_id}/cursors") from None
        stream = await self.existing_stream(project_id, stream_name)
        number = shard_index(partition, stream.partition_count)
        if number is None:
            raise bad_request(f"partition-cursor: {partition!r} is not a partition of stream {stream_name!r}")
        horizon = backend.horizon(stream.data_duration * 3600)
        start = entry_id(start_number) if start_number.isdigit() else horizon
        if id_before(start, horizon):
            start = horizon
        limit = min(max_fetch_bytes or MAX_FETCH_BYTES, MAX_FETCH_BYTES)
        entries = await _redis(backend.read(self.shard_key(stream, number), start, 1000))
        take = take_batch(entries, record_limit=1000, byte_limit=limit, single_limit=None, more=False)
        records = [
            {
                "partition_key": record_parts(e)[0],
                "sequence_number": sequence_number(e.id),
                "data": base64.b64encode(record_parts(e)[1]).decode("ascii"),
                "timestamp": id_ms(e.id),
                "timestamp_type": "CreateTime",
            }
            for e in take.records
        ]
        next_start = (
            str(int(sequence_number(take.records[-1].id)) + 1)
            if take.records
            else (start_number or str(int(sequence_number(start))))
        )
        next_cursor = DISEvent.partition_cursor(
            stream_name, shard_id(number), cursor_type, next_start, int(time.time() * 1000)
        )
        return records, next_cursor

    # -- checkpoints -----------------------------------------------------------------------------------

    async def get_checkpoint(self, trigger: TriggerSpec) -> dict[str, Any]:
        cfg = resolve_config(trigger)
        backend, _ = self._require()
        stream = await self.existing_stream(cfg.project_id, cfg.stream_name)
        shards = []
        for index in range(stream.partition_count):
            name = f"{_Runner.kind}:{shard_id(index)}"
            saved = await self.ctx.state.get_checkpoint(trigger.trigger_id, name)
            after = saved.get("after") if isinstance(saved, dict) else None
            tip = await _redis(backend.tip(self.shard_key(stream, index)))
            shards.append(
                {
                    "shard_id": shard_id(index),
                    "committed_sequence_number": _number_or_none(after) if isinstance(after, str) else None,
                    "latest_sequence_number": _number_or_none(tip),
                }
            )
        return {"stream_name": cfg.stream_name, "shards": shards}

    async def set_checkpoint(self, trigger: TriggerSpec, body: dict[str, Any]) -> dict[str, Any]:
        """``{"position": "TRIM_HORIZON" | "LATEST"}`` or ``{"shards": [{"shard_id", "sequence_number"}]}``
        (reading resumes *at* that sequence number)."""
        cfg = resolve_config(trigger)
        backend, _ = self._require()
        if trigger.trigger_id in self._runners:
            raise conflict(f"trigger {trigger.trigger_id} is still reading here: disable it first")
        stream = await self.existing_stream(cfg.project_id, cfg.stream_name)
        unknown = sorted(set(body) - {"position", "shards"})
        if unknown or len(body) != 1:
            raise bad_request(
                'give either "position": "TRIM_HORIZON" | "LATEST" or "shards": [{"shard_id", "sequence_number"}]'
            )
        positions: dict[int, str] = {}
        if "position" in body:
            position = body["position"]
            if position not in ("TRIM_HORIZON", "LATEST"):
                raise bad_request(f"position: must be TRIM_HORIZON or LATEST (got {position!r})")
            for index in range(stream.partition_count):
                key = self.shard_key(stream, index)
                positions[index] = ZERO_ID if position == "TRIM_HORIZON" else await _redis(backend.tip(key))
        else:
            positions = self._requested_positions(stream, body["shards"])
        for index, after in positions.items():
            await self.ctx.state.put_checkpoint(
                trigger.trigger_id, f"{_Runner.kind}:{shard_id(index)}", {"after": after}
            )
        return await self.get_checkpoint(trigger)

    @staticmethod
    def _requested_positions(stream: StoredDISStream, requested: Any) -> dict[int, str]:
        if not isinstance(requested, list) or not requested:
            raise bad_request('shards: must be a non-empty list of {"shard_id", "sequence_number"}')
        positions: dict[int, str] = {}
        for i, entry in enumerate(requested):
            where = f"shards[{i}]"
            if not isinstance(entry, dict) or set(entry) != {"shard_id", "sequence_number"}:
                raise bad_request(f'{where}: must be {{"shard_id", "sequence_number"}} (got {entry!r})')
            number = shard_index(str(entry["shard_id"]), stream.partition_count)
            if number is None:
                raise bad_request(f"{where}.shard_id: {entry['shard_id']!r} is not a shard of {stream.stream_name!r}")
            seq = str(entry["sequence_number"])
            if isinstance(entry["sequence_number"], bool) or not seq.isdigit():
                raise bad_request(f"{where}.sequence_number: must be digits (got {entry['sequence_number']!r})")
            if number in positions:
                raise bad_request(f"{where}: {shard_id(number)} is listed twice")
            positions[number] = entry_id(int(seq) - 1) if int(seq) > 0 else ZERO_ID
        return positions


async def _redis(call: Any) -> Any:
    """Await a backend call; Redis failures become FSS 503s for the API."""
    try:
        return await call
    except StreamsUnavailable as exc:
        raise unavailable(str(exc)) from None


__all__ = [
    "DISConnector",
    "DISTriggerConfig",
    "PutRecord",
    "build_event",
    "resolve_config",
    "shard_for_key",
    "shard_id",
    "take_batch",
]
