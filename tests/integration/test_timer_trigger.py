"""TIMER triggers: events, misfire policies, restarts, disabling, and one fire per instant across processes."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bus.sqlitedb import Database
from connectors.base import TriggerSpec
from connectors.timer import TimerConnector, fire_request_id
from invoker.completion import CompletionHub
from invoker.records import Record
from tests.integration.conftest import ROOT, Harness, make_settings, running
from tests.support.connectors import node_context
from triggerbus.store.sqlite import SQLiteStore

pytestmark = pytest.mark.integration

FN = "def handler(event, context):\n    return event\n"


@dataclass
class Recorder:
    store: SQLiteStore
    fires: list[dict[str, Any]] = field(default_factory=list)

    async def invoke_sync(self, *args: Any, **kw: Any) -> Any:
        raise NotImplementedError

    async def enqueue(self, function_urn: str, payload: str, **kw: Any) -> str:
        self.fires.append({"payload": json.loads(payload), **kw})
        await self.store.insert_record(Record(request_id=kw["request_id"], function_urn=function_urn))
        return str(kw["request_id"])


@dataclass
class TimerRig:
    store: SQLiteStore
    recorder: Recorder

    def connector(self, node: str = "n1", **kw: Any) -> TimerConnector:
        ctx = node_context(self.store, node, CompletionHub(), invocations=self.recorder)
        return TimerConnector(ctx, lease_ttl=kw.pop("lease_ttl", 1.0), **kw)


@pytest.fixture
def rig(store: SQLiteStore) -> TimerRig:
    return TimerRig(store, Recorder(store))


def spec(schedule: str, schedule_type: str = "Cron", created: float | None = None, **data: Any) -> TriggerSpec:
    return TriggerSpec(
        trigger_id="trig-1",
        function_urn="urn:fss:local:p:function:default:f:latest",
        trigger_type="TIMER",
        event_data={"name": "Timer-001", "schedule_type": schedule_type, "schedule": schedule, **data},
        created=created if created is not None else time.time(),
    )


async def test_fires_carry_the_documented_timer_event(rig: TimerRig) -> None:
    timer = rig.connector()
    await timer.start()
    await timer.activate(spec("CRON_TZ=Asia/Shanghai * * * * * *", user_event="hello"))
    await asyncio.sleep(2.6)
    await timer.close()
    assert len(rig.recorder.fires) >= 2
    fire = rig.recorder.fires[0]
    event = fire["payload"]
    assert set(event) == {"version", "time", "trigger_type", "trigger_name", "user_event"}
    assert event["version"] == "v1.0"
    assert event["trigger_type"] == "TIMER"
    assert event["trigger_name"] == "Timer-001"
    assert event["user_event"] == "hello"
    assert event["time"].endswith("+08:00")
    scheduled = datetime.fromisoformat(event["time"])
    assert scheduled.microsecond == 0  # a whole-second cron instant, not "now"
    assert fire["request_id"] == fire_request_id("trig-1", scheduled.timestamp())
    assert fire["trigger_type"] == "TIMER"
    times = [datetime.fromisoformat(f["payload"]["time"]).timestamp() for f in rig.recorder.fires]
    assert all(b - a == 1 for a, b in itertools.pairwise(times))


@pytest.mark.parametrize(("policy", "late_fired"), [("fire_once", 1), ("fire_all", 9), ("skip", 0)])
async def test_misfire_policy_after_downtime(rig: TimerRig, policy: str, late_fired: int) -> None:
    now = time.time()
    base = int(now)
    trigger = spec("@every 3s", created=base - 33)  # fires at base-30, base-27, ..., base-3, base
    await rig.store.set_timer_next(trigger.trigger_id, base - 30)  # nothing ran since base-30
    timer = rig.connector(misfire_policy=policy, catchup_window=300)
    await timer.start()
    await timer.activate(trigger)
    await asyncio.sleep(0.8)
    await timer.close()
    fired = [datetime.fromisoformat(f["payload"]["time"]).timestamp() for f in rig.recorder.fires]
    late = [t for t in fired if t < now - timer.misfire_threshold]
    on_time = [t for t in fired if now - timer.misfire_threshold <= t <= now]
    assert len(late) == late_fired
    assert on_time == [base - 3, base]  # on-time fires always fire
    if policy == "fire_once":
        assert late == [base - 6]  # the newest missed time stands for all of them
    assert timer.status("trig-1")["missed"] == 9 - late_fired
    _, nxt = await rig.store.get_timer_state("trig-1")
    assert nxt is not None and nxt > now


async def test_misses_older_than_the_catchup_window_are_skipped(rig: TimerRig) -> None:
    trigger = spec("@every 10s", created=time.time() - 4000)
    await rig.store.set_timer_next(trigger.trigger_id, time.time() - 3600)
    timer = rig.connector(misfire_policy="fire_all", catchup_window=60)
    await timer.start()
    await timer.activate(trigger)
    await asyncio.sleep(0.8)
    await timer.close()
    assert 5 <= len(rig.recorder.fires) <= 7  # only the last minute's fires
    assert timer.status("trig-1")["missed"] >= 350


async def test_a_claimed_but_unsent_fire_is_resent_on_takeover(rig: TimerRig) -> None:
    trigger = spec("0 0 0 1 1 *")  # next fire far away
    scheduled = time.time() - 5
    rid = fire_request_id(trigger.trigger_id, scheduled)
    assert await rig.store.claim_timer_fire(trigger.trigger_id, scheduled, rid, "dead-node", None)
    timer = rig.connector()
    await timer.activate(trigger)
    await timer.start()
    await asyncio.sleep(0.5)
    await timer.close()
    assert [f["request_id"] for f in rig.recorder.fires] == [rid]


async def test_disabled_timer_stops_and_reenabling_does_not_replay(rig: TimerRig) -> None:
    timer = rig.connector()
    await timer.start()
    trigger = spec("* * * * * *")
    await timer.activate(trigger)
    await asyncio.sleep(1.3)
    await timer.deactivate(trigger.trigger_id)
    fired = len(rig.recorder.fires)
    assert fired >= 1
    await asyncio.sleep(2.2)
    assert len(rig.recorder.fires) == fired
    await timer.activate(trigger)
    await asyncio.sleep(1.2)
    await timer.close()
    assert fired + 1 <= len(rig.recorder.fires) <= fired + 2  # from now on, not the disabled seconds


async def test_restart_of_the_service_keeps_the_schedule(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", timer_misfire_policy="fire_all")
    async with running(settings) as harness:
        urn = await harness.create_function("tick", FN)
        async with harness.http.post(
            harness.fgs(f"/triggers/{urn}"),
            json={
                "trigger_type_code": "TIMER",
                "event_data": {"name": "tick", "schedule_type": "Cron", "schedule": "@every 1s"},
            },
        ) as resp:
            assert resp.status == 201
        await asyncio.sleep(2.5)
    down_from = time.time()
    await asyncio.sleep(3.0)
    down_to = time.time()
    async with running(make_settings(tmp_path / "data", timer_misfire_policy="fire_all")) as harness:
        await asyncio.sleep(2.5)
        records, _ = await harness.service.store.list_records(_query(harness, urn))
        scheduled = sorted(datetime.fromisoformat(r.source["scheduled_time"]).timestamp() for r in records)
        assert all(r.status.value == "SUCCESS" for r in records if r.end_time and r.end_time < time.time() - 1)
    gaps = [b - a for a, b in itertools.pairwise(scheduled)]
    assert gaps and max(gaps) <= 1.0 + 1e-6, gaps  # every second covered, including the downtime
    assert any(down_from < s < down_to for s in scheduled)
    assert len(scheduled) == len(set(scheduled))


def _query(harness: Harness, urn: str) -> Any:
    from invoker.records import RecordQuery

    return RecordQuery(function_urn=urn, limit=500)


async def test_two_processes_fire_each_instant_exactly_once(tmp_path: Path) -> None:
    db_path = tmp_path / "shared.db"
    log_path = tmp_path / "fires.log"
    db = Database(db_path)
    await db.open()
    await SQLiteStore(db).start()
    await db.close()
    created = str(int(time.time()) - 1)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.support.timer_node", str(db_path), str(log_path), node, "trig-x",
             created, "*/1 * * * * *"],
            stdout=subprocess.PIPE, text=True, env=env,
        )
        for node in ("node-a", "node-b")
    ]  # fmt: skip

    def fires_by(node: str | None = None) -> int:
        if not log_path.exists():
            return 0
        return sum(1 for line in log_path.read_text().splitlines() if node is None or line.startswith(node + " "))

    async def until(predicate: Any, timeout: float = 30.0) -> None:  # slow machines start processes slowly
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, log_path.read_text() if log_path.exists() else "no fires"
            await asyncio.sleep(0.1)

    try:
        await until(lambda: fires_by() >= 3)
        first_leader = log_path.read_text().split()[0]
        survivor = "node-b" if first_leader == "node-a" else "node-a"
        victim = procs[0] if first_leader == "node-a" else procs[1]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=5)
        await until(lambda: fires_by(survivor) >= 3)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=5)
    entries = [line.split() for line in log_path.read_text().splitlines()]
    nodes = Counter(node for node, _, _ in entries)
    assert set(nodes) == {"node-a", "node-b"}, nodes  # the survivor took over
    by_instant: dict[float, list[tuple[str, str]]] = {}
    for node, scheduled, request_id in entries:
        by_instant.setdefault(datetime.fromisoformat(scheduled).timestamp(), []).append((node, request_id))
    # An instant may be sent twice only when the leader died after sending it but before
    # its record existed: the next leader re-sends the *same request id* (the invoker
    # dedups by it). Anything else would be a double fire.
    resent = {t: fires for t, fires in by_instant.items() if len(fires) > 1}
    for instant, fires in resent.items():
        assert len(fires) == 2 and fires[0][1] == fires[1][1], f"fired twice at {instant}: {fires}"
        assert [n for n, _ in fires] == [first_leader, survivor], f"double fire at {instant}: {fires}"
    assert len(resent) <= 1, f"re-sent {len(resent)} instants; only the one in flight at the kill may be"
    ordered = sorted(by_instant)
    missing = [b - a for a, b in itertools.pairwise(ordered) if b - a > 1]
    assert not missing, f"gaps in the schedule: {missing}"  # fire_all covers the takeover gap
