"""Overflow lanes on the durable bus: a backlog left in a lane is drained after a restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bus.base import Outgoing
from bus.sqlite import SQLiteBus
from bus.sqlitedb import Database
from invoker.async_invoker import AsyncInvoker
from invoker.concurrency import ConcurrencyLimiter
from invoker.dispatcher import Dispatcher
from invoker.envelope import INVOCATIONS_TOPIC, InvocationEnvelope
from schemas.records import AsyncStatus
from tests.unit.test_async_invoker import URN_A, Directory, FakeRuntime
from triggerbus.store.sqlite import SQLiteStore

pytestmark = pytest.mark.integration


async def start(path: Path, runtime: FakeRuntime) -> tuple[Database, SQLiteBus, SQLiteStore, AsyncInvoker]:
    db = Database(path)
    await db.open()
    bus = SQLiteBus(db, commit_interval=0.01)
    await bus.start()
    store = SQLiteStore(db)
    await store.start()
    directory = Directory()
    directory.add(URN_A, max_instances=1)
    invoker = AsyncInvoker(bus, store, directory, Dispatcher({"python": runtime}), ConcurrencyLimiter(),
                           overflow_threshold=2)  # fmt: skip
    await invoker.start()
    return db, bus, store, invoker


async def test_lane_backlog_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "lanes.db"
    runtime = FakeRuntime(delay=0.1)
    db, bus, store, invoker = await start(path, runtime)
    ids = []
    for i in range(20):
        env = InvocationEnvelope(function_urn=URN_A, payload=f'{{"i": {i}}}')
        ids.append(env.request_id)
        await bus.publish(Outgoing(INVOCATIONS_TOPIC, env.to_bytes(), key=URN_A))
    deadline = time.monotonic() + 5
    while invoker.stats["overflowed"] < 10 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert invoker.stats["overflowed"] >= 10
    await invoker.close()  # most of the lane is still waiting
    await bus.close()
    await db.close()
    ran_before = len(runtime.calls)
    assert ran_before < 20

    runtime2 = FakeRuntime(delay=0.01)
    db, bus, store, invoker = await start(path, runtime2)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [await store.record_state(rid) for rid in ids]
            if all(s is not None and s.status.terminal for s in states):
                break
            await asyncio.sleep(0.05)
        states = [await store.record_state(rid) for rid in ids]
        assert all(s is not None and s.status is AsyncStatus.SUCCESS for s in states)
        assert ran_before + len(runtime2.calls) <= 20 + 1  # at most the one running at close ran twice
    finally:
        await invoker.close()
        await bus.close()
        await db.close()
