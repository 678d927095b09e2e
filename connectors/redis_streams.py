"""Redis Streams: the durable log behind DIS streams and LTS log streams, and the consumer both share.

Why Redis Streams: a stream is an append-only log ordered by its entry ids, which is exactly a
DIS shard (or an LTS log stream). Entry ids (``<ms>-<seq>``, assigned by Redis, strictly
increasing per stream) are the sequence numbers; ``XRANGE`` reads from any position, so a
trigger's position is one id kept in Triggerbus's own store; ``XTRIM MINID`` is retention, and
"TRIM_HORIZON" is the oldest entry still inside the retention period. One Redis stream per DIS
shard / per LTS log stream keeps each ordered on its own.

Durability is Redis's: only with AOF (``appendonly yes``, ``appendfsync always`` for no loss,
``everysec`` for at most a second) does an acknowledged put survive a Redis crash; see docs/dis.md.

Positions are *not* Redis consumer-group acks. A trigger's position must move only when the
batch's invocation reached a terminal state, possibly in another Triggerbus process, and must be
movable through the checkpoint API: that is Triggerbus state, so it lives in Triggerbus's store
(``put_checkpoint``) next to the trigger, and a consumer group would only duplicate it.

This module has three parts:

* ids: :func:`sequence_number` / :func:`entry_id` map Redis ids to DIS-style digit strings;
* :class:`StreamBackend`: the Redis calls (append, range reads, retention);
* :class:`StreamRunner`: one trigger's consumer -- a lease so one process reads a trigger, one
  loop per shard, batches handed to the invoker, and each shard's position committed over the
  contiguous prefix of finished batches only.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bus.aio import stop_tasks
from connectors.base import UNKNOWN_LAG, ConnectorContext, Lag, RunnerConnector, TriggerSpec
from invoker.completion import Completion
from invoker.envelope import new_request_id
from schemas.errors import unavailable

log = logging.getLogger(__name__)

ZERO_ID = "0-0"
SEQ_FACTOR = 1_000_000  # sequence number = ms * SEQ_FACTOR + seq; Redis never has 10^6 entries in one ms
LEASE_TTL_S = 10.0
ACTIVATE_WAIT_S = 5.0  # activate() waits this long for start positions to be pinned
DRAIN_S = 3.0
COMMIT_INTERVAL_S = 0.1  # checkpoint writes are coalesced at most this often
TRIM_INTERVAL_S = 60.0
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
RETENTION_HASH = "retention"  # key -> retention in ms, for the trimming sweep

# Deduplicated append: a marker key remembers the id a dedupe key was written under.
_APPEND_ONCE = """
local existing = redis.call('GET', KEYS[2])
if existing then return {existing, 0} end
local args = {KEYS[1]}
if ARGV[2] ~= '' then
  table.insert(args, 'MINID'); table.insert(args, '~'); table.insert(args, ARGV[2])
