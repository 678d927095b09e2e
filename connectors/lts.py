"""LTS log groups and log streams on Redis Streams, and LTS triggers that receive their logs in batches.

Logs (see docs/lts.md): a log stream is one Redis stream ``<prefix>:lts:<log_stream_id>``; each
reported log line is one entry holding the log as the event shows it (``message``, ``time`` epoch
ms, ``host_name``, ``ip``, ``path``, ``log_uid``, ``line_no``) and the report's labels. Groups and
streams (their names, ids and ``ttl_in_days``) are in the Triggerbus store. Logs older than the
stream's TTL are unreadable and trimmed by a sweep.

Trigger (``event_data``): ``log_group_id``, ``log_topic_id`` (the log stream id); extension
``batch_window_ms`` (0-300000, default 1000). A trigger receives the logs reported after it was
first enabled.

Batching, as the docs describe LTS's consumer: a batch is sent when its accumulated size or its
accumulated time reaches a threshold. Size: an event's raw message (the JSON inside ``lts.data``)
is at most 75 KB (76,800 bytes): when the next log would pass that, the batch is sent and the log
starts the next one. Time: a batch is sent ``batch_window_ms`` after its first log arrived. A single
log whose raw message alone is over 75 KB is split, as the user guide says (§6.7: raw messages over
75 KB are split into 75 KB messages): its ``message`` is cut (at character boundaries) into pieces
that each fit a 75 KB event, sent in order, each piece marked with ``split_index`` (0-based) and
``split_count``.

Event: ``{"lts": {"data": base64(JSON {"logs": [...], "owner": <project_id>, "log_group_id",
"log_topic_id"})}}`` (contract §1.12, Huawei's form: ``logs`` an array).

Delivery: at least once, with the same position rules as DIS triggers
(:class:`connectors.redis_streams.StreamRunner`): the log stream's position moves only over
batches whose invocation finished (a poison batch after its retries, too).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
    id_before,
    sequence_number,
)
from schemas.base import json_compact
from schemas.errors import FSSError, bad_request, conflict, not_found, unavailable
from schemas.events.lts import LTSEvent
from schemas.urn import FunctionUrn
from triggerbus.store.models import StoredLogGroup, StoredLogStream

log = logging.getLogger(__name__)

EVENT_LIMIT = 75 * 1024  # bytes of an event's raw message (the JSON inside lts.data)
DEFAULT_WINDOW_MS = 1000
MAX_WINDOW_MS = 300_000
READ_COUNT = 256  # logs per Redis read
POLL_S = 0.1  # how often an idle log stream is looked at for logs reported through other processes
IN_FLIGHT = 8  # unfinished batches per trigger
_SPLIT_RESERVE = {"split_index": 999999, "split_count": 999999}  # widest split markers, for sizing
LABEL_FIELDS = {
    "host_name": ("host_name", "hostName"),
    "ip": ("ip", "hostIP", "hostIp"),
    "path": ("path", "pathFile"),
}


def log_stream_key(backend: StreamBackend, log_stream_id: str) -> str:
    return backend.key("lts", log_stream_id)


def build_log(message: str, time_ms: int, labels: Mapping[str, str], line_no: int) -> dict[str, Any]:
    """One log as events carry it (the template's keys, in its order)."""
    return {
        "message": message,
        "time": time_ms,
        "host_name": _label(labels, "host_name"),
        "ip": _label(labels, "ip"),
        "path": _label(labels, "path"),
        "log_uid": str(uuid.uuid1()),
        "line_no": line_no,
    }


def _label(labels: Mapping[str, str], name: str) -> str:
    for key in LABEL_FIELDS[name]:
        if key in labels:
            return str(labels[key])
    return ""


# -- packing logs into 75 KB events ---------------------------------------------------------------------


def payload_base(owner: str, log_group_id: str, log_topic_id: str) -> int:
    """Bytes of an event's raw message with no logs."""
    return len(_payload([], owner, log_group_id, log_topic_id).encode())


def _payload(logs: list[Any], owner: str, log_group_id: str, log_topic_id: str) -> str:
    return json_compact({"logs": logs, "owner": owner, "log_group_id": log_group_id, "log_topic_id": log_topic_id})


def _size(value: Any) -> int:
    return len(json_compact(value).encode())


@dataclass(slots=True)
class Packed:
    """One event's logs, and the stream position once it (and everything before) finished."""

    logs: list[dict[str, Any]]
    commit_to: str
    first_id: str
    last_id: str


@dataclass(slots=True)
class Packer:
    """Accumulates logs into events whose raw message stays within ``limit`` bytes.

    ``last_id`` is the id of the last log fully packed (the position a split piece that is not
    the last one may commit to: its own log is not finished until every piece is).
    """

    base: int
    last_id: str
    limit: int = EVENT_LIMIT
    logs: list[dict[str, Any]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    size: int = 0
    opened_at: float | None = None

    def add(self, entry_id: str, entry_log: dict[str, Any], now: float) -> list[Packed]:
        """Add one log; returns the events it closed (in order)."""
        encoded = _size(entry_log)
        out: list[Packed] = []
        if self.base + encoded > self.limit:
            out += self.close()
            out += self._split(entry_id, entry_log)
            self.last_id = entry_id
            return out
        if self.logs and self.base + self.size + 1 + encoded > self.limit:
            out += self.close()
        self.size += encoded + (1 if self.logs else 0)
        self.logs.append(entry_log)
        self.ids.append(entry_id)
        if self.opened_at is None:
            self.opened_at = now
        self.last_id = entry_id
        return out

    def due(self, now: float, window_s: float) -> bool:
        return self.opened_at is not None and now - self.opened_at >= window_s

    def close(self) -> list[Packed]:
        if not self.logs:
            return []
        packed = Packed(self.logs, self.ids[-1], self.ids[0], self.ids[-1])
        self.logs, self.ids, self.size, self.opened_at = [], [], 0, None
        return [packed]

    def _split(self, entry_id: str, entry_log: dict[str, Any]) -> list[Packed]:
        message = str(entry_log.get("message", ""))
        frame = _size({**entry_log, "message": "", **_SPLIT_RESERVE})
        budget = self.limit - self.base - frame
        if budget < 64:  # the log's other fields alone fill an event (ingest bounds them; be safe)
            return [Packed([entry_log], entry_id, entry_id, entry_id)]
        pieces = list(split_text(message, budget))
        out = []
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            part = {**entry_log, "message": piece, "split_index": index, "split_count": len(pieces)}
            out.append(Packed([part], entry_id if last else self.last_id, entry_id, entry_id))
        return out


def split_text(text: str, budget: int) -> Iterator[str]:
    """Consecutive pieces of ``text`` whose JSON string content is at most ``budget`` bytes."""

    def cost(piece: str) -> int:
        return len(json_compact(piece).encode()) - 2  # without the quotes

    start = 0
    while start < len(text):
        low, high = start + 1, min(len(text), start + budget)
        while low < high:
            middle = (low + high + 1) // 2
            if cost(text[start:middle]) <= budget:
                low = middle
            else:
                high = middle - 1
        yield text[start:low]
        start = low
    if not text:
        yield ""


def build_event(packed: Packed, owner: str, log_group_id: str, log_topic_id: str) -> LTSEvent:
    return LTSEvent.build(log_group_id, log_topic_id, owner, packed.logs)


# -- configuration and store ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LTSTriggerConfig:
    trigger_id: str
    function_urn: str
    project_id: str
    log_group_id: str
    log_topic_id: str
    window_ms: int


def resolve_config(trigger: TriggerSpec) -> LTSTriggerConfig:
    data = trigger.event_data
    window = data.get("batch_window_ms", DEFAULT_WINDOW_MS)
    if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window <= MAX_WINDOW_MS:
        raise bad_request(f"event_data.batch_window_ms: must be 0-{MAX_WINDOW_MS} (got {window!r})")
    return LTSTriggerConfig(
        trigger_id=trigger.trigger_id,
        function_urn=trigger.function_urn,
        project_id=FunctionUrn.parse(trigger.function_urn).project_id,
        log_group_id=str(data.get("log_group_id", "")).strip(),
        log_topic_id=str(data.get("log_topic_id", "")).strip(),
        window_ms=window,
    )


@runtime_checkable
class LTSStore(Protocol):
    async def put_log_group(self, group: StoredLogGroup) -> bool: ...

    async def get_log_group(self, log_group_id: str) -> StoredLogGroup | None: ...

    async def list_log_groups(self, project_id: str) -> list[StoredLogGroup]: ...

    async def delete_log_group(self, log_group_id: str) -> bool: ...

    async def put_log_stream(self, stream: StoredLogStream) -> bool: ...

    async def get_log_stream(self, log_stream_id: str) -> StoredLogStream | None: ...

    async def list_log_streams(self, log_group_id: str) -> list[StoredLogStream]: ...

    async def delete_log_stream(self, log_stream_id: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class ReportedLog:
    """One log line of a report: its text and time (ns)."""

    content: str
    time_ns: int


# -- one trigger -----------------------------------------------------------------------------------------


class _Runner(StreamRunner):
    kind: ClassVar[str] = "lts"

    def __init__(self, connector: LTSConnector, backend: StreamBackend, spec: TriggerSpec, cfg: LTSTriggerConfig):
        super().__init__(
            connector.ctx,
            backend,
            spec,
            per_shard_in_flight=IN_FLIGHT,
            concurrency=IN_FLIGHT,
            lease_ttl_s=connector.lease_ttl_s,
        )
        self.connector = connector
        self.cfg = cfg
        self.stream: StoredLogStream | None = None
        self.split_logs = 0

    async def shard_keys(self) -> dict[str, str]:
        stream = await self.connector.log_stream(self.cfg.project_id, self.cfg.log_group_id, self.cfg.log_topic_id)
        if stream is None:
            raise SourceMissing(
                f"log stream {self.cfg.log_topic_id} of log group {self.cfg.log_group_id} does not exist "
                f"in project {self.cfg.project_id}"
            )
        self.stream = stream
        return {stream.log_stream_id: log_stream_key(self.backend, stream.log_stream_id)}

    async def start_position(self, shard_id: str, key: str) -> str:
        return await self.backend.tip(key)  # the logs reported from now on

    async def shard_loop(self, shard: ShardState) -> None:
        cfg = self.cfg
        assert self.stream is not None
        base = payload_base(cfg.project_id, cfg.log_group_id, cfg.log_topic_id)
        packer = Packer(base, shard.read_to)
        position = shard.read_to  # the last log read into the packer
        window_s = cfg.window_ms / 1000
        while True:
            start = await self.clip_to_horizon(shard, position, self.stream.ttl_in_days * 86400)
            entries = await self.backend.read(shard.key, start, READ_COUNT)
            shard.last_fetch_at = time.time()
            now = time.monotonic()
            ready: list[Packed] = []
            for entry in entries:
                ready += packer.add(entry.id, _decode_log(entry), now)
                position = entry.id
            if packer.due(now, window_s):
                ready += packer.close()
            for packed in ready:
                await self._send(shard, packed)
            if not entries:
                wait = POLL_S
                if packer.opened_at is not None:
                    wait = min(wait, max(0.0, packer.opened_at + window_s - time.monotonic()))
                await self.backend.wait_for_append(shard.key, wait)

    def source_detail(self) -> dict[str, Any]:
        assert self.stream is not None
        return {
            "log_group_id": self.cfg.log_group_id,
            "log_topic_id": self.cfg.log_topic_id,
            "ttl_in_days": self.stream.ttl_in_days,
        }

    async def _send(self, shard: ShardState, packed: Packed) -> None:
        cfg = self.cfg
        event = build_event(packed, cfg.project_id, cfg.log_group_id, cfg.log_topic_id)
        source = {
            "log_group_id": cfg.log_group_id,
            "log_topic_id": cfg.log_topic_id,
            "sequence_number": sequence_number(packed.first_id),
            "last_sequence_number": sequence_number(packed.last_id),
            "count": len(packed.logs),
        }
        if "split_index" in packed.logs[0]:
            source["split_index"] = packed.logs[0]["split_index"]
            self.split_logs += packed.logs[0]["split_index"] == 0
        await self.acquire_slot(shard)
        try:
            await self.hand_over(shard, event.dump_json(), commit_to=packed.commit_to, source=source)
        except BaseException:
            self.release_slot()
            raise
        self.records += len(packed.logs)
        shard.fetched += len(packed.logs)

    def status(self) -> dict[str, Any]:
        body = super().status()
        body.update(log_group_id=self.cfg.log_group_id, log_topic_id=self.cfg.log_topic_id)
        body["split_logs"] = self.split_logs
        for shard in body["shards"]:
            for name in ("committed", "read_to"):
                shard[name] = None if shard[name] == ZERO_ID else sequence_number(shard[name])
        return body


def _decode_log(entry: Entry) -> dict[str, Any]:
    raw = entry.fields.get("log", b"")
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):  # not written by Triggerbus: deliver the bytes as the message
        return {"message": raw.decode("utf-8", errors="replace"), "time": int(entry.id.partition("-")[0])}
    return value


# -- the connector ---------------------------------------------------------------------------------------


class LTSConnector(StreamConnector):
    trigger_types: ClassVar[tuple[str, ...]] = ("LTS",)
    kind: ClassVar[str] = "lts"
    source_name: ClassVar[str] = "LTS log streams"

    def __init__(self, ctx: ConnectorContext) -> None:
        super().__init__(ctx)
        self.store: LTSStore | None = ctx.state if isinstance(ctx.state, LTSStore) else None
        self.reported = 0

    def new_runner(self, backend: StreamBackend, trigger: TriggerSpec) -> StreamRunner:
        return _Runner(self, backend, trigger, resolve_config(trigger))

    def _require(self) -> tuple[StreamBackend, LTSStore]:
        backend = self.require_backend()
        if self.store is None:
            raise unavailable("LTS log streams need the service store")
        return backend, self.store

    # -- triggers --------------------------------------------------------------------------------------

    async def validate(self, trigger: TriggerSpec, *, existing: list[TriggerSpec]) -> dict[str, Any]:
        cfg = resolve_config(trigger)
        self._require()
        group = await self.log_group(cfg.project_id, cfg.log_group_id)
        if group is None:
            raise bad_request(
                f"event_data.log_group_id: log group {cfg.log_group_id!r} does not exist in project {cfg.project_id}"
            )
        stream = await self.log_stream(cfg.project_id, cfg.log_group_id, cfg.log_topic_id)
        if stream is None:
            raise bad_request(
                f"event_data.log_topic_id: log stream {cfg.log_topic_id!r} does not exist in log group "
                f"{group.name!r} ({cfg.log_group_id})"
            )
        return {"log_group_name": group.name, "log_topic_name": stream.name}

    # -- groups and streams ----------------------------------------------------------------------------

    async def log_group(self, project_id: str, log_group_id: str) -> StoredLogGroup | None:
        _, store = self._require()
        group = await store.get_log_group(log_group_id)
        return group if group is not None and group.project_id == project_id else None

    async def existing_group(self, project_id: str, log_group_id: str) -> StoredLogGroup:
        group = await self.log_group(project_id, log_group_id)
        if group is None:
            raise not_found(f"log group {log_group_id} does not exist in project {project_id}")
        return group

    async def log_stream(self, project_id: str, log_group_id: str, log_stream_id: str) -> StoredLogStream | None:
        _, store = self._require()
        stream = await store.get_log_stream(log_stream_id)
        if stream is None or stream.project_id != project_id or stream.log_group_id != log_group_id:
            return None
        return stream

    async def existing_stream(self, project_id: str, log_group_id: str, log_stream_id: str) -> StoredLogStream:
        await self.existing_group(project_id, log_group_id)
        stream = await self.log_stream(project_id, log_group_id, log_stream_id)
        if stream is None:
            raise not_found(f"log stream {log_stream_id} does not exist in log group {log_group_id}")
        return stream

    async def create_group(self, project_id: str, name: str, ttl_in_days: int) -> StoredLogGroup:
        _, store = self._require()
        group = StoredLogGroup(
            log_group_id=str(uuid.uuid4()), project_id=project_id, name=name, ttl_in_days=ttl_in_days
        )
        if not await store.put_log_group(group):
            raise conflict(f"log group {name!r} already exists in project {project_id}")
        return group

    async def list_groups(self, project_id: str) -> list[StoredLogGroup]:
        _, store = self._require()
        return await store.list_log_groups(project_id)

    async def delete_group(self, project_id: str, log_group_id: str) -> None:
        backend, store = self._require()
        await self.existing_group(project_id, log_group_id)
        streams = await store.list_log_streams(log_group_id)
        if not await store.delete_log_group(log_group_id):
            raise not_found(f"log group {log_group_id} does not exist in project {project_id}")
        await _redis(backend.delete([log_stream_key(backend, s.log_stream_id) for s in streams]))

    async def create_stream(
        self, project_id: str, log_group_id: str, name: str, ttl_in_days: int | None
    ) -> StoredLogStream:
        backend, store = self._require()
        group = await self.existing_group(project_id, log_group_id)
        stream = StoredLogStream(
            log_stream_id=str(uuid.uuid4()),
            log_group_id=log_group_id,
            project_id=project_id,
            name=name,
            ttl_in_days=ttl_in_days or group.ttl_in_days,
        )
        if not await store.put_log_stream(stream):
            raise conflict(f"log stream {name!r} already exists in log group {group.name!r}")
        try:
            await _redis(
                backend.set_retention([log_stream_key(backend, stream.log_stream_id)], stream.ttl_in_days * 86400)
            )
        except FSSError:
            await store.delete_log_stream(stream.log_stream_id)
            raise
        return stream

    async def list_streams(self, project_id: str, log_group_id: str) -> list[StoredLogStream]:
        _, store = self._require()
        await self.existing_group(project_id, log_group_id)
        return await store.list_log_streams(log_group_id)

    async def delete_stream(self, project_id: str, log_group_id: str, log_stream_id: str) -> None:
        backend, store = self._require()
        await self.existing_stream(project_id, log_group_id, log_stream_id)
        if not await store.delete_log_stream(log_stream_id):
            raise not_found(f"log stream {log_stream_id} does not exist in log group {log_group_id}")
        await _redis(backend.delete([log_stream_key(backend, log_stream_id)]))

    # -- reporting and reading logs --------------------------------------------------------------------

    async def report(self, stream: StoredLogStream, logs: Sequence[ReportedLog], labels: Mapping[str, str]) -> int:
        """Append a report's logs in order (atomically); how many."""
        backend, _ = self._require()
        key = log_stream_key(backend, stream.log_stream_id)
        labels_json = json_compact(dict(labels))
        writes: list[tuple[str, dict[str, bytes | str]]] = [
            (
                key,
                {
                    "log": json_compact(build_log(item.content, item.time_ns // 1_000_000, labels, index + 1)),
                    "labels": labels_json,
                },
            )
            for index, item in enumerate(logs)
        ]
        await _redis(backend.append(writes, retention_s=stream.ttl_in_days * 86400))
        self.reported += len(writes)
        return len(writes)

    async def query(self, stream: StoredLogStream, start_ms: int, end_ms: int, limit: int) -> list[dict[str, Any]]:
        """Logs reported between ``start_ms`` and ``end_ms`` (inclusive), oldest first."""
        backend, _ = self._require()
        horizon = backend.horizon(stream.ttl_in_days * 86400)
        start = f"{start_ms}-0"
        if id_before(start, horizon):
            start = horizon
        entries = await _redis(
            backend.read_range(log_stream_key(backend, stream.log_stream_id), start, f"{end_ms}-{2**63 - 1}", limit)
        )
        out = []
        for entry in entries:
            logged = _decode_log(entry)
            labels: Any = {}
            with contextlib.suppress(ValueError):
                labels = json.loads(entry.fields.get("labels", b"{}"))
            out.append(
                {
                    "content": logged.get("message", ""),
                    "line_num": sequence_number(entry.id),
                    "labels": labels if isinstance(labels, dict) else {},
                    "time": logged.get("time"),
                }
            )
        return out


async def _redis(call: Any) -> Any:
    """Await a backend call; Redis failures become FSS 503s for the API."""
    try:
        return await call
    except StreamsUnavailable as exc:
        raise unavailable(str(exc)) from None
