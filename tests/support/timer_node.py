"""One timer-scheduler process for the two-process lease test.

Usage: python -m tests.support.timer_node DB_PATH LOG_PATH NODE_ID TRIGGER_ID CREATED SCHEDULE

It shares the SQLite store with its peers and appends every fire it enqueues to
LOG_PATH as "node scheduled request_id" (O_APPEND writes are atomic per line).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from bus.sqlitedb import Database
from connectors.base import TriggerSpec
from connectors.timer import TimerConnector
from invoker.completion import CompletionHub
from invoker.records import Record
from invoker.runtime.base import InvocationResult
from tests.support.connectors import node_context
from triggerbus.store.sqlite import SQLiteStore


class RecordingInvocations:
    def __init__(self, store: SQLiteStore, log_path: Path, node: str) -> None:
        self.store = store
        self.fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.node = node

    async def invoke_sync(self, function_urn: str, payload: bytes, **_: Any) -> InvocationResult:
        raise NotImplementedError

    async def enqueue(self, function_urn: str, payload: str, **kw: Any) -> str:
        request_id = str(kw["request_id"])
        scheduled = kw["source"]["scheduled_time"]
        os.write(self.fd, f"{self.node} {scheduled} {request_id}\n".encode())
        await self.store.insert_record(Record(request_id=request_id, function_urn=function_urn))
        return request_id


async def main() -> None:
    db_path, log_path, node, trigger_id, created, schedule = sys.argv[1:7]
    db = Database(Path(db_path))
    await db.open()
    store = SQLiteStore(db)
    await store.start()
    ctx = node_context(store, node, CompletionHub(), invocations=RecordingInvocations(store, Path(log_path), node))
    timer = TimerConnector(ctx, lease_ttl=1.0, misfire_policy="fire_all", catchup_window=60.0)
    await timer.start()
    await timer.activate(
        TriggerSpec(
            trigger_id=trigger_id,
            function_urn="urn:fss:local:p:function:default:f:latest",
            trigger_type="TIMER",
            event_data={"name": "t", "schedule_type": "Cron", "schedule": schedule},
            created=float(created),
        )
    )
    print("ready", flush=True)
    while True:
        await asyncio.sleep(0.2)
        print(f"leader={int(timer.is_leader)} t={time.time():.3f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