end
table.insert(args, '*')
for i = 3, #ARGV do table.insert(args, ARGV[i]) end
local id = redis.call('XADD', unpack(args))
redis.call('SET', KEYS[2], id, 'EX', tonumber(ARGV[1]))
return {id, 1}
"""


# Lag: how many entries follow a position (counted in Redis, up to ARGV[2]), the first of them
# and the stream's newest entry. Only counts and ids leave Redis.
_BACKLOG = """
local n, start, first = 0, ARGV[1], false
local cap = tonumber(ARGV[2])
while n < cap do
  local page = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', math.min(500, cap - n))
  if #page == 0 then break end
  if not first then first = page[1][1] end
  n = n + #page
  start = '(' .. page[#page][1]
end
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
return {n, first, newest[1] and newest[1][1] or false}
"""
LAG_COUNT_CAP = 10_000  # beyond this many unread entries the count is reported unknown (None)


class StreamsUnavailable(RuntimeError):
    """Redis did not answer (down, unreachable, timed out)."""


class SourceMissing(RuntimeError):
    """The DIS stream / LTS log stream a trigger reads does not exist (any more)."""


# -- ids ---------------------------------------------------------------------------------------------


def parse_id(value: str) -> tuple[int, int]:
    """``(ms, seq)`` of a Redis entry id ``<ms>-<seq>``; ValueError otherwise."""
    ms, sep, seq = value.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        raise ValueError(f"not a stream entry id: {value!r}")
    return int(ms), int(seq)


def id_ms(value: str) -> int:
    return parse_id(value)[0]


def id_before(a: str, b: str) -> bool:
    return parse_id(a) < parse_id(b)


def sequence_number(value: str) -> str:
    """The DIS sequence number of entry id ``<ms>-<seq>``: the digit string of ``ms * 10^6 + seq``.

    Digits keep DIS clients that parse sequence numbers as integers working, and the mapping is
    order-preserving and reversible (:func:`entry_id`).
    """
    ms, seq = parse_id(value)
    if seq >= SEQ_FACTOR:
        raise ValueError(f"entry id {value} has a sequence part over {SEQ_FACTOR - 1}")
    return str(ms * SEQ_FACTOR + seq)


def entry_id(number: str | int) -> str:
    """The entry id of a DIS sequence number (inverse of :func:`sequence_number`)."""
    text = str(number)
    if isinstance(number, bool) or not text.isdigit():
        raise ValueError(f"a sequence number is a string of digits (got {number!r})")
    ms, seq = divmod(int(text), SEQ_FACTOR)
    return f"{ms}-{seq}"


def next_id(value: str) -> str:
    """The smallest id after ``value`` (an inclusive start equal to the exclusive ``(value``)."""
    ms, seq = parse_id(value)
    return f"{ms}-{seq + 1}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    fields: dict[str, bytes]


def _entries(raw: Any) -> list[Entry]:
    out = []
    for entry_id_raw, fields in raw or ():
        out.append(Entry(_text(entry_id_raw), {_text(k): bytes(v) for k, v in (fields or {}).items()}))
    return out


# -- the backend --------------------------------------------------------------------------------------


class StreamBackend:
    """The Redis calls DIS and LTS need; every key lives under ``<prefix>:``.

    ``clock`` is wall-clock seconds; retention horizons are computed from it (entry ids carry
    the Redis server's wall clock, so hosts must keep NTP time, as for the timer triggers).
    """

    def __init__(
        self,
        url: str,
        prefix: str = "triggerbus",
        *,
        clock: Callable[[], float] = time.time,
        max_connections: int = 32,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.clock = clock
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        self.redis = aioredis.Redis(connection_pool=pool)
        self._append_once = self.redis.register_script(_APPEND_ONCE)
        self._backlog = self.redis.register_script(_BACKLOG)
        self._appended: dict[str, asyncio.Event] = {}

    async def close(self) -> None:
        await self.redis.aclose()

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def horizon(self, retention_s: float) -> str:
        """The first entry id still inside a retention period of ``retention_s`` (inclusive)."""
        return f"{max(0, int((self.clock() - retention_s) * 1000))}-0"

    @contextlib.asynccontextmanager
    async def _call(self, what: str) -> Any:
        try:
            yield
        except RedisError as exc:
            raise StreamsUnavailable(f"Redis at {self._where()} failed while {what}: {exc}") from exc

    def _where(self) -> str:
        kwargs = self.redis.connection_pool.connection_kwargs
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"

    # -- writes --------------------------------------------------------------------------------------

    async def append(self, writes: Sequence[tuple[str, Mapping[str, bytes | str]]], *, retention_s: float) -> list[str]:
        """Append entries atomically (MULTI/EXEC); their ids in order.

        Each append also trims entries older than the retention approximately (``MINID ~``:
        whole internal nodes only, so it is cheap); the sweep trims exactly.
        """
        min_id = self.horizon(retention_s)
        async with self._call("appending records"):
            pipe = self.redis.pipeline(transaction=True)
            for key, fields in writes:
                pipe.xadd(key, dict(fields), minid=min_id, approximate=True)  # type: ignore[arg-type]
            ids = await pipe.execute()
        for key, _ in writes:
            self._signal(key)
        return [_text(i) for i in ids]

    def _signal(self, key: str) -> None:
        event = self._appended.pop(key, None)
        if event is not None:
            event.set()

    async def wait_for_append(self, key: str, timeout_s: float) -> None:
        """Until this process appends to ``key``, or ``timeout_s``.

        Lets an idle reader wake as soon as a put served by this process lands, instead of at
        its next poll; appends made by other processes are still found by polling, so callers
        keep ``timeout_s`` at their poll period. (A blocking ``XREAD`` per reader would hold a
        pooled connection per idle trigger.)
        """
        event = self._appended.setdefault(key, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)

    async def append_once(
        self, key: str, fields: Mapping[str, bytes | str], *, dedupe_key: str, retention_s: float
    ) -> tuple[str, bool]:
        """Append unless ``dedupe_key`` was appended within the retention: ``(id, appended)``."""
        args: list[bytes | str | int] = [max(1, int(retention_s)), self.horizon(retention_s)]
        for name, value in fields.items():
            args += [name, value]
        async with self._call("appending a record"):
            found, appended = await self._append_once(keys=[key, self.key("dedupe", dedupe_key)], args=args)
        return _text(found), bool(int(appended))

    # -- reads ---------------------------------------------------------------------------------------

    async def read(self, key: str, start: str, count: int) -> list[Entry]:
        """Up to ``count`` entries from ``start`` (an id, inclusive, or ``(id`` exclusive)."""
        async with self._call("reading records"):
            return _entries(await self.redis.xrange(key, min=start, max="+", count=count))

    async def read_with_tip(self, key: str, start: str, count: int) -> tuple[list[Entry], str | None]:
        """:meth:`read` plus the id of the stream's newest entry, in one round trip."""
        async with self._call("reading records"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.xrange(key, min=start, max="+", count=count)
            pipe.xrevrange(key, max="+", min="-", count=1)
            entries, newest = await pipe.execute()
        return _entries(entries), (_text(newest[0][0]) if newest else None)

    async def read_range(self, key: str, start: str, end: str, count: int) -> list[Entry]:
        async with self._call("reading records"):
            return _entries(await self.redis.xrange(key, min=start, max=end, count=count))

    async def lost_after(self, key: str, after: str, horizon: str) -> bool:
        """True if entries after ``after`` expired unread: still there but older than ``horizon``,
        or already trimmed (the stream's ``max-deleted-entry-id`` is past ``after``)."""
        async with self._call("checking for expired records"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.xrange(key, min=f"({after}", max=f"({horizon}", count=1)
            pipe.xinfo_stream(key)
            expired, info = await pipe.execute(raise_on_error=False)
        if isinstance(expired, list) and expired:
            return True
        if not isinstance(info, dict):
            return False  # no such key: nothing was ever put (or it was deleted with its stream)
        deleted = info.get("max-deleted-entry-id") or info.get(b"max-deleted-entry-id")
        return deleted is not None and id_before(after, _text(deleted))

    async def tip(self, key: str) -> str:
        """The id of the newest entry (``0-0`` for an empty stream): "LATEST" reads after it."""
        async with self._call("reading the newest record"):
            newest = await self.redis.xrevrange(key, max="+", min="-", count=1)
        return _text(newest[0][0]) if newest else ZERO_ID

    async def backlog(self, key: str, after: str, cap: int) -> tuple[int, str | None, str | None]:
        """Entries after ``after`` (counted up to ``cap``), the first of them and the newest entry's id."""
        async with self._call("measuring the backlog"):
            count, first, newest = await self._backlog(keys=[key], args=[f"({after}", cap])
        return int(count), (_text(first) if first else None), (_text(newest) if newest else None)

    async def length(self, key: str) -> int:
        async with self._call("counting records"):
            return int(await self.redis.xlen(key))

    # -- retention and deletion ----------------------------------------------------------------------

    async def set_retention(self, keys: Sequence[str], retention_s: float) -> None:
        """Register keys for the trimming sweep."""
        if keys:
            async with self._call("registering retention"):
                await self.redis.hset(
                    self.key(RETENTION_HASH), mapping=dict.fromkeys(keys, str(int(retention_s * 1000)))
                )

    async def delete(self, keys: Sequence[str]) -> None:
        if keys:
            async with self._call("deleting streams"):
                pipe = self.redis.pipeline(transaction=True)
                pipe.delete(*keys)
                pipe.hdel(self.key(RETENTION_HASH), *keys)
                await pipe.execute()

    async def trim_expired(self) -> int:
        """Remove every registered stream's entries older than its retention (exactly); how many went."""
        async with self._call("trimming expired records"):
            retention = await self.redis.hgetall(self.key(RETENTION_HASH))
            removed = 0
            for raw_key, raw_ms in retention.items():
                min_id = self.horizon(int(_text(raw_ms)) / 1000)
                removed += int(await self.redis.xtrim(_text(raw_key), minid=min_id, approximate=False))
        return removed

    async def remove_prefix(self) -> int:
        """Delete every key under the prefix (tests and benchmarks clean up with it)."""
        async with self._call("deleting keys"):
            keys = [k async for k in self.redis.scan_iter(match=f"{self.prefix}:*", count=500)]
            if keys:
                await self.redis.delete(*keys)
        return len(keys)


# -- one trigger's consumer ----------------------------------------------------------------------------


def backoff(attempt: int) -> float:
    """Capped exponential backoff with equal jitter."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2 ** min(attempt, 16)))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


@dataclass(slots=True)
class _Batch:
    request_id: str
    commit_to: str  # the shard position once this batch and every earlier one finished
    holds_slot: bool
    done: bool = False


@dataclass(slots=True)
class ShardState:
    """One shard's positions: ``committed`` (persisted, everything up to it is finished) and
    ``read_to`` (everything up to it was handed over); batches in read order between them."""

    shard_id: str
    key: str
    committed: str
    read_to: str
    saved: str  # what the store holds
    pending: deque[_Batch] = field(default_factory=deque)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    fetched: int = 0  # records handed over since activation
    last_fetch_at: float | None = None  # the last read of the shard (wall clock)

    @property
    def in_flight(self) -> int:
        return sum(1 for b in self.pending if not b.done)

    def finish(self, request_id: str) -> tuple[bool, bool]:
        """Mark a batch finished; ``(known, moved)``: moved if ``committed`` advanced."""
        known = False
        for batch in self.pending:
            if batch.request_id == request_id and not batch.done:
                batch.done = known = True
                break
        moved = False
        while self.pending and self.pending[0].done:
            self.committed = self.pending.popleft().commit_to
            moved = True
        self.changed.set()
        return known, moved


class StreamRunner(abc.ABC):
    """Reads one trigger's Redis streams and hands batches to the invoker; at-least-once.

    * With a shared store (several processes), a lease (``<kind>:<trigger_id>`` in the store)
      makes one process the reader; another takes over within the lease TTL if it dies. An
      embedded store belongs to one process (its data directory is locked), so no lease is needed
      and a restarted process reads on at once.
    * Each shard's position is committed (``put_checkpoint``) only over the contiguous prefix of
      batches whose invocation reached a terminal state (SUCCESS, FAIL after retries, DISCARD),
      so a crash re-reads from the last committed position and nothing finished late is skipped.
    * ``per_shard_in_flight`` and ``concurrency`` bound unfinished batches (per shard and per
      trigger): reading pauses until batches finish.
    """

    kind: ClassVar[str]

    def __init__(
        self,
        ctx: ConnectorContext,
        backend: StreamBackend,
        spec: TriggerSpec,
        *,
        per_shard_in_flight: int,
        concurrency: int,
        lease_ttl_s: float = LEASE_TTL_S,
    ) -> None:
        self.use_lease = bool(ctx.options.get("shared_store"))
        self.ctx = ctx
        self.backend = backend
        self.spec = spec
        self.trigger_id = spec.trigger_id
        self.per_shard_in_flight = per_shard_in_flight
        self.concurrency = concurrency
        self.lease_ttl_s = lease_ttl_s
        self.shards: dict[str, ShardState] = {}
        self.state = "starting"
        self.leased = False
        self.stopping = False
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.batches = 0
        self.records = 0
        self.discarded = 0
        self.expired_gaps = 0
        self.finished: dict[str, int] = {}
        self.positioned = asyncio.Event()  # start positions resolved and persisted
        self.first_attempt_done = asyncio.Event()
        self._batches: dict[str, ShardState] = {}  # request id -> its shard
        self._gap_checked: dict[str, str] = {}  # shard -> position checked for expired records
        self._slots = asyncio.Semaphore(concurrency)
        self._commit_wake = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._drained = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._committer: asyncio.Task[None] | None = None
        self._stop_listening = ctx.completion.listen(spec.trigger_id, self.on_completion)

    # -- what a source defines ---------------------------------------------------------------------

    @abc.abstractmethod
    async def shard_keys(self) -> dict[str, str]:
        """Shard id -> Redis key; raise :class:`SourceMissing` if the source does not exist."""

    @abc.abstractmethod
    async def start_position(self, shard_id: str, key: str) -> str:
        """Where a shard the trigger never read starts (an id; reading starts after it)."""

    @abc.abstractmethod
    async def shard_loop(self, shard: ShardState) -> None:
        """Read the shard and hand batches over, forever (cancelled to stop)."""

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def lease_name(self) -> str:
        return f"{self.kind}:{self.trigger_id}"

    def checkpoint_name(self, shard_id: str) -> str:
        return f"{self.kind}:{shard_id}"

    def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name=f"{self.lease_name}-lease")

    async def wait_positioned(self, timeout_s: float) -> None:
        """Until start positions are pinned (or the first attempt failed, or ``timeout_s``)."""
        waiters = [
            asyncio.ensure_future(self.positioned.wait()),
            asyncio.ensure_future(self.first_attempt_done.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _supervise(self) -> None:
        """Hold the lease; consume exactly while it is held."""
        renewed = 0.0
        while True:
            if not self.use_lease:
                self.leased = True
                if self._consumer is None:
                    self._consumer = asyncio.create_task(self._consume(), name=f"{self.lease_name}-consume")
                await asyncio.Event().wait()  # until stopped
            try:
                held = await self.ctx.state.acquire_lease(self.lease_name, self.ctx.node_id, self.lease_ttl_s)
                if held:
                    renewed = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error("renewing the trigger's lease", exc)
                held = self.leased and time.monotonic() - renewed < self.lease_ttl_s
            if not held and not self.leased:
                self.state = "standby"  # another process reads this trigger
                self.first_attempt_done.set()
            self.leased = held
            if held and self._consumer is None:
                self._consumer = asyncio.create_task(self._consume(), name=f"{self.lease_name}-consume")
            elif not held and self._consumer is not None:
                log.warning("%s trigger %s: lease lost; another process reads it now", self.kind, self.trigger_id)
                await self._stop_consuming()
            await asyncio.sleep(self.lease_ttl_s / 3)

    async def _consume(self) -> None:
        attempt = 0
        while True:
            try:
                keys = await self.shard_keys()
                await self._load_positions(keys)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error("resolving the trigger's source", exc)
                self.state = "backoff"
                self.first_attempt_done.set()
                await asyncio.sleep(backoff(attempt))
                attempt += 1
        self.positioned.set()
        self.first_attempt_done.set()
        self.state = "running"
        self._committer = asyncio.create_task(self._commit_loop(), name=f"{self.lease_name}-commit")
        self._loops = [
            asyncio.create_task(self._guarded(shard), name=f"{self.lease_name}-{shard.shard_id}")
            for shard in self.shards.values()
        ]
        await asyncio.gather(*self._loops)

    async def _guarded(self, shard: ShardState) -> None:
        """Run a shard's loop; errors (Redis down ...) back off and resume from where it was."""
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self.shard_loop(shard)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error(f"reading {shard.shard_id}", exc)
                if time.monotonic() - started > BACKOFF_CAP_S:
                    attempt = 0  # it ran fine for a while: this is a new outage, start short again
                await asyncio.sleep(backoff(attempt))
                attempt += 1

    async def _load_positions(self, keys: dict[str, str]) -> None:
        """Committed positions from the store; shards never read get their start position, persisted
        at once (so "LATEST" means "from when the trigger was enabled", also after a restart)."""
        for shard_id, key in keys.items():
            if shard_id not in self.shards:
                position = await self._committed_or_pinned(shard_id, key)
                self.shards[shard_id] = ShardState(shard_id, key, position, position, position)

    async def _committed_or_pinned(self, shard_id: str, key: str) -> str:
        saved = await self.ctx.state.get_checkpoint(self.trigger_id, self.checkpoint_name(shard_id))
        position = saved.get("after") if isinstance(saved, dict) else None
        if not isinstance(position, str):
            position = await self.start_position(shard_id, key)
            await self.ctx.state.put_checkpoint(self.trigger_id, self.checkpoint_name(shard_id), {"after": position})
        return position

    async def pin_start_positions(self, timeout_s: float) -> None:
        """Store the start position of every shard never read, before ``activate()`` answers.

        Done by the process that enables the trigger, lease or not, so "LATEST" is the moment the
        API call returned even if the reading process starts later. If Redis or the store fail
        here, the reader pins the positions itself once they answer (and puts fail meanwhile).
        """
        try:
            async with asyncio.timeout(timeout_s):
                for shard_id, key in (await self.shard_keys()).items():
                    await self._committed_or_pinned(shard_id, key)
        except (Exception, TimeoutError) as exc:
            self.error("pinning the start positions", exc)

    async def stop(self, drain_s: float = DRAIN_S) -> None:
        """Stop reading, give unfinished batches ``drain_s`` to finish, commit, release the lease."""
        self.stopping = True
        try:
            await stop_tasks(self._supervisor)
            await self._stop_consuming(drain_s)
            if self.leased and self.use_lease:
                with contextlib.suppress(Exception):
                    await self.ctx.state.release_lease(self.lease_name, self.ctx.node_id)
                self.leased = False
        finally:
            self._stop_listening()
            self.state = "stopped"

    async def _stop_consuming(self, drain_s: float = 0.0) -> None:
        await stop_tasks(self._consumer, *self._loops)
        self._consumer, self._loops = None, []
        if drain_s > 0 and self._in_flight():
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_s):
                    await self._drained.wait()
        await stop_tasks(self._committer)
        self._committer = None
        await self.commit()
        # Whatever is unfinished now is read again by whoever holds the lease next.
        self.shards.clear()
        self._batches.clear()
        self._slots = asyncio.Semaphore(self.concurrency)
        self.positioned.clear()
        if not self.stopping:
            self.state = "standby"

    def _in_flight(self) -> int:
        return sum(shard.in_flight for shard in self.shards.values())

    # -- retention -----------------------------------------------------------------------------------

    async def clip_to_horizon(self, shard: ShardState, after: str, retention_s: float) -> str:
        """The (inclusive) start of a read after ``after``, never before the retention horizon.

        Records that expired unread in between are gone (as in DIS and LTS); that is logged and
        audited once per position. Mere idle time past the horizon (no record in between) is not.
        """
        horizon = self.backend.horizon(retention_s)
        start = next_id(after)
        if not id_before(start, horizon):
            return start
        if after != ZERO_ID and self._gap_checked.get(shard.shard_id) != after:
            self._gap_checked[shard.shard_id] = after
            if await self.backend.lost_after(shard.key, after, horizon):
                await self._report_expired(shard, after, horizon)
        return horizon

    async def _report_expired(self, shard: ShardState, after: str, horizon: str) -> None:
        detail = {
            "shard_id": shard.shard_id,
            "after_sequence_number": sequence_number(after),
            "horizon_sequence_number": sequence_number(horizon),
            **self.source_detail(),
        }
        log.warning("%s trigger %s: records expired before they were read: %s", self.kind, self.trigger_id, detail)
        self.expired_gaps += 1
        try:
            await self.ctx.state.audit(f"{self.kind}RecordsExpired", self.trigger_id, detail)
        except Exception as exc:
            self.error("auditing expired records", exc)

    def source_detail(self) -> dict[str, Any]:
        """What names the trigger's source in audit entries (the stream ...)."""
        return {}

    # -- handing batches over ------------------------------------------------------------------------

    async def acquire_slot(self, shard: ShardState) -> None:
        """Wait until this shard and the trigger may have one more unfinished batch; take a slot."""
        while shard.in_flight >= self.per_shard_in_flight:
            shard.changed.clear()
            await shard.changed.wait()
        await self._slots.acquire()

    def release_slot(self) -> None:
        self._slots.release()

    async def hand_over(self, shard: ShardState, payload: str, *, commit_to: str, source: dict[str, Any]) -> str:
        """Enqueue one event (durably) for the batch ending at ``commit_to``; it holds a slot."""
        request_id = new_request_id()
        shard.pending.append(_Batch(request_id, commit_to, holds_slot=True))
        self._batches[request_id] = shard
        shard.read_to = commit_to
        attempt = 0
        while True:
            try:
                await self.ctx.invocations.enqueue(
                    self.spec.function_urn,
                    payload,
                    trigger_id=self.trigger_id,
                    trigger_type=self.spec.trigger_type,
                    source=source,
                    request_id=request_id,
                )
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error("handing a batch to the invoker", exc)
                await asyncio.sleep(backoff(attempt))
                attempt += 1
        self.batches += 1
        return request_id

    def passed(self, shard: ShardState, commit_to: str) -> None:
        """Records up to ``commit_to`` need no invocation (discarded with a record): a finished batch."""
        shard.pending.append(_Batch(f"skip-{new_request_id()}", commit_to, holds_slot=False, done=True))
        shard.read_to = commit_to
        _, moved = shard.finish("")
        if moved:
            self._commit_wake.set()

    def on_completion(self, completion: Completion) -> None:
        """Called by the invoker (synchronously) when an invocation of this trigger is terminal."""
        shard = self._batches.pop(completion.request_id, None)
        if shard is None:
            return  # not ours: read before a restart or a lease change, and read again since
        holds_slot = any(b.request_id == completion.request_id and b.holds_slot for b in shard.pending)
        known, moved = shard.finish(completion.request_id)
        if not known:
            return
        status = str(completion.status)
        self.finished[status] = self.finished.get(status, 0) + 1
        if holds_slot:
            self._slots.release()
        if moved:
            self._commit_wake.set()
        if not self._in_flight():
            self._drained.set()

    async def _commit_loop(self) -> None:
        while True:
            await self._commit_wake.wait()
            self._commit_wake.clear()
            await asyncio.sleep(COMMIT_INTERVAL_S)
            if not await self.commit():
                await asyncio.sleep(1.0)
                self._commit_wake.set()

    async def commit(self) -> bool:
        """Persist the shards whose committed position moved; False if the store failed."""
        async with self._commit_lock:
            for shard in list(self.shards.values()):
                value = shard.committed
                if value == shard.saved:
                    continue
                try:
                    await self.ctx.state.put_checkpoint(
                        self.trigger_id, self.checkpoint_name(shard.shard_id), {"after": value}
                    )
                except Exception as exc:
                    self.error("saving the trigger's position", exc)
                    return False
                shard.saved = value
        return True

    # -- status --------------------------------------------------------------------------------------

    async def lag(self) -> Lag:
        """Entries after each shard's committed position (ids carry their write time in ms).

        Unknown when this process does not read the trigger (standby, backoff) or a shard has more
        than :data:`LAG_COUNT_CAP` unread entries (then only the times are known).
        """
        if self.state != "running" or not self.shards:
            return UNKNOWN_LAG
        total: int | None = 0
        oldest: float | None = None
        newest: float | None = None
        for shard in list(self.shards.values()):
            count, first, tip = await self.backend.backlog(shard.key, shard.committed, LAG_COUNT_CAP)
            if count >= LAG_COUNT_CAP:
                total = None
            elif total is not None:
                total += count
            if first is not None:
                first_s = id_ms(first) / 1000
                oldest = first_s if oldest is None else min(oldest, first_s)
                newest = max(newest or 0.0, id_ms(tip) / 1000 if tip else first_s)
        return Lag.behind(total, oldest, newest)

    def error(self, what: str, exc: BaseException) -> None:
        text = f"{what}: {type(exc).__name__}: {exc}"[:1000]
        if text != self.last_error:
            log.warning("%s trigger %s: %s", self.kind, self.trigger_id, text)
        self.last_error = text
        self.last_error_at = time.time()

    def status(self) -> dict[str, Any]:
        return {
            "consumer_state": self.state,
            "holds_lease": self.leased,
            "shards": [
                {
                    "shard_id": s.shard_id,
                    "committed": s.committed,
                    "read_to": s.read_to,
                    "in_flight": s.in_flight,
                    "last_fetch_time": iso(s.last_fetch_at),
                }
                for s in self.shards.values()
            ],
            "batches": self.batches,
            "records": self.records,
            "discarded": self.discarded,
            "expired_gaps": self.expired_gaps,
            "finished": dict(self.finished),
            "last_error": self.last_error,
            "last_error_time": iso(self.last_error_at),
        }


async def trim_forever(backend: StreamBackend, interval_s: float) -> None:
    """The retention sweep: exact ``XTRIM MINID`` of every registered stream every ``interval_s``."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            removed = await backend.trim_expired()
            if removed:
                log.info("retention: removed %d expired stream records", removed)
        except Exception as exc:
            log.warning("trimming expired stream records failed: %s", exc)


class StreamConnector(RunnerConnector[StreamRunner]):
    """What the DIS and LTS connectors share: the Redis backend, one runner per trigger active in
    this process, the retention sweep, and the activate/deactivate life cycle.

    Subclasses say what a trigger reads (:meth:`new_runner`) and what their sources are.
    """

    kind: ClassVar[str]  # "dis" | "lts": names tasks and log lines
    source_name: ClassVar[str]  # "DIS streams" | "LTS log streams": names what needs Redis in errors

    def __init__(self, ctx: ConnectorContext) -> None:
        super().__init__(ctx)
        url = str(ctx.options.get("streams_redis") or "")
        self.backend: StreamBackend | None = (
            StreamBackend(url, str(ctx.options.get("streams_prefix") or "triggerbus")) if url else None
        )
        self.lease_ttl_s = float(ctx.options.get("streams_lease_ttl_s") or LEASE_TTL_S)
        self.trim_interval_s = float(ctx.options.get("streams_trim_interval_s") or TRIM_INTERVAL_S)
        self._trimmer: asyncio.Task[None] | None = None

    @property
    def drain_s(self) -> float:
        return float(self.ctx.options.get("streams_drain_s", DRAIN_S))

    @abc.abstractmethod
    def new_runner(self, backend: StreamBackend, trigger: TriggerSpec) -> StreamRunner:
        """The reader of one trigger (not started)."""

    async def start(self) -> None:
        if self.backend is not None:
            self._trimmer = asyncio.create_task(
                trim_forever(self.backend, self.trim_interval_s), name=f"{self.kind}-trim"
            )

    async def close(self) -> None:
        await super().close()
        if self._trimmer is not None:
            self._trimmer.cancel()
            await asyncio.gather(self._trimmer, return_exceptions=True)
        if self.backend is not None:
            await self.backend.close()

    def require_backend(self) -> StreamBackend:
        if self.backend is None:
            raise unavailable(
                f"{self.source_name} need a Redis server: start the service with "
                "TRIGGERBUS_STREAMS_REDIS=redis://host:6379/0"
            )
        return self.backend

    async def activate(self, trigger: TriggerSpec) -> None:
        if self.backend is None:
            # Not an FSSError: at service start this must not stop the other triggers (the
            # trigger manager records it as the trigger's last_error).
            raise RuntimeError(f"{trigger.trigger_type} triggers need TRIGGERBUS_STREAMS_REDIS; this service has none")
        runner = self.new_runner(self.backend, trigger)
        await self.replace_runner(trigger.trigger_id, runner)
        await runner.pin_start_positions(ACTIVATE_WAIT_S)
        runner.start()
        await runner.wait_positioned(ACTIVATE_WAIT_S)  # what is put once this returns reaches the trigger
