"""DDS and GAUSSMONGO (GeminiDB Mongo) triggers: a MongoDB change stream per trigger, delivered in order.

Configuration (``event_data``; see docs/dds.md): ``instance_id``, ``db_name`` (not admin, local or
config), ``collection_name``, ``db_user``/``db_password`` (encrypted at rest, never returned or
logged), ``batch_size`` (1-10000, default 100). The server is ``connection_uri`` when given (a
password inside it is moved to ``db_password`` at create time), else the service's instance map
``TRIGGERBUS_MONGO_INSTANCES`` (instance id -> URI). Extensions: ``batch_window_ms`` (0-300000,
default 500) and ``on_history_lost`` (``fail`` (default) | ``resume_from_time`` | ``resume_latest``).

Events (contract §1.10/§1.11): one record per change, ``full_document`` looked up on updates
(``full_document="updateLookup"``), BSON values in canonical Extended JSON v2 like the templates
(``{"$numberDouble": "52.0"}``); DDS emits objects, GAUSSMONGO JSON strings, quoted event names
and a top-level ``vernier`` (the batch's last token). ``size_bytes`` is the BSON size of the
change document. ``event_source_id`` is the trigger id.

Why one ordered batch at a time, and not the stream batcher the Kafka connector uses
-----------------------------------------------------------------------------------
A change stream is one ordered sequence with one position, its resume token. Kafka has an
offset per record, so batches of a partition may run side by side and the committed offset
moves over the finished prefix. A resume token can only say "everything up to here": running
batches side by side would let a retried batch (an update) run after a later one (a delete of
the same document), and a function that mirrors the collection would end in the wrong state.
So each trigger delivers serially: read up to ``batch_size`` changes (or what arrived within
the window), build one event, enqueue it as an async invocation, wait for its terminal state
(SUCCESS, or FAIL/DISCARD after the function's retry policy), then persist the token of the
batch's last change and go on. Reading is not held up meanwhile: a reader task prefetches the
next batch (bounded: ``batch_size`` changes and 6 MB), so the database round trips overlap the
invocation. The cost is one invocation in flight per trigger, which is what FunctionGraph's
DDS trigger documents anyway (changes are handed over in order).

Delivery is at least once. The token is persisted only after the batch's terminal state, so a
crash (or a lost lease) re-delivers the batch that was in flight, and nothing after the
persisted token is skipped: on restart the stream reopens exactly there (``resume_after``). A
new trigger starts at the current end of the stream and persists that starting token at once,
so changes made after activation and before the first batch survive a restart. While nothing
changes, the server's post-batch token is persisted every ``mongo_idle_checkpoint_s`` (10 s):
a quiet collection does not let its token age out of the oplog.

Connection loss and server restarts: PyMongo resumes an open stream by itself once on
resumable errors; anything else closes the stream, and the trigger reopens it from its
position with capped exponential backoff (0.5 s to 30 s). Everything read before the error is
delivered first. ``status()`` shows the state, position, resume token age and last error.

History lost (the token is no longer in the oplog: ChangeStreamHistoryLost 286, InvalidResumeToken
260, ChangeStreamFatalError 280): retrying cannot help, so the trigger never loops. It records
the gap, as an async record (FAIL with policy ``fail``, else DISCARD) naming the lost position
and what happened next, plus an audit entry, and follows ``on_history_lost`` (see
:func:`connectors.mongo_stream.recovery_plan`): ``fail`` stops reading (state
``history_lost``) until an operator moves the checkpoint; the two resume policies reopen at
the lost token's cluster time / the oldest change still there / the current end.

Why PyMongo's asyncio API and not motor: motor runs each blocking ``getMore`` in a shared pool
of ``5 x CPUs`` threads. Every idle change stream holds a thread for ``max_await_time_ms``, so
ten quiet triggers on a 2-core host would starve the MongoDB store and each other, and a motor
call cannot be cancelled. ``pymongo.AsyncMongoClient`` (motor's successor, same driver) awaits
sockets on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from bson.timestamp import Timestamp
from pymongo import AsyncMongoClient
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure, PyMongoError, ServerSelectionTimeoutError

from bus.aio import stop_tasks
from connectors.base import UNKNOWN_LAG, ConnectorContext, Lag, RunnerConnector, TriggerSpec
from connectors.mongo_stream import (
    DEFAULT_HISTORY_LOST_POLICY,
    HistoryLostPolicy,
    MongoTarget,
    OpenMode,
    Position,
    RecoveryStep,
    change_size,
    is_position_lost,
    recovery_plan,
    resolve_target,
    split_credentials,
    to_mongo_change,
    token_cluster_time,
)
from invoker.completion import Completion
from invoker.envelope import StreamItem, new_request_id
from invoker.ingest import OVERSIZED_CODE
from schemas.errors import FSSError, bad_request, conflict, unavailable
from schemas.events.dds import DDSEvent, MongoChange
from schemas.events.gaussmongo import GaussMongoEvent
from schemas.records import AsyncStatus

log = logging.getLogger(__name__)

TRIGGER_TYPES = ("DDS", "GAUSSMONGO")
CHECKPOINT = "change_stream"  # the trigger's Position
GAP_MARKER = "history_lost"  # the last lost position, so a restart does not report it twice
MAX_EVENT_BYTES = 6 * 1024 * 1024  # FunctionGraph's async event limit, as for the other stream triggers
RECORD_OVERHEAD = 256  # bytes a record adds around its token, document and namespace
DEFAULT_WINDOW_MS = 500
MAX_AWAIT_MS = 500  # one empty getMore waits this long: how often an idle stream reports its token
PROBE_TIMEOUT_MS = 5000  # create-time checks
SERVER_SELECTION_MS = 10_000  # a running trigger: how long an operation waits for the server
IDLE_CHECKPOINT_S = 10.0
ACTIVATE_WAIT_S = 5.0  # activate() waits this long for a new trigger's starting token
DRAIN_S = 3.0  # on deactivate, how long the batch in flight may take to finish
LEASE_TTL_S = 15.0  # several processes: who reads a trigger's stream
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.5, 30.0
HISTORY_LOST_CODE = 4410  # the gap record's error code ("gone")
AUTH_FAILED, UNAUTHORIZED = 18, 13


def _backoff(attempt: int) -> float:
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2 ** min(attempt, 16)))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def _ts_text(ts: Timestamp | None) -> str:
    return "an unknown time" if ts is None else f"{_iso(float(ts.time))} (cluster time {ts.time}.{ts.inc})"


def build_event(trigger_type: str, region: str, trigger_id: str, changes: list[MongoChange]) -> dict[str, Any]:
    """The documented event of one batch: DDS (objects) or GAUSSMONGO (strings + ``vernier``)."""
    if trigger_type == "GAUSSMONGO":
        return GaussMongoEvent.build(region, trigger_id, changes).dump()
    return DDSEvent.build(region, trigger_id, changes).dump()


def record_bytes(change: MongoChange) -> int:
    """About what one change adds to the event's JSON."""
    parts = (change.token, change.full_document, change.ns)
    return RECORD_OVERHEAD + sum(len(json.dumps(p, ensure_ascii=False)) for p in parts if p is not None)


