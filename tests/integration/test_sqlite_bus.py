"""The embedded bus against a real SQLite file, including a SIGKILL in the middle of publishing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bus.base import Outgoing, partition_for
from bus.sqlite import SQLiteBus
from bus.sqlitedb import Database

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[SQLiteBus]:
    db = Database(tmp_path / "bus.db")
    await db.open()
    bus = SQLiteBus(db, partitions=4, commit_interval=0.01)
    await bus.start()
    yield bus
    await bus.close()
    await db.close()


async def reopen(path: Path) -> tuple[Database, SQLiteBus]:
    db = Database(path)
    await db.open()
    bus = SQLiteBus(db, partitions=4, commit_interval=0.01)
    await bus.start()
    return db, bus


async def drain(sub, expected: int, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        got.extend(await sub.fetch(100, 0.2))
    return got


async def test_publish_is_readable_in_key_order(bus: SQLiteBus) -> None:
    for i in range(20):
        await bus.publish(Outgoing("t", f"a{i}".encode(), key="A"), Outgoing("t", f"b{i}".encode(), key="B"))
    sub = bus.subscribe("g", ["t"])
    messages = await drain(sub, 40)
    assert len(messages) == 40
    for key in ("A", "B"):
        values = [m.value.decode() for m in messages if m.key == key]
        assert values == [f"{key.lower()}{i}" for i in range(20)]
        assert {m.partition for m in messages if m.key == key} == {partition_for(key, 4)}


async def test_one_publish_call_is_atomic_and_offsets_are_contiguous(bus: SQLiteBus) -> None:
    await bus.publish(*[Outgoing("t", str(i).encode(), key="k") for i in range(50)])
    sub = bus.subscribe("g", ["t"])
    messages = await drain(sub, 50)
    assert [m.offset for m in messages] == list(range(50))


async def test_uncommitted_messages_are_redelivered_after_restart(tmp_path: Path) -> None:
    db, bus = await reopen(tmp_path / "b.db")
    await bus.publish(*[Outgoing("t", str(i).encode(), key="k") for i in range(10)])
    sub = bus.subscribe("g", ["t"])
    messages = await drain(sub, 10)
    for m in messages[:4]:
        sub.ack(m)
    sub.ack(messages[6])  # out of order: must not move the commit past 4..5
    await sub.commit()
    await bus.close()
    await db.close()

    db, bus = await reopen(tmp_path / "b.db")
    sub = bus.subscribe("g", ["t"])
    again = await drain(sub, 6)
    assert [m.value.decode() for m in again] == [str(i) for i in range(4, 10)]
    await bus.close()
    await db.close()


async def test_in_flight_budget_applies_back_pressure(bus: SQLiteBus) -> None:
    await bus.publish(*[Outgoing("t", b"x", key=str(i)) for i in range(30)])
    sub = bus.subscribe("g", ["t"], max_in_flight=10)
    first = await sub.fetch(100, 0.5)
    assert len(first) == 10
    assert await sub.fetch(100, 0.2) == []
    for m in first[:5]:
        sub.ack(m)
    more = await sub.fetch(100, 0.5)
    assert len(more) == 5


async def test_delayed_messages_wait_without_blocking_others(bus: SQLiteBus) -> None:
    due = time.time() + 0.6
    await bus.publish(Outgoing("t", b"later", key="k", deliver_at=due))
    await bus.publish(Outgoing("t", b"now", key="k"))
    assert await bus.pending_delayed("t") == 1
    sub = bus.subscribe("g", ["t"])
    first = await drain(sub, 1, timeout=0.4)
    assert [m.value for m in first] == [b"now"]
    later = await drain(sub, 1, timeout=3.0)
    assert [m.value for m in later] == [b"later"]
    assert time.time() >= due
    assert await bus.pending_delayed("t") == 0


async def test_delayed_messages_survive_a_restart(tmp_path: Path) -> None:
    db, bus = await reopen(tmp_path / "d.db")
    await bus.publish(Outgoing("t", b"retry", key="k", deliver_at=time.time() + 0.3))
    await bus.close()
    await db.close()
    db, bus = await reopen(tmp_path / "d.db")
    sub = bus.subscribe("g", ["t"])
    got = await drain(sub, 1, timeout=3.0)
    assert [m.value for m in got] == [b"retry"]
    await bus.close()
    await db.close()


async def test_retention_keeps_what_a_group_has_not_committed(bus: SQLiteBus) -> None:
    await bus.publish(*[Outgoing("t", str(i).encode(), key="k") for i in range(10)])
    fast = bus.subscribe("fast", ["t"])
    slow = bus.subscribe("slow", ["t"])
    for m in await drain(fast, 10):
        fast.ack(m)
    await fast.commit()
    got = await drain(slow, 10)
    for m in got[:3]:
        slow.ack(m)
    await slow.commit()
    deleted = await bus.compact()
    assert deleted == 3
    lag = await bus.lag("slow", "t")
    assert sum(lag.values()) == 7


async def test_retention_deletes_a_large_backlog_in_slices(bus: SQLiteBus) -> None:
    bus.compact_slice = 4
    slices: list[int] = []
    original = bus._delete_slice

    def counting(conn: Any, **where: Any) -> int:
        slices.append(original(conn, **where))
        return slices[-1]

    await bus.publish(*[Outgoing("t", str(i).encode(), key="k") for i in range(10)])
    sub = bus.subscribe("g", ["t"])
    for m in await drain(sub, 10):
        sub.ack(m)
    await sub.commit()
    bus._delete_slice = counting  # type: ignore[method-assign]
    assert await bus.compact() == 10
    assert [n for n in slices if n] == [4, 4, 2]  # three short transactions, not one long one
    assert await bus.compact() == 0


async def test_lag_counts_uncommitted_messages(bus: SQLiteBus) -> None:
    await bus.publish(*[Outgoing("t", b"x", key=str(i)) for i in range(12)])
    sub = bus.subscribe("g", ["t"])
    messages = await drain(sub, 12)
    assert sum((await bus.lag("g", "t")).values()) == 12
    for m in messages:
        sub.ack(m)
    await sub.commit()
    assert sum((await bus.lag("g", "t")).values()) == 0


PUBLISHER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from bus.base import Outgoing
    from bus.sqlite import SQLiteBus
    from bus.sqlitedb import Database

    async def main():
        db = Database(Path(sys.argv[1]))
        await db.open()
        bus = SQLiteBus(db, partitions=4)
        await bus.start()
        n = 0

        async def worker(w):
            nonlocal n
            i = 0
            while True:
                ident = f"{w}-{i}"
                await bus.publish(Outgoing("t", ident.encode(), key=str(w)))
                print(ident, flush=True)  # acknowledged: publish returned
                i += 1

        await asyncio.gather(*(worker(w) for w in range(8)))

    asyncio.run(main())
    """
)


async def test_sigkill_during_publishing_loses_no_acknowledged_message(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(path)], stdout=subprocess.PIPE, env=env, text=True)
    acknowledged: list[str] = []
    assert proc.stdout is not None
    while len(acknowledged) < 3000:
        line = proc.stdout.readline()
        if not line:
            break
        acknowledged.append(line.strip())
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=10)
    acknowledged.extend(x for x in rest.split() if x)  # printed before the kill landed
    assert proc.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 3000

    db, bus = await reopen(path)
    sub = bus.subscribe("check", ["t"])
    stored: list[str] = []
    while True:
        batch = await sub.fetch(5000, 0.3)
        if not batch:
            break
        stored.extend(m.value.decode() for m in batch)
        for m in batch:
            sub.ack(m)
    missing = set(acknowledged) - set(stored)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
    # per-key order survived too
    for w in range(8):
        seq = [int(x.split("-")[1]) for x in stored if x.startswith(f"{w}-")]
        assert seq == sorted(seq)
    await bus.close()
    await db.close()
    print(json.dumps({"acknowledged": len(acknowledged), "stored": len(stored)}))
