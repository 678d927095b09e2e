"""SIGKILL the service while async invocations flow; restart; nothing accepted is lost."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from tests.support.service import ServiceProcess, wait_all_finished

pytestmark = pytest.mark.integration

# Appends its request id to a file shared by all invocations: the count of lines per id
# is how many times the function really ran.
WORKER = """
import os, time
def handler(event, context):
    time.sleep(event.get("sleep", 0.02))
    fd = os.open(event["ledger"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (context.getRequestID() + "\\n").encode())
    os.close(fd)
    return {"ok": True}
"""


async def test_sigkill_mid_stream_loses_no_accepted_invocation(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ledger = tmp_path / "ledger.txt"
    accepted: list[str] = []
    with ServiceProcess(data_dir, tmp_path / "service.log", TRIGGERBUS_RETRY_BASE_S="0.1") as service:
        await service.wait_healthy(timeout=20)
        async with service.harness() as h:
            urn = await h.create_function("worker", WORKER, max_instance_num=4)

            async def submit(i: int) -> None:
                event = {"ledger": str(ledger), "i": i}
                try:
                    async with h.http.post(h.fgs(f"/functions/{urn}/invocations-async"), json=event) as resp:
                        if resp.status == 202:
                            accepted.append((await resp.json())["request_id"])
                except aiohttp.ClientError:
                    pass  # in flight when the process died: never acknowledged

            producers = [asyncio.create_task(submit(i)) for i in range(400)]
            while len(accepted) < 250:
                await asyncio.sleep(0.01)
            ran_before = len(ledger.read_text().split()) if ledger.exists() else 0
            service.kill()
            await asyncio.gather(*producers, return_exceptions=True)
        assert ran_before < len(accepted), "the kill came too late to interrupt anything"

        await service.start_healthy(timeout=20)
        async with service.harness() as h:

            def record_url(rid: str) -> str:
                return h.fgs(f"/functions/{urn}/async-invocations/{rid}")

            statuses, pending = await wait_all_finished(h.http, record_url, accepted, timeout=60, interval=0.2)
            for rid in list(pending)[:5]:
                async with h.http.get(record_url(rid)) as resp:
                    print("PENDING", resp.status, (await resp.text())[:600])
        if pending:
            print(service.log_tail())
        assert not pending, f"{len(pending)} accepted invocations never finished"
        assert set(statuses.values()) == {"SUCCESS"}
        runs = ledger.read_text().split()
        never_ran = set(accepted) - set(runs)
        assert not never_ran, f"{len(never_ran)} accepted invocations never ran"
        duplicates = len(runs) - len(set(runs))
        # At-least-once: only the (at most 4) invocations running at the kill may run twice.
        assert duplicates <= 4, f"{duplicates} duplicate runs"
        print(json.dumps({"accepted": len(accepted), "ran_before_kill": ran_before, "duplicates": duplicates}))
        assert service.terminate(timeout=20) == 0
        # Worker home directories of the killed process were cleared at restart, and the
        # clean stop removed the rest.
        assert list((data_dir / "workers").iterdir()) == []
