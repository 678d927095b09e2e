"""The async invoker's policy: retries, max age, destinations, records, duplicates, concurrency.

The bus is the in-memory stub and the function runtime a scripted fake (both are
*other* parts); the record store is the real SQLite one on a temp file.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from bus.base import Outgoing
from bus.memory import MemoryBus
from invoker.async_invoker import AsyncInvoker
from invoker.completion import Completion, CompletionHub
from invoker.concurrency import ConcurrencyLimiter
from invoker.dispatcher import Dispatcher
from invoker.envelope import DEADLETTER_TOPIC, INVOCATIONS_TOPIC, DestinationTask, InvocationEnvelope
from invoker.registry import ResolvedFunction
from invoker.retry import RetryPolicy
from invoker.runtime.base import (
    ErrorCategory,
    FunctionSpec,
    InvocationError,
    InvocationRequest,
    InvocationResult,
)
from schemas.async_config import AsyncInvokeConfig, DestinationConfig, FuncAsyncDestinationConfig
from schemas.records import AsyncStatus
from triggerbus.store.sqlite import SQLiteStore

URN_A = "urn:fss:local:proj:function:default:a:latest"
URN_B = "urn:fss:local:proj:function:default:b:latest"


def spec(urn: str, max_instances: int = 10) -> FunctionSpec:
    name = urn.split(":")[-2]
    return FunctionSpec(
        urn=urn, name=name, package="default", version="latest", project_id="proj", region="local",
        runtime="Python3.9", handler="index.handler", memory_mb=128, timeout_s=3, code_dir=None,
        code_digest="d", max_instances=max_instances,
    )  # fmt: skip


def ok(request: InvocationRequest, body: bytes = b'"hello world!"') -> InvocationResult:
    return InvocationResult(request.request_id, body, duration_ms=1.0)


def boom(request: InvocationRequest) -> InvocationResult:
    error = InvocationError(ErrorCategory.CODE_EXCEPTION, "boom", error_type="ValueError")
    return InvocationResult(request.request_id, json.dumps(error.as_payload()).encode(), error, duration_ms=1.0)


@dataclass
class FakeRuntime:
    """Scripted: ``script`` decides each result; records concurrency and calls."""

    script: Callable[[InvocationRequest], InvocationResult] = ok
    delay: float = 0.0
    calls: list[InvocationRequest] = field(default_factory=list)
    urns: list[str] = field(default_factory=list)
    running: int = 0
    peak: int = 0

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def retire(self, urn: str) -> None: ...

    async def cancel(self, request_id: str) -> bool:
        return False

    async def invoke(self, spec: FunctionSpec, request: InvocationRequest) -> InvocationResult:
        self.calls.append(request)
        self.urns.append(spec.urn)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            return self.script(request)
        finally:
            self.running -= 1


class Directory:
    def __init__(self) -> None:
        self.functions: dict[str, ResolvedFunction] = {}

    def add(self, urn: str, config: AsyncInvokeConfig | None = None, max_instances: int = 10) -> None:
        self.functions[urn] = ResolvedFunction(spec(urn, max_instances), config or AsyncInvokeConfig(func_urn=urn))

    async def resolve(self, urn: str) -> ResolvedFunction | None:
        return self.functions.get(urn)


@dataclass
class Rig:
    bus: MemoryBus
    store: SQLiteStore
    runtime: FakeRuntime
    directory: Directory
    invoker: AsyncInvoker
    completions: list[Completion]

    async def submit(self, urn: str = URN_A, payload: str = '{"k": 1}', **kw: object) -> str:
        env = InvocationEnvelope(function_urn=urn, payload=payload, **kw)  # type: ignore[arg-type]
        await self.bus.publish(Outgoing(INVOCATIONS_TOPIC, env.to_bytes(), key=urn))
        return env.request_id

    async def until_terminal(self, request_id: str, timeout: float = 10.0):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = await self.store.get_record(request_id)
            if record is not None and record.status.terminal:
                return record
            await asyncio.sleep(0.01)
        raise AssertionError(f"{request_id} not terminal: {await self.store.get_record(request_id)}")

    def published(self, topic: str) -> list[bytes]:
        return [m.value for m in self.bus.messages(topic)]


@pytest.fixture
async def rig(store: SQLiteStore) -> AsyncIterator[Rig]:
    bus = MemoryBus()
    runtime = FakeRuntime()
    directory = Directory()
    directory.add(URN_A)
    completions: list[Completion] = []
    hub = CompletionHub()
    hub.listen("trig-1", completions.append)
    invoker = AsyncInvoker(
        bus,
        store,
        directory,
        Dispatcher({"python": runtime}),
        ConcurrencyLimiter(),
        completion=hub,
        retry=RetryPolicy(base_s=0.05, cap_s=0.2, rng=random.Random(7)),
    )
    await invoker.start()
    yield Rig(bus, store, runtime, directory, invoker, completions)
    await invoker.close()


def fn_destination(urn: str) -> DestinationConfig:
    return DestinationConfig(destination="FunctionGraph", param=json.dumps({"func_urn": urn}))


async def test_success_writes_a_success_record_and_notifies_the_trigger(rig: Rig) -> None:
    rid = await rig.submit(trigger_id="trig-1", item_ids=["i1", "i2"], source={"topic": "t", "offset": 3})
    record = await rig.until_terminal(rid)
    assert record.status is AsyncStatus.SUCCESS
    assert (record.attempts, record.error_code, record.error_message) == (1, 0, "")
    assert record.start_time is not None and record.end_time is not None
    assert record.source == {"topic": "t", "offset": 3}
    assert rig.runtime.calls[0].payload == b'{"k": 1}'
    assert rig.runtime.calls[0].invoke_type == "async"
    await asyncio.sleep(0.01)
    assert rig.completions == [Completion(rid, "trig-1", ("i1", "i2"), AsyncStatus.SUCCESS)]


async def test_on_success_destination_gets_the_documented_event(rig: Rig) -> None:
    rig.directory.add(URN_B)
    rig.directory.add(
        URN_A,
        AsyncInvokeConfig(
            func_urn=URN_A, destination_config=FuncAsyncDestinationConfig(on_success=fn_destination(URN_B))
        ),
    )
    rid = await rig.submit(payload='{"in": true}')
    record = await rig.until_terminal(rid)
    assert record.destination["kind"] == "FunctionGraph"
    assert record.destination["status"] == "delivered"
    dest_rid = record.destination["request_id"]
    dest_record = await rig.until_terminal(dest_rid)
    assert dest_record.function_urn == URN_B
    event = json.loads(dest_record.payload)
    assert set(event) == {"timestamp", "request_context", "request_payload", "response_context", "response_payload"}
    assert event["request_context"] == {
        "request_id": rid,
        "function_urn": URN_A,
        "condition": "",
        "approximate_invoke_count": 1,
    }
    assert event["request_payload"] == '{"in": true}'
    assert event["response_context"] == {"status_code": 200, "function_error": ""}
    assert event["response_payload"] == "hello world!"
    assert event["timestamp"].endswith("Z")


async def test_failures_are_retried_up_to_max_then_fail_with_on_failure_event(rig: Rig) -> None:
    rig.runtime.script = boom
    rig.directory.add(URN_B)
    rig.directory.add(
        URN_A,
        AsyncInvokeConfig(
            func_urn=URN_A,
            max_async_retry_attempts=2,
            destination_config=FuncAsyncDestinationConfig(on_failure=fn_destination(URN_B)),
        ),
    )
    rid = await rig.submit()
    record = await rig.until_terminal(rid)
    assert record.status is AsyncStatus.FAIL
    assert record.attempts == 3
    assert record.error_code == 4101
    assert record.error_message == "ValueError: boom"
    assert record.condition == "UnhandledInvocationError"
    attempts = await rig.store.list_attempts(rid)
    assert [a.n for a in attempts] == [1, 2, 3]
    assert all(a.status == "FAIL" for a in attempts)
    gaps = [b.start - a.end for a, b in itertools.pairwise(attempts) if a.end]
    assert all(gap >= 0.02 for gap in gaps)  # backoff happened (>= half the 0.05 s base)
    dest = await rig.until_terminal(record.destination["request_id"])
    event = json.loads(dest.payload)
    assert event["request_context"]["condition"] == "UnhandledInvocationError"
    assert event["request_context"]["approximate_invoke_count"] == 3
    assert event["response_context"] == {"status_code": 500, "function_error": ""}
    assert json.loads(event["response_payload"])["errorType"] == "ValueError"


async def test_zero_retries_means_one_attempt(rig: Rig) -> None:
    rig.runtime.script = boom
    rig.directory.add(URN_A, AsyncInvokeConfig(func_urn=URN_A, max_async_retry_attempts=0))
    record = await rig.until_terminal(await rig.submit())
    assert record.status is AsyncStatus.FAIL
    assert record.attempts == 1
    assert len(rig.runtime.calls) == 1


async def test_default_policy_retries_once(rig: Rig) -> None:
    rig.runtime.script = boom
    record = await rig.until_terminal(await rig.submit())
    assert record.attempts == 2


async def test_an_event_older_than_max_age_is_discarded_without_running(rig: Rig) -> None:
    rig.directory.add(URN_B)
    rig.directory.add(
        URN_A,
        AsyncInvokeConfig(
            func_urn=URN_A,
            max_async_event_age_in_seconds=60,
            destination_config=FuncAsyncDestinationConfig(on_failure=fn_destination(URN_B)),
        ),
    )
    rid = await rig.submit(enqueued_at=time.time() - 61)
    record = await rig.until_terminal(rid)
    assert record.status is AsyncStatus.DISCARD
    assert record.attempts == 0
    assert record.condition == "EventAgeExceeded"
    assert "max_async_event_age_in_seconds=60" in record.error_message
    assert URN_A not in rig.runtime.urns
    dest = await rig.until_terminal(record.destination["request_id"])
    event = json.loads(dest.payload)
    assert event["request_context"]["condition"] == "EventAgeExceeded"
    assert event["request_context"]["approximate_invoke_count"] == 0


async def test_age_running_out_before_a_retry_discards(rig: Rig) -> None:
    rig.runtime.script = boom
    rig.directory.add(
        URN_A, AsyncInvokeConfig(func_urn=URN_A, max_async_event_age_in_seconds=1, max_async_retry_attempts=3)
    )
    rig.invoker.retry = RetryPolicy(base_s=5.0, cap_s=5.0)
    record = await rig.until_terminal(await rig.submit())
    assert record.status is AsyncStatus.DISCARD
    assert record.attempts == 1
    assert "last error: ValueError: boom" in record.error_message


async def test_unknown_function_fails_with_a_clear_message(rig: Rig) -> None:
    record = await rig.until_terminal(await rig.submit(urn="urn:fss:local:proj:function:default:ghost:latest"))
    assert record.status is AsyncStatus.FAIL
    assert record.error_code == 4404
    assert "does not exist" in record.error_message


async def test_a_redelivered_finished_invocation_is_not_run_again_but_announced_again(rig: Rig) -> None:
    env = InvocationEnvelope(function_urn=URN_A, payload="{}", trigger_id="trig-1", item_ids=["i1"])
    await rig.bus.publish(Outgoing(INVOCATIONS_TOPIC, env.to_bytes(), key=URN_A))
    await rig.until_terminal(env.request_id)
    await rig.bus.publish(Outgoing(INVOCATIONS_TOPIC, env.to_bytes(), key=URN_A))
    await asyncio.sleep(0.2)
    assert len(rig.runtime.calls) == 1
    assert rig.invoker.stats["duplicates"] == 1
    # The connector may have missed the first announcement (it died with another process):
    # the redelivery repeats it, so the source position can still move on.
    assert rig.completions == [Completion(env.request_id, "trig-1", ("i1",), AsyncStatus.SUCCESS)] * 2


async def test_a_canceled_waiting_invocation_never_runs(rig: Rig) -> None:
    rig.directory.add(URN_A, max_instances=1)
    rig.runtime.delay = 0.3
    first = await rig.submit()
    await asyncio.sleep(0.05)
    second = await rig.submit()
    await asyncio.sleep(0.05)
    assert await rig.store.cancel_waiting(second, "function invocation canceled")
    assert (await rig.until_terminal(first)).status is AsyncStatus.SUCCESS
    record = await rig.until_terminal(second)
    assert record.status is AsyncStatus.DISCARD
    assert record.error_code == 4208
    await asyncio.sleep(0.1)
    assert len(rig.runtime.calls) == 1


async def test_max_instances_bounds_concurrency_and_async_calls_wait(rig: Rig) -> None:
    rig.directory.add(URN_A, max_instances=2)
    rig.runtime.delay = 0.05
    ids = [await rig.submit() for _ in range(8)]
    for rid in ids:
        assert (await rig.until_terminal(rid)).status is AsyncStatus.SUCCESS
    assert rig.runtime.peak == 2


async def test_a_saturated_function_overflows_to_its_lane_and_does_not_starve_others(rig: Rig) -> None:
    rig.invoker.overflow_threshold = 3
    rig.directory.add(URN_A, max_instances=1)
    rig.directory.add(URN_B, max_instances=5)
    order: list[str] = []

    def script(request: InvocationRequest) -> InvocationResult:
        order.append(request.payload.decode())
        return ok(request)

    rig.runtime.script = script
    rig.runtime.delay = 0.05
    slow = [await rig.submit(URN_A, payload=json.dumps({"a": i})) for i in range(12)]
    fast = [await rig.submit(URN_B, payload=json.dumps({"b": i})) for i in range(5)]
    start = time.monotonic()
    for rid in fast:
        assert (await rig.until_terminal(rid)).status is AsyncStatus.SUCCESS
    fast_elapsed = time.monotonic() - start
    for rid in slow:
        assert (await rig.until_terminal(rid, timeout=30)).status is AsyncStatus.SUCCESS
    assert rig.invoker.stats["overflowed"] > 0
    assert fast_elapsed < 12 * 0.05  # B finished long before A's backlog could drain
    a_order = [json.loads(p)["a"] for p in order if p.startswith('{"a"')]
    assert sorted(a_order) == list(range(12))
    assert len(rig.runtime.calls) == 17  # nothing ran twice
    lane = f"tb.lane.{URN_A}"
    assert len(rig.published(lane)) == rig.invoker.stats["overflowed"]  # one write per overflowed event


async def test_malformed_messages_are_dead_lettered_and_do_not_block(rig: Rig) -> None:
    await rig.bus.publish(Outgoing(INVOCATIONS_TOPIC, b"not json", key=URN_A))
    rid = await rig.submit()
    assert (await rig.until_terminal(rid)).status is AsyncStatus.SUCCESS
    assert rig.published(DEADLETTER_TOPIC) == [b"not json"]


async def test_obs_destination_becomes_a_destination_task(rig: Rig) -> None:
    obs = DestinationConfig(destination="OBS", param=json.dumps({"bucket": "results", "prefix": "ok"}))
    rig.directory.add(
        URN_A, AsyncInvokeConfig(func_urn=URN_A, destination_config=FuncAsyncDestinationConfig(on_success=obs))
    )
    rid = await rig.submit()
    record = await rig.until_terminal(rid)
    assert record.destination["status"] == "pending"
    tasks = [DestinationTask.model_validate_json(v) for v in rig.published("tb.destinations")]
    assert len(tasks) == 1
    assert tasks[0].param == {"bucket": "results", "prefix": "ok", "expires": 0}
    assert json.loads(tasks[0].event)["request_context"]["request_id"] == rid


async def test_large_results_are_reported_empty_to_destinations(rig: Rig) -> None:
    big = json.dumps("x" * (300 * 1024)).encode()
    rig.runtime.script = lambda request: ok(request, big)
    rig.directory.add(URN_B)
    rig.directory.add(
        URN_A,
        AsyncInvokeConfig(
            func_urn=URN_A, destination_config=FuncAsyncDestinationConfig(on_success=fn_destination(URN_B))
        ),
    )
    record = await rig.until_terminal(await rig.submit())
    dest = await rig.until_terminal(record.destination["request_id"])
    assert json.loads(dest.payload)["response_payload"] == ""