# -- configuration -------------------------------------------------------------------------------------


@dataclass(slots=True)
class MongoTriggerConfig:
    trigger_id: str
    trigger_type: str
    function_urn: str
    target: MongoTarget
    batch_size: int
    window_ms: int
    policy: HistoryLostPolicy


def resolve_config(
    trigger: TriggerSpec, instances: Mapping[str, str], data: Mapping[str, Any] | None = None
) -> MongoTriggerConfig:
    """The runtime configuration of a trigger (``data`` overrides its event_data)."""
    data = trigger.event_data if data is None else data
    window = data.get("batch_window_ms")
    policy = data.get("on_history_lost")
    return MongoTriggerConfig(
        trigger_id=trigger.trigger_id,
        trigger_type=trigger.trigger_type,
        function_urn=trigger.function_urn,
        target=resolve_target(data, instances),
        batch_size=int(data.get("batch_size") or 100),
        window_ms=DEFAULT_WINDOW_MS if window is None else int(window),
        policy=DEFAULT_HISTORY_LOST_POLICY if policy is None else HistoryLostPolicy(str(policy)),
    )


def make_client(target: MongoTarget, *, timeout_ms: int = SERVER_SELECTION_MS) -> AsyncMongoClient[dict[str, Any]]:
    return AsyncMongoClient(
        target.uri,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=min(timeout_ms, 10_000),
        appname="triggerbus",
        **target.client_kwargs(),
    )


def describe_error(target: MongoTarget, exc: BaseException) -> str:
    """An error as operators should read it: the server's words, the password never."""
    if isinstance(exc, OperationFailure):
        details = exc.details or {}
        text = str(details.get("errmsg") or exc).split(", full error:")[0]
        name = f" {details['codeName']}" if details.get("codeName") else ""
        return target.scrub(f"{type(exc).__name__} {exc.code}{name}: {text}")[:1000]
    text = str(exc).split(", Timeout: ")[0]  # server selection: drop the topology dump
    return target.scrub(f"{type(exc).__name__}: {text}")[:1000]


async def probe(target: MongoTarget) -> str:
    """Check a trigger's server before it is saved; returns its mode (ReplicaSet / Sharding).

    Every problem is a precise 400: unreachable, standalone (no change streams), refused login,
    missing privileges on the collection.
    """
    where = f"MongoDB at {target.address}"
    field_name = f"event_data.{target.source}"
    client = make_client(target, timeout_ms=PROBE_TIMEOUT_MS)
    try:
        hello = await client.admin.command("hello")
        if hello.get("msg") == "isdbgrid":
            mode = "Sharding"
        elif hello.get("setName"):
            mode = "ReplicaSet"
        else:
            raise bad_request(
                f"{field_name}: {where} is a standalone server; change streams need a replica set or a "
                "sharded cluster (a DDS replica set or cluster instance)"
            )
        await client[target.db].command("ping")
        stream = await client[target.db][target.coll].watch(max_await_time_ms=50)
        await stream.close()
        return mode
    except FSSError:
        raise
    except ServerSelectionTimeoutError as exc:
        raise bad_request(
            f"{field_name}: cannot reach {where} within {PROBE_TIMEOUT_MS // 1000} s: {describe_error(target, exc)}"
        ) from None
    except OperationFailure as exc:
        raise _probe_refusal(target, exc) from None
    except PyMongoError as exc:
        raise bad_request(f"{field_name}: {where}: {describe_error(target, exc)}") from None
    finally:
        await client.close()


