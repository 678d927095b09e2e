"""What the trigger benchmarks share: driving triggers over HTTP, timing phases, the raw baseline subprocess.

Every trigger bench (Kafka, RabbitMQ, DDS, DIS, LTS) runs the same experiment: produce into a
source while a trigger feeds the no-op function, time the phase by polling the trigger's state,
read per-message latency back from the async records (the event carries the send times, the record
the attempt's end), then do the same with a raw consumer of the source in a subprocess. Sharing the
code keeps the benches measuring the same way, so their ratios compare.

* :class:`TriggerService` -- the service's trigger, record and function APIs, one trigger type.
* record reading -- :func:`new_records`, :func:`for_each_attempt`: which records a phase made and
  what their attempts say.
* :class:`RawProcess` with :func:`commands`/:func:`say` -- the raw baseline, a subprocess like the
  service (an event loop and CPU seconds of its own), driven by JSON lines over stdin/stdout.
* the message-trigger phases (Kafka, RabbitMQ): :class:`TriggerRun`, :func:`measure_trigger`,
  :func:`read_records`, :class:`RawRun`, :func:`measure_raw`, whose fields are the benches' JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import aiohttp

from bench._common import (
    FGS,
    ROOT,
    STALL_S,
    URN,
    Dist,
    child_env,
    cpu_mark,
    cpu_since,
    cpu_split_since,
    evenly,
    function_body,
    iso_ts,
    paced_count,
    pair,
    poll_until,
    service_session,
    step,
    triggerbus_server,
)

# -- what producers send --------------------------------------------------------------------------------


def message(seq: int, size: int) -> bytes:
    """A message value carrying its send time: ``"<seq> <epoch s>"``, space-padded to ``size`` bytes."""
    text = f"{seq} {time.time():.6f}"
    return (text + " " * max(0, size - len(text))).encode()


def sent_at(text: str) -> float:
    """The send time in a :func:`message`."""
    return float(text.split(maxsplit=2)[1])


class Pace:
    """A steady schedule, ``rate`` sends per second from when it was made: ``await pace(i)`` waits for send ``i``."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.perf_counter()

    async def __call__(self, i: int) -> None:
        delay = self.start + i / self.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)


# -- the service ------------------------------------------------------------------------------------------