def _probe_refusal(target: MongoTarget, exc: OperationFailure) -> FSSError:
    where = f"MongoDB at {target.address}"
    user = target.username
    if exc.code == AUTH_FAILED or (not exc.code and "authentication failed" in str(exc).lower()):
        who = f"user {user!r}" if user else "a client without credentials"
        return bad_request(
            f"event_data.db_user: {where} refused the login of {who}: wrong db_user or db_password "
            f"(or authSource) ({describe_error(target, exc)})"
        )
    if exc.code == UNAUTHORIZED:
        who = f"user {user!r}" if user else "a client without credentials"
        return bad_request(
            f"event_data.db_user: {who} may not watch {target.namespace} on {target.address} (a change stream "
            f"needs the find and changeStream actions on it): {describe_error(target, exc)}"
        )
    return bad_request(
        f"event_data.collection_name: opening a change stream on {target.namespace} at {target.address} failed: "
        f"{describe_error(target, exc)}"
    )


# -- prefetch: what the reader has read and the deliverer not yet taken --------------------------------


@dataclass(slots=True)
class _Read:
    """One thing the reader saw: a change, an idle post-batch token, the end of the stream, an error."""

    kind: str  # "change" | "idle" | "end" | "error"
    change: Mapping[str, Any] | None = None
    token: dict[str, Any] | None = None
    size: int = 0
    error: BaseException | None = None


@dataclass(slots=True)
class _Entry:
    """A change in a batch: its document as read, its event record (None: an invalidate), JSON size."""

    raw: Mapping[str, Any]
    change: MongoChange | None
    size: int