class TriggerService:
    """HTTP access to the service under test, for triggers of one type (``trigger_type``)."""

    trigger_type: ClassVar[str]

    def __init__(self, http: aiohttp.ClientSession, base: str, pid: int) -> None:
        self.http = http
        self.base = base
        self.pid = pid

    async def _request(
        self, method: str, prefix: str, path: str, body: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        async with self.http.request(method, self.base + prefix + path, json=body, params=params) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {text[:500]}")
            return json.loads(text) if text else None

    async def api(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        """Any of the service's APIs (``path`` from the root)."""
        return await self._request(method, "", path, body, params)

    async def call(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        """The FunctionGraph API (``path`` below ``/v2/{project}/fgs``)."""
        return await self._request(method, FGS, path, body, params)

    async def create_function(self) -> None:
        await self.call("POST", "/functions", function_body())

    async def add_trigger(self, event_data: dict[str, Any]) -> str:
        body = await self.call(
            "POST", f"/triggers/{URN}", {"trigger_type_code": self.trigger_type, "event_data": event_data}
        )
        return str(body["trigger_id"])

    def _trigger(self, trigger_id: str) -> str:
        return f"/triggers/{URN}/{self.trigger_type}/{trigger_id}"

    async def set_status(self, trigger_id: str, status: str) -> None:
        await self.call("PUT", self._trigger(trigger_id), {"trigger_status": status})

    async def delete_trigger(self, trigger_id: str) -> None:
        await self.call("DELETE", self._trigger(trigger_id))

    async def state(self, trigger_id: str) -> dict[str, Any]:
        body = await self.call("GET", self._trigger(trigger_id))
        return dict(body.get("state") or {})

    async def wait_state(
        self, trigger_id: str, ready: Callable[[dict[str, Any]], bool], timeout: float, failure: str
    ) -> None:
        """Poll the trigger's state until ``ready(state)``; else raise ``failure in <timeout> s: <state>``."""
        deadline = time.monotonic() + timeout
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = await self.state(trigger_id)
            if ready(state):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{failure} in {timeout} s: {state}")

    async def records(self, trigger_id: str) -> list[dict[str, Any]]:
        """Every async record of the trigger (list API, newest first)."""
        found: list[dict[str, Any]] = []
        marker = 0
        while True:
            params = {"trigger_id": trigger_id, "limit": "500", "marker": str(marker)}
            body = await self.call("GET", f"/functions/{URN}/async-invocations", params=params)
            found.extend(body["invocations"])
            marker = int(body["next_marker"])
            if not marker:
                return found

    async def detail(self, request_id: str) -> dict[str, Any]:
        return dict(await self.call("GET", f"/functions/{URN}/async-invocations/{request_id}"))


S = TypeVar("S", bound=TriggerService)


@contextlib.asynccontextmanager
async def running_service(
    service: type[S], tmp: Path, data_dir: str = "triggerbus-data", **env: str
) -> AsyncIterator[S]:
    """The service under test in a subprocess, with the no-op function made: a ``service`` to drive it."""
    async with (
        triggerbus_server(tmp / data_dir, tmp / "triggerbus.log", **env) as (base, pid),
        service_session() as http,
    ):
        svc = service(http, base, pid)
        await svc.create_function()
        yield svc


# -- what the records say -------------------------------------------------------------------------------------


async def new_records(svc: TriggerService, trigger_id: str, seen: set[str]) -> list[dict[str, Any]]:
    """The trigger's records not in ``seen`` (which it extends): those of the phase just run."""
    fresh = [r for r in await svc.records(trigger_id) if r["request_id"] not in seen]
    seen.update(r["request_id"] for r in fresh)
    return fresh


def source_count(records: list[dict[str, Any]], default: int) -> int:
    """Messages the records' invocations carried (``source.count``; ``default`` where a record has none)."""
    return sum(int((r.get("source") or {}).get("count") or default) for r in records)


def count_statuses(records: list[dict[str, Any]]) -> dict[str, int]:
    statuses: dict[str, int] = {}
    for record in records:
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
    return statuses


async def for_each_attempt(
    svc: TriggerService,
    records: list[dict[str, Any]],
    sample: int,
    each: Callable[[dict[str, Any], dict[str, Any]], None],
) -> int:
    """``each(detail, last attempt)`` for at most ``sample`` of ``records`` (in creation order, evenly spread)
    that succeeded; returns how many were read. Details are fetched 8 at a time."""
    picked = evenly(sorted(records, key=lambda r: (r["created_time"], r["request_id"])), sample)
    gate = asyncio.Semaphore(8)

    async def one(request_id: str) -> None:
        async with gate:
            detail = await svc.detail(request_id)
        attempts = detail.get("attempt_details") or []
        if detail["status"] != "SUCCESS" or not attempts or not attempts[-1]["end_time"]:
            return
        each(detail, attempts[-1])

    await asyncio.gather(*(one(r["request_id"]) for r in picked))
    return len(picked)


# -- the raw baseline in a subprocess ------------------------------------------------------------------------


class RawProcess:
    """A bench's raw baseline (``python -m <bench> --raw-... ``), driven by JSON lines over stdin/stdout.

    It first answers ``{"ready": true}``; ``{"op": "exit"}`` (or closing its stdin) ends it.
    """

    def __init__(self, proc: asyncio.subprocess.Process, what: str) -> None:
        self.proc = proc
        self.what = what

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, argv: list[str], log: Path, what: str = "raw consumer", ready_within: float | None = 30
    ) -> AsyncIterator[RawProcess]:
        """Start ``python -m *argv`` (stderr to ``log``); wait ``ready_within`` s for READY unless None."""
        with open(log, "ab") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=child_env(),
                cwd=ROOT,
            )
        raw = cls(proc, what)
        try:
            if ready_within is not None:
                await raw.ready(ready_within)
            yield raw
        finally:
            await raw.stop()

    async def ready(self, timeout: float) -> None:
        answer = await self.answer(timeout)
        if not answer.get("ready"):
            raise RuntimeError(f"the {self.what} did not get ready: {answer}")

    async def stop(self) -> None:
        proc = self.proc
        if proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.write(b'{"op": "exit"}\n')
                await proc.stdin.drain()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def answer(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"the {self.what} exited with {await self.proc.wait()}; see its log")
        return dict(json.loads(line))

    async def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()


def say(body: dict[str, Any]) -> None:
    """In the raw subprocess: one answer to the bench."""
    sys.stdout.write(json.dumps(body) + "\n")
    sys.stdout.flush()


async def commands() -> AsyncIterator[dict[str, Any]]:
    """In the raw subprocess: the bench's commands, one JSON object a line, until it closes stdin."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        yield json.loads(line)


# -- the report ----------------------------------------------------------------------------------------------

LATENCY_COLUMNS = ["burst Triggerbus", "burst raw", "paced Triggerbus", "paced raw"]


def latency_cells(result: Any) -> list[str]:
    """The p50 / p99 latency cells of one batch size's ``burst``, ``raw_burst``, ``paced`` and ``raw_paced``
    (:data:`LATENCY_COLUMNS`); a phase that did not run shows ``-``."""
    phases = (result.burst, result.raw_burst, result.paced, result.raw_paced)
    return [pair(phase.latency_ms if phase else None) for phase in phases]


# -- message triggers (Kafka, RabbitMQ): one phase ----------------------------------------------------------


@dataclass
class Produced:
    """What one produce call sent: timing, and where the messages went."""

    messages: int
    first_send: float  # time.time() of the first send
    last_ack: float  # time.time() when the last send was acknowledged
    rate: float  # messages / (last ack - first send)
    start_offsets: dict[int, int]  # partition -> offset of the first message sent here
    end_offsets: dict[int, int]  # partition -> offset after the last message sent here


@dataclass
class TriggerRun:
    """One measured phase of a trigger: timing from the state, batches and latency from the records."""

    name: str
    messages: int
    finished: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # of this phase's records
    wall_s: float = math.nan  # first send -> all finished (seen by polling)
    rate: float = math.nan
    produce_rate: float = math.nan
    batches: int = 0
    messages_in_records: int = 0  # sum of source.count: above ``messages`` means redeliveries
    per_batch: float = math.nan
    paused_share: float = math.nan  # share of state polls that found a partition paused (back-pressure)
    max_in_flight: int = 0  # most consumed-but-unfinished messages seen at one poll
    latency_sample_records: int = 0
    latency_ms: Dist | None = None  # send -> end of the attempt that ran the message's batch
    wait_ms: Dist | None = None  # send -> start of that attempt
    duration_ms: Dist | None = None  # attempt duration_ms (what the runtime measured), per batch
    server_cpu_s: float | None = None
    worker_cpu_s: float | None = None
    broker_cpu_s: float | None = None
    bench_cpu_s: float | None = None
    stalled: bool = False


@dataclass
class Poll:
    """What polling the trigger's state during a phase saw."""

    done_at: float | None = None  # time.time() when all were finished; None if progress stalled
    counts: dict[str, int] = field(default_factory=dict)  # finished messages per status (cumulative)
    polls: int = 0
    paused_polls: int = 0  # polls that found a partition paused by back-pressure
    max_in_flight: int = 0  # most messages consumed and not yet finished, over all partitions


async def finished_total(svc: TriggerService, trigger_id: str) -> int:
    """Messages the trigger counts finished, whatever their status."""
    return sum(int(v) for v in ((await svc.state(trigger_id)).get("finished") or {}).values())


async def wait_finished(svc: TriggerService, trigger_id: str, target: int, progress: Callable[[], bool]) -> Poll:
    """Poll the trigger's state until its finished counts reach ``target`` and ``progress()`` says all were sent."""
    poll = Poll()

    async def probe() -> tuple[bool, int]:
        produced_all = progress()  # asked before the state, which then counts all that was sent
        state = await svc.state(trigger_id)
        now = time.time()
        poll.counts = {str(k): int(v) for k, v in (state.get("finished") or {}).items()}
        partitions = state.get("partitions") or []
        poll.polls += 1
        poll.paused_polls += any(p.get("paused") for p in partitions)
        poll.max_in_flight = max(poll.max_in_flight, sum(int(p.get("in_flight") or 0) for p in partitions))
        total = sum(poll.counts.values())
        if produced_all and total >= target:
            poll.done_at = now
        return poll.done_at is not None, total

    await poll_until(probe)
    return poll


async def measure_trigger(
    svc: TriggerService,
    trigger_id: str,
    name: str,
    produce: Callable[[], Coroutine[Any, Any, Produced]],
    n: int,
    broker_pid: int | None,
) -> TriggerRun:
    """Run ``produce`` (sending ``n`` messages) and wait until the trigger counts them all finished."""
    run = TriggerRun(name, n)
    before = await finished_total(svc, trigger_id)
    cpu_server, cpu_broker = cpu_mark(svc.pid), cpu_mark(broker_pid)
    bench_cpu = time.process_time()
    sender = asyncio.create_task(produce())
    try:
        poll = await wait_finished(svc, trigger_id, before + n, sender.done)
        sent = await sender
    finally:
        sender.cancel()
    run.server_cpu_s, run.worker_cpu_s = cpu_split_since(cpu_server, svc.pid)
    run.broker_cpu_s = cpu_since(cpu_broker, broker_pid)
    run.bench_cpu_s = time.process_time() - bench_cpu
    run.finished = sum(poll.counts.values()) - before
    run.produce_rate = sent.rate
    run.paused_share = poll.paused_polls / poll.polls if poll.polls else math.nan
    run.max_in_flight = poll.max_in_flight
    if poll.done_at is None:
        run.stalled = True
        print(f"!! {name}: stalled at {run.finished} of {n} finished", file=sys.stderr)
        return run
    run.wall_s = poll.done_at - sent.first_send
    run.rate = n / run.wall_s
    return run


async def read_records(svc: TriggerService, trigger_id: str, run: TriggerRun, seen: set[str], sample: int) -> None:
    """Batches and latencies of ``run`` from the records not in ``seen`` (which it extends)."""
    fresh = await new_records(svc, trigger_id, seen)
    run.batches = len(fresh)
    run.messages_in_records = source_count(fresh, 1)
    run.per_batch = run.messages_in_records / run.batches if run.batches else math.nan
    run.statuses = count_statuses(fresh)
    if set(run.statuses) - {"SUCCESS"}:
        print(f"!! {run.name}: record statuses {run.statuses}", file=sys.stderr)
    if run.messages_in_records != run.messages:
        print(
            f"!! {run.name}: the records hold {run.messages_in_records} messages, {run.messages} were sent",
            file=sys.stderr,
        )
    latencies: list[float] = []
    waits: list[float] = []
    durations: list[float] = []

    def each(detail: dict[str, Any], attempt: dict[str, Any]) -> None:
        end, start = iso_ts(attempt["end_time"]), iso_ts(attempt["start_time"])
        durations.append(float(attempt["duration_ms"]))
        for record in json.loads(detail["payload"])["records"]:
            for text in record["messages"]:
                t = sent_at(text)
                latencies.append((end - t) * 1000)
                waits.append((start - t) * 1000)

    run.latency_sample_records = await for_each_attempt(svc, fresh, sample, each)
    run.latency_ms, run.wait_ms, run.duration_ms = Dist.of(latencies), Dist.of(waits), Dist.of(durations)


async def measure_phases(
    args: argparse.Namespace,
    svc: TriggerService,
    trigger_id: str,
    label: str,
    paced: Callable[[], Coroutine[Any, Any, Produced]],
    burst: Callable[[], Coroutine[Any, Any, Produced]],
    n: int,
    broker_pid: int | None,
    seen: set[str],
) -> tuple[TriggerRun | None, TriggerRun]:
    """The paced phase (unless ``--paced-rate 0``), then a burst of ``n``, each read back from the records.

    Paced first, so that its latency is not that of a service still digesting a burst.
    """
    paced_n = paced_count(args)
    tb_paced: TriggerRun | None = None
    if paced_n:
        step(f"{label}: Triggerbus paced, {paced_n} messages at {args.paced_rate:g}/s")
        tb_paced = await measure_trigger(svc, trigger_id, f"{label} paced", paced, paced_n, broker_pid)
        await read_records(svc, trigger_id, tb_paced, seen, args.sample)
    step(f"{label}: Triggerbus burst of {n}")
    tb_burst = await measure_trigger(svc, trigger_id, f"{label} burst", burst, n, broker_pid)
    await read_records(svc, trigger_id, tb_burst, seen, args.sample)
    return tb_paced, tb_burst


async def warm_up_trigger(
    svc: TriggerService, trigger_id: str, send: Callable[[], Coroutine[Any, Any, Produced]], n: int
) -> None:
    """Run ``n`` messages through a trigger of its own (not measured): starts the workers, runs every code path."""
    run = await measure_trigger(svc, trigger_id, "warm-up", send, n, None)
    if run.stalled:
        raise RuntimeError("the warm-up messages did not all finish; see the service log")


# -- message triggers: the raw consumer ---------------------------------------------------------------------


@dataclass
class RawRun:
    name: str
    messages: int
    batches: int
    rate: float  # messages / (last done - first send), or / (last done - first record) without a send
    wall_s: float
    latency_ms: Dist | None  # send -> handler returned (live runs only)
    consumer_cpu_s: float | None = None
    broker_cpu_s: float | None = None


def say_consumed(got: int, batches: int, first_record: float | None, done: list[tuple[float, list[str]]]) -> None:
    """In the raw consumer: the answer to a consume command; ``done``: (handler returned, its messages) per batch."""
    latencies = [(t - sent_at(m)) * 1000 for t, messages in done for m in messages]
    say(
        {
            "messages": got,
            "batches": batches,
            "first_record": first_record,
            "last_done": done[-1][0] if done else None,
            "latency_ms": asdict(Dist.of(latencies)),
        }
    )


R = TypeVar("R")


def raw_run(
    name: str,
    answer: dict[str, Any],
    start: float | None,
    run: Callable[..., R],
    count: str = "messages",
    first: str = "first_record",
) -> R:
    """A raw consumer's ``answer`` as ``run(name, count, batches, rate, wall_s, latency_ms)``.

    ``start``: time.time() of the first send (live), or None to time from the ``first`` record
    the consumer saw (re-read, drain; no latency then). ``count``: the answer's key for how many.
    """
    begin = start if start is not None else answer[first]
    wall = float(answer["last_done"]) - float(begin)
    latency = Dist(**answer["latency_ms"]) if start is not None else None
    return run(name, int(answer[count]), int(answer["batches"]), answer[count] / wall, wall, latency)


async def measure_raw(
    raw: RawProcess,
    name: str,
    command: dict[str, Any],
    send: Callable[[], Coroutine[Any, Any, Produced]] | None,
    broker_pid: int | None,
) -> RawRun:
    """Send the raw consumer ``command`` (it consumes ``command["n"]`` messages); live, ``send`` produces meanwhile."""
    count = int(command["n"])
    cpu_raw, cpu_broker = cpu_mark(raw.pid), cpu_mark(broker_pid)
    await raw.send(command)
    sent = await send() if send else None
    result = raw_run(name, await raw.answer(STALL_S + count / 100), sent.first_send if sent else None, RawRun)
    result.consumer_cpu_s, result.broker_cpu_s = cpu_since(cpu_raw, raw.pid), cpu_since(cpu_broker, broker_pid)
    return result