class _Prefetch:
    """A FIFO bounded by count and bytes (one oversized change still passes, alone)."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: deque[_Read] = deque()
        self._bytes = 0
        self._cond = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def _room_for(self, item: _Read) -> bool:
        return not self._items or (len(self._items) < self.max_items and self._bytes + item.size <= self.max_bytes)

    async def put(self, item: _Read) -> None:
        async with self._cond:
            if item.kind == "idle" and self._items and self._items[-1].kind == "idle":
                self._items[-1] = item  # only the newest idle token matters
                return
            await self._cond.wait_for(lambda: self._room_for(item))
            self._items.append(item)
            self._bytes += item.size
            self._cond.notify_all()

    async def get(self, timeout: float | None) -> _Read | None:
        """The next item; None if nothing arrives within ``timeout`` s (0: only what is there)."""
        async with self._cond:
            if not self._items:
                if timeout is not None and timeout <= 0:
                    return None
                try:
                    async with asyncio.timeout(timeout):
                        await self._cond.wait_for(lambda: bool(self._items))
                except TimeoutError:
                    return None
            item = self._items.popleft()
            self._bytes -= item.size
            self._cond.notify_all()
            return item


class _Reopen(Exception):
    """The stream ended (invalidate): reopen it from the persisted position, no backoff."""


class _Halt(Exception):
    """Stop for good (``on_history_lost: fail``); the state says why."""


# -- one trigger ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _InFlight:
    request_id: str
    done: asyncio.Future[AsyncStatus]
    position: Position
    changes: int
    since: float = field(default_factory=time.time)


class _Runner:
    def __init__(self, connector: DDSConnector, cfg: MongoTriggerConfig) -> None:
        self.connector = connector
        self.ctx = connector.ctx
        self.cfg = cfg
        self.state = "starting"
        self.stopping = False
        self.position: Position | None = None  # persisted
        self.started = asyncio.Event()  # position pinned, or the first attempt failed
        self.attempt = 0
        self.read = 0
        self.delivered = 0
        self.batches = 0
        self.dropped = 0
        self.finished: dict[str, int] = {}
        self.last_batch_at: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_gap: dict[str, Any] | None = None
        self.in_flight: _InFlight | None = None
        self.holds_lease = False
        self._lost: BaseException | None = None  # the stream said its position is gone
        self._session: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stop_listening = self.ctx.completion.listen(cfg.trigger_id, self.on_completion)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name=f"mongo-{self.cfg.trigger_id}")

    async def stop(self, drain_s: float) -> None:
        """Give the batch in flight ``drain_s`` to finish (then its token is persisted), stop reading."""
        self.stopping = True
        try:
            flight = self.in_flight
            if flight is not None and not flight.done.done():
                await asyncio.wait([flight.done], timeout=drain_s)
            await stop_tasks(self._supervisor, self._session)
            if flight is not None and flight.done.done() and not flight.position.same_place(self.position):
                with contextlib.suppress(Exception):
                    await self._persist(flight.position)
            if self.holds_lease:
                with contextlib.suppress(Exception):
                    await self.ctx.state.release_lease(self._lease_name, self.ctx.node_id)
                self.holds_lease = False
        finally:
            self._stop_listening()
            if self.state != "history_lost":
                self.state = "stopped"

    @property
    def _lease_name(self) -> str:
        return f"mongo-stream:{self.cfg.trigger_id}"

    async def _supervise(self) -> None:
        """Run the stream; with several processes, only while this one holds the trigger's lease."""
        if not self.connector.shared_store:
            await self._run_session()
            return
        ttl = self.connector.lease_ttl
        renewed = 0.0
        while not self.stopping:
            try:
                held = await self.ctx.state.acquire_lease(self._lease_name, self.ctx.node_id, ttl)
                if held:
                    renewed = time.monotonic()
            except Exception as exc:
                self.error("renewing the trigger's lease", exc)
                held = self.holds_lease and time.monotonic() - renewed < ttl
            self.holds_lease = held
            running = self._session is not None and not self._session.done()
            if held and not running and self.state != "history_lost":
                self._session = asyncio.create_task(self._run_session(), name=f"mongo-read-{self.cfg.trigger_id}")
            elif not held:
                if running:
                    log.warning("mongo trigger %s: lease lost; another process reads the stream", self.cfg.trigger_id)
                    await stop_tasks(self._session)
                if self.state != "history_lost":
                    self.state = "standby"
                self.started.set()
            await asyncio.sleep(ttl / 3)

    async def _run_session(self) -> None:
        client = make_client(self.cfg.target)
        self.position = None  # read it again: another process may have moved it meanwhile
        try:
            while not self.stopping:
                try:
                    await self._stream(client)
                except _Reopen:
                    continue
                except _PositionLost as lost:
                    self._lost = lost.exc  # the next open goes straight to the policy
                    continue
                except _Halt:
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.error("change stream failed", exc)
                    self.started.set()
                    self.state = "backoff"
                    delay = _backoff(self.attempt)
                    self.attempt += 1
                    await asyncio.sleep(delay)
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    # -- errors and status -------------------------------------------------------------------------------

    def error(self, what: str, exc: BaseException) -> None:
        text = f"{what}: {describe_error(self.cfg.target, exc)}"
        if text != self.last_error:
            log.warning("mongo trigger %s: %s", self.cfg.trigger_id, text)
        self.last_error = text
        self.last_error_at = time.time()

    async def lag(self) -> Lag:
        """How old the committed position's cluster time is (kept fresh while idle); the number of
        changes behind it is not known."""
        position = self.position if self.state == "running" else None
        clock = None if position is None else position.cluster_time or token_cluster_time(position.token)
        return UNKNOWN_LAG if clock is None else Lag(None, max(0.0, time.time() - clock.time), None)

    def status(self) -> dict[str, Any]:
        now = time.time()
        position = self.position
        clock = None if position is None else position.cluster_time or token_cluster_time(position.token)
        flight = self.in_flight
        body: dict[str, Any] = {
            "consumer_state": self.state,
            "address": self.cfg.target.address,
            "namespace": self.cfg.target.namespace,
            "position": None if position is None else position.to_json(),
            "resume_token_age_s": None if clock is None else round(max(0.0, now - clock.time), 3),
            "last_change_processed_time": _iso(self.last_batch_at),
            "seconds_since_last_change_processed": (
                None if self.last_batch_at is None else round(now - self.last_batch_at, 3)
            ),
            "changes_read": self.read,
            "changes_delivered": self.delivered,
            "batches": self.batches,
            "finished": dict(self.finished),
            "dropped": self.dropped,
            "in_flight": None
            if flight is None
            else {"request_id": flight.request_id, "changes": flight.changes, "since": _iso(flight.since)},
            "on_history_lost": self.cfg.policy.value,
            "last_error": self.last_error,
            "last_error_time": _iso(self.last_error_at),
        }
        if self.connector.shared_store:
            body["holds_lease"] = self.holds_lease
        if self.last_gap is not None:
            body["history_lost"] = self.last_gap
        return body

    # -- the stream --------------------------------------------------------------------------------------

    def _watch_options(self) -> dict[str, Any]:
        return {"full_document": "updateLookup", "max_await_time_ms": MAX_AWAIT_MS}

    async def _stream(self, client: AsyncMongoClient[dict[str, Any]]) -> None:
        target = self.cfg.target
        coll = client[target.db][target.coll]
        stream = await self._open(client, coll)
        self.state = "running"
        self.attempt = 0
        self.started.set()
        prefetch = _Prefetch(max_items=max(self.cfg.batch_size, 16), max_bytes=MAX_EVENT_BYTES)
        reader = asyncio.create_task(self._read(stream, prefetch), name=f"mongo-reader-{self.cfg.trigger_id}")
        try:
            await self._deliver(prefetch)
        finally:
            await stop_tasks(reader)
            with contextlib.suppress(Exception):
                await stream.close()

    async def _open(
        self, client: AsyncMongoClient[dict[str, Any]], coll: AsyncCollection[dict[str, Any]]
    ) -> AsyncChangeStream[dict[str, Any]]:
        """The stream at the persisted position; a new trigger's starting token is persisted first."""
        if self.position is None:
            stored = await self.ctx.state.get_checkpoint(self.cfg.trigger_id, CHECKPOINT)
            self.position = Position.from_json(stored) if stored else None
        position = self.position
        if position is None:
            stream = await coll.watch(**self._watch_options())
            token = stream.resume_token
            if token is None:  # mongod before 4.0.7 sends no post-batch tokens: not supported
                await stream.close()
                raise RuntimeError(f"{self.cfg.target.address} gave no resume token for a new change stream")
            await self._persist(Position(dict(token), token_cluster_time(token), "start"))
            return stream
        lost, self._lost = self._lost, None
        if isinstance(lost, OperationFailure):
            return await self._recover(client, coll, position, lost)
        kwargs = position.open_kwargs()
        try:
            return await coll.watch(**self._watch_options(), **kwargs)
        except OperationFailure as exc:
            if not is_position_lost(exc, resuming=bool(kwargs)):
                raise
            return await self._recover(client, coll, position, exc)

    async def _read(self, stream: AsyncChangeStream[dict[str, Any]], prefetch: _Prefetch) -> None:
        """Read changes into ``prefetch``; an error or the end of the stream goes in last."""
        try:
            while True:
                change = await stream.try_next()
                if change is not None:
                    self.read += 1
                    await prefetch.put(_Read("change", change=change, size=change_size(change)))
                    continue
                if not stream.alive:
                    await prefetch.put(_Read("end"))
                    return
                token = stream.resume_token
                if token is not None:
                    await prefetch.put(_Read("idle", token=dict(token)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await prefetch.put(_Read("error", error=exc))

    async def _deliver(self, prefetch: _Prefetch) -> None:
        """Batches out of the prefetch, one at a time; raises what ended the stream, after delivering
        everything read before it."""
        carry: _Read | None = None
        while True:
            first = carry or await prefetch.get(None)
            carry = None
            assert first is not None
            if first.kind == "idle":
                assert first.token is not None
                await self._idle(first.token)
                continue
            if first.kind != "change":
                self._finish_stream(first)
            batch, closing, carry = await self._collect(first, prefetch)
            await self._deliver_batch(batch)
            if closing is not None:
                self._finish_stream(closing)

    async def _collect(self, first: _Read, prefetch: _Prefetch) -> tuple[list[_Entry], _Read | None, _Read | None]:
        """Up to ``batch_size`` changes, within the window and 6 MB: (batch, end/error marker, carry-over).

        The window bounds only the wait: changes already read are taken up to ``batch_size``.
        """
        batch: list[_Entry] = []
        size = 0
        item: _Read | None = first
        deadline = time.monotonic() + self.cfg.window_ms / 1000
        while item is not None:
            if item.kind == "change":
                entry = self._entry(item)
                if batch and size + entry.size > MAX_EVENT_BYTES:
                    return batch, None, item
                batch.append(entry)
                size += entry.size
                if len(batch) >= self.cfg.batch_size:
                    break
            elif item.kind in ("end", "error"):
                return batch, item, None
            remaining = deadline - time.monotonic()
            item = await prefetch.get(max(0.0, remaining) if self.cfg.window_ms > 0 else 0)
        return batch, None, None

    def _entry(self, item: _Read) -> _Entry:
        assert item.change is not None
        if item.change.get("operationType") == "invalidate":
            return _Entry(item.change, None, 0)  # ends the stream; no record, but it moves the position
        change = to_mongo_change(item.change, self.cfg.target.coll)
        return _Entry(item.change, change, record_bytes(change))

    def _finish_stream(self, marker: _Read) -> None:
        if marker.kind == "end":
            raise _Reopen()
        assert marker.error is not None
        if is_position_lost(marker.error, resuming=True):
            raise _PositionLost(marker.error)
        raise marker.error

    # -- one batch ---------------------------------------------------------------------------------------

    async def _deliver_batch(self, batch: list[_Entry]) -> None:
        records: list[MongoChange] = []
        for entry in batch:
            if entry.change is None:
                continue
            if entry.size > MAX_EVENT_BYTES:
                await self._drop(entry.change, entry.size)
            else:
                records.append(entry.change)
        last = batch[-1].raw
        token = dict(last["_id"])
        clock = last.get("clusterTime")
        position = Position(
            token=token,
            cluster_time=clock if isinstance(clock, Timestamp) else token_cluster_time(token),
            kind="change",
            mode=OpenMode.START_AFTER if last.get("operationType") == "invalidate" else OpenMode.RESUME_AFTER,
        )
        if records:
            status = await self._invoke(records, position, batch[0].raw.get("clusterTime"))
            self.finished[status.value] = self.finished.get(status.value, 0) + 1
            self.delivered += len(records)
            self.batches += 1
            self.last_batch_at = time.time()
        await self._persist(position)

    async def _invoke(self, records: list[MongoChange], position: Position, first_clock: Any) -> AsyncStatus:
        """Enqueue the batch's event and wait for its terminal state."""
        cfg = self.cfg
        payload = json.dumps(
            build_event(cfg.trigger_type, self.ctx.region, cfg.trigger_id, records),
            ensure_ascii=False,
            separators=(",", ":"),
        )
        source = {
            "ns": cfg.target.namespace,
            "count": len(records),
            "first_cluster_time": _clock_text(first_clock),
            "last_cluster_time": _clock_text(position.cluster_time),
            "last_resume_token": str((position.token or {}).get("_data", "")),
        }
        request_id = new_request_id()
        flight = _InFlight(request_id, asyncio.get_running_loop().create_future(), position, len(records))
        self.in_flight = flight
        try:
            attempt = 0
            while True:
                try:
                    await self.ctx.invocations.enqueue(
                        cfg.function_urn,
                        payload,
                        trigger_id=cfg.trigger_id,
                        trigger_type=cfg.trigger_type,
                        source=source,
                        request_id=request_id,
                    )
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.error("handing a batch to the invoker", exc)
                    await asyncio.sleep(_backoff(attempt))
                    attempt += 1
            return await flight.done
        finally:
            if self.in_flight is flight:
                self.in_flight = None

    def on_completion(self, completion: Completion) -> None:
        """Called by the invoker (synchronously) when an invocation of this trigger is terminal."""
        flight = self.in_flight
        if flight is not None and completion.request_id == flight.request_id and not flight.done.done():
            flight.done.set_result(completion.status)

    async def _drop(self, change: MongoChange, size: int) -> None:
        """A single change larger than an event may be: a DISCARD record says which, never silence."""
        cfg = self.cfg
        key = json.dumps(change.token, ensure_ascii=False)
        reason = (
            f"change {change.event_name} on {cfg.target.namespace} (resume token {key}) is {size} bytes as JSON, "
            f"over the {MAX_EVENT_BYTES}-byte event limit; it was not delivered to the function"
        )
        self.dropped += 1
        item = self._marker_item("dropped", {"ns": cfg.target.namespace, "size": size, "resume_token": key})
        request_id = await self.ctx.ingest.reject(
            [item], status=AsyncStatus.DISCARD, code=OVERSIZED_CODE, reason=reason
        )
        with contextlib.suppress(Exception):
            await self.ctx.state.audit(
                "mongoChangeDropped",
                cfg.trigger_id,
                {"ns": cfg.target.namespace, "size": size, "limit": MAX_EVENT_BYTES, "request_id": request_id},
            )

    def _marker_item(self, what: str, source: dict[str, Any]) -> StreamItem:
        cfg = self.cfg
        return StreamItem(
            item_id=f"{cfg.trigger_id}:{what}:{uuid.uuid4().hex}",
            trigger_id=cfg.trigger_id,
            trigger_type=cfg.trigger_type,
            function_urn=cfg.function_urn,
            data={},
            size=0,
            source=source,
        )

    # -- positions ---------------------------------------------------------------------------------------

    async def _persist(self, position: Position) -> None:
        position.updated = time.time()
        try:
            await self.ctx.state.put_checkpoint(self.cfg.trigger_id, CHECKPOINT, position.to_json())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next batch persists a later token; a crash re-delivers more
            self.error("persisting the resume token", exc)
            return
        self.position = position

    async def _idle(self, token: dict[str, Any]) -> None:
        """Nothing is in flight and the stream is idle: keep the persisted token fresh."""
        current = self.position
        if current is not None and current.token == token:
            return
        if current is not None and time.time() - current.updated < self.connector.idle_checkpoint_s:
            return
        await self._persist(Position(token, token_cluster_time(token), "idle"))

    # -- history lost ------------------------------------------------------------------------------------

    async def _recover(
        self,
        client: AsyncMongoClient[dict[str, Any]],
        coll: AsyncCollection[dict[str, Any]],
        lost: Position,
        exc: OperationFailure,
    ) -> AsyncChangeStream[dict[str, Any]]:
        """The position is gone: record the gap, then follow ``on_history_lost`` (or halt)."""
        cfg = self.cfg
        lost_time = lost.cluster_time or token_cluster_time(lost.token)
        notes: list[str] = []
        for step in recovery_plan(cfg.policy, lost_time):
            try:
                stream, position = await self._reopen(client, coll, step)
            except OperationFailure as again:
                if not is_position_lost(again, resuming=True) and step.how != "oldest":
                    raise
                notes.append(f"{step.how}: {describe_error(cfg.target, again)}")
                continue
            except PyMongoError as again:
                if step.how != "oldest":
                    raise
                notes.append(f"oldest: {describe_error(cfg.target, again)}")
                continue
            await self._report_gap(lost, lost_time, exc, step, position, notes)
            await self._persist(position)
            return stream
        await self._report_gap(lost, lost_time, exc, None, None, notes)
        raise _Halt()

    async def _reopen(
        self, client: AsyncMongoClient[dict[str, Any]], coll: AsyncCollection[dict[str, Any]], step: RecoveryStep
    ) -> tuple[AsyncChangeStream[dict[str, Any]], Position]:
        options = self._watch_options()
        if step.how == "latest":
            stream = await coll.watch(**options)
            token = stream.resume_token
            return stream, Position(None if token is None else dict(token), token_cluster_time(token), "start")
        when = step.cluster_time if step.how == "time" else await _oldest_oplog_time(client)
        stream = await coll.watch(**options, start_at_operation_time=when)
        return stream, Position(None, when, "time")

    async def _report_gap(
        self,
        lost: Position,
        lost_time: Timestamp | None,
        exc: OperationFailure,
        step: RecoveryStep | None,
        resumed: Position | None,
        notes: list[str],
    ) -> None:
        cfg = self.cfg
        head = (
            f"change stream history lost: trigger {cfg.trigger_id} cannot resume {cfg.target.namespace} on "
            f"{cfg.target.address} at its position of {_ts_text(lost_time)}; the server answered "
            f"{describe_error(cfg.target, exc)}. Changes after that time may never be delivered."
        )
        if step is None:
            tail = (
                f" Policy {cfg.policy.value!r}: the trigger stopped reading. Disable it, move its checkpoint "
                '(PUT .../checkpoint with {"position": "latest"}, {"operation_time": <epoch s>} or '
                '{"resume_token": {...}}) and enable it again.'
            )
            status = AsyncStatus.FAIL
        else:
            where = (
                "the current end of the stream"
                if step.how == "latest"
                else f"{_ts_text(resumed.cluster_time if resumed else None)}"
                + (" (the oldest entry still in the oplog)" if step.how == "oldest" else "")
            )
            tail = f" Policy {cfg.policy.value!r}: reading again from {where}."
            status = AsyncStatus.DISCARD
        if notes:
            tail += " Tried first: " + "; ".join(notes) + "."
        reason = head + tail
        lost_json = lost.to_json()
        gap: dict[str, Any] = {
            "lost_position": {k: lost_json[k] for k in ("resume_token", "cluster_time")},
            "error_code": exc.code,
            "policy": cfg.policy.value,
            "resumed_from": None if resumed is None else resumed.to_json(),
            "detected_time": _iso(time.time()),
            "message": reason,
        }
        self.last_gap = gap
        self.last_error = reason[:1000]
        self.last_error_at = time.time()
        if step is None:
            self.state = "history_lost"
            self.started.set()
        marker = await self.ctx.state.get_checkpoint(cfg.trigger_id, GAP_MARKER)
        if isinstance(marker, dict) and marker.get("lost_position") == gap["lost_position"]:
            self.last_gap = {**gap, "request_id": marker.get("request_id")}
            return  # reported when this position was first found lost (a restart, a re-enable, a retry)
        log.error("mongo trigger %s: %s", cfg.trigger_id, reason)
        source = {
            "ns": cfg.target.namespace,
            "lost_cluster_time": _clock_text(lost_time),
            "lost_resume_token": str((lost.token or {}).get("_data", "")),
            "policy": cfg.policy.value,
            "mongo_error_code": exc.code,
        }
        request_id = await self.ctx.ingest.reject(
            [self._marker_item("gap", source)], status=status, code=HISTORY_LOST_CODE, reason=reason
        )
        gap["request_id"] = request_id
        self.last_gap = gap
        with contextlib.suppress(Exception):
            await self.ctx.state.put_checkpoint(cfg.trigger_id, GAP_MARKER, gap)
        with contextlib.suppress(Exception):
            await self.ctx.state.audit("mongoChangeStreamHistoryLost", cfg.trigger_id, gap)


class _PositionLost(Exception):
    def __init__(self, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.exc = exc


def _clock_text(value: Any) -> str:
    return f"{value.time}.{value.inc}" if isinstance(value, Timestamp) else ""


async def _oldest_oplog_time(client: AsyncMongoClient[dict[str, Any]]) -> Timestamp:
    """The time of the oldest oplog entry (needs read access to ``local.oplog.rs``)."""
    entry = await client["local"]["oplog.rs"].find_one({}, sort=[("$natural", 1)], projection={"ts": 1})
    if entry is None or not isinstance(entry.get("ts"), Timestamp):
        raise OperationFailure("the oplog is empty or unreadable", code=0)
    ts: Timestamp = entry["ts"]
    return ts


# -- the connector -----------------------------------------------------------------------------------------


class DDSConnector(RunnerConnector[_Runner]):
    trigger_types: ClassVar[tuple[str, ...]] = TRIGGER_TYPES

    def __init__(self, ctx: ConnectorContext) -> None:
        super().__init__(ctx)

    @property
    def instances(self) -> dict[str, str]:
        return dict(self.ctx.options.get("mongo_instances") or {})

    @property
    def shared_store(self) -> bool:
        return bool(self.ctx.options.get("shared_store"))

    @property
    def lease_ttl(self) -> float:
        return float(self.ctx.options.get("mongo_lease_ttl_s", LEASE_TTL_S))

    @property
    def drain_s(self) -> float:
        return float(self.ctx.options.get("mongo_drain_s", DRAIN_S))

    @property
    def idle_checkpoint_s(self) -> float:
        return float(self.ctx.options.get("mongo_idle_checkpoint_s", IDLE_CHECKPOINT_S))

    def _config(self, trigger: TriggerSpec) -> MongoTriggerConfig:
        return resolve_config(trigger, self.instances)

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def validate(self, trigger: TriggerSpec, *, existing: list[TriggerSpec]) -> dict[str, Any]:
        data = trigger.event_data
        extra: dict[str, Any] = {}
        uri = data.get("connection_uri")
        if uri:
            clean, user, password = split_credentials(str(uri))
            if password and data.get("db_password") and password != data["db_password"]:
                raise bad_request(
                    "event_data.connection_uri: holds a password that differs from db_password; give the password "
                    "once, in db_password"
                )
            if user and data.get("db_user") and user != data["db_user"]:
                raise bad_request(
                    f"event_data.connection_uri: names user {user!r} but db_user is {data['db_user']!r}; give the "
                    "user once, in db_user"
                )
            if clean != uri:  # keep the password out of the stored URI: db_password is encrypted
                extra["connection_uri"] = clean
                if user and not data.get("db_user"):
                    extra["db_user"] = user
                if password and not data.get("db_password"):
                    extra["db_password"] = password
        cfg = resolve_config(trigger, self.instances, {**data, **extra})
        extra["mode"] = await probe(cfg.target)
        if data.get("batch_window_ms") is None:
            extra["batch_window_ms"] = cfg.window_ms
        if data.get("on_history_lost") is None:
            extra["on_history_lost"] = cfg.policy.value
        return extra

    async def activate(self, trigger: TriggerSpec) -> None:
        try:
            cfg = self._config(trigger)
        except FSSError as exc:  # not the caller's mistake here (the instance map changed): show it
            raise RuntimeError(exc.message) from None
        is_new = not await self.ctx.state.get_checkpoint(trigger.trigger_id, CHECKPOINT)
        runner = _Runner(self, cfg)
        await self.replace_runner(trigger.trigger_id, runner)
        runner.start()
        if is_new:
            # A new trigger starts at the current end of the stream: pin that before returning, so
            # "from now on" means from the enable request. A server that does not answer in time
            # is retried in the background (see the trigger's state).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ACTIVATE_WAIT_S):
                    await runner.started.wait()

    # -- checkpoints -------------------------------------------------------------------------------------

    async def get_checkpoint(self, trigger: TriggerSpec) -> dict[str, Any]:
        stored = await self.ctx.state.get_checkpoint(trigger.trigger_id, CHECKPOINT)
        gap = await self.ctx.state.get_checkpoint(trigger.trigger_id, GAP_MARKER)
        if not stored:
            return {
                "resume_token": None,
                "cluster_time": None,
                "kind": None,
                "note": "not enabled yet: the trigger starts at the end of the change stream when enabled",
                "history_lost": gap or None,
            }
        position = Position.from_json(stored)
        clock = position.cluster_time or token_cluster_time(position.token)
        body = position.to_json()
        body["updated_time"] = _iso(position.updated)
        body["resume_token_age_s"] = None if clock is None else round(max(0.0, time.time() - clock.time), 3)
        body["history_lost"] = gap or None
        return body

    async def set_checkpoint(self, trigger: TriggerSpec, body: dict[str, Any]) -> dict[str, Any]:
        """Move a DISABLED trigger: ``{"position": "latest"}``, ``{"operation_time": <epoch s> | {"t", "i"}}``
        or ``{"resume_token": {"_data": ...}}``. The server is asked first, so a position it cannot
        resume from is refused here, not found lost at the next enable."""
        if trigger.trigger_id in self._runners:
            raise conflict(f"trigger {trigger.trigger_id} is still reading here: disable it first")
        keys = set(body)
        allowed = {"position", "operation_time", "resume_token"}
        if len(keys) != 1 or not keys <= allowed:
            raise bad_request(
                'give exactly one of "position": "latest", "operation_time": <epoch seconds> or {"t", "i"}, '
                f'"resume_token": {{"_data": ...}} (got keys {sorted(keys)})'
            )
        cfg = self._config(trigger)
        position = await self._requested_position(cfg, body)
        await self.ctx.state.put_checkpoint(trigger.trigger_id, CHECKPOINT, position.to_json())
        await self.ctx.state.put_checkpoint(trigger.trigger_id, GAP_MARKER, None)
        return await self.get_checkpoint(trigger)

    async def _requested_position(self, cfg: MongoTriggerConfig, body: dict[str, Any]) -> Position:
        target = cfg.target
        kwargs: dict[str, Any] = {}
        if "position" in body:
            if body["position"] != "latest":
                raise bad_request(f'position: only "latest" is supported (got {body["position"]!r})')
        elif "operation_time" in body:
            kwargs["start_at_operation_time"] = _parse_operation_time(body["operation_time"])
        else:
            token = body["resume_token"]
            if not isinstance(token, dict) or not isinstance(token.get("_data"), str):
                raise bad_request(f'resume_token: must be an object like {{"_data": "82..."}} (got {token!r})')
            kwargs["resume_after"] = token
        client = make_client(target, timeout_ms=PROBE_TIMEOUT_MS)
        try:
            stream = await client[target.db][target.coll].watch(max_await_time_ms=50, **kwargs)
            token_now = stream.resume_token
            await stream.close()
        except OperationFailure as exc:  # the server refuses this position (lost, foreign, unreadable)
            raise bad_request(
                f"{next(iter(body))}: {target.address} cannot resume {target.namespace} there: "
                f"{describe_error(target, exc)}"
            ) from None
        except PyMongoError as exc:
            raise unavailable(f"opening the change stream on {target.address}: {describe_error(target, exc)}") from None
        finally:
            await client.close()
        if "position" in body:
            if token_now is None:
                raise unavailable(f"{target.address} gave no resume token for the current end of the stream")
            return Position(dict(token_now), token_cluster_time(token_now), "set")
        if "operation_time" in body:
            when: Timestamp = kwargs["start_at_operation_time"]
            return Position(None, when, "time")
        token = dict(kwargs["resume_after"])
        return Position(token, token_cluster_time(token), "set")


def _parse_operation_time(value: Any) -> Timestamp:
    if isinstance(value, dict) and set(value) >= {"t", "i"}:
        t, i = value["t"], value["i"]
        if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (t, i)):
            return Timestamp(t, i)
    elif isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return Timestamp(int(value), 0)
    raise bad_request(
        f'operation_time: must be epoch seconds (a number >= 0) or a cluster time {{"t": s, "i": n}} (got {value!r})'
    )
