"""Distributed mode: two service processes on one Kafka bus and one MongoDB store.

One process is SIGKILLed while async invocations flow; the other takes over its
partitions and every accepted invocation still ends SUCCESS.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
from cryptography.fernet import Fernet

from tests.integration.conftest import PROJECT, TOKEN
from tests.support.service import ServiceProcess, wait_all_finished
from tests.support.zips import python_function

pytestmark = pytest.mark.integration

WORKER = """
import os, time
def handler(event, context):
    time.sleep(0.02)
    fd = os.open(event["ledger"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (context.getRequestID() + " " + os.environ.get("RUNTIME_PROJECT_ID", "") + "\\n").encode())
    os.close(fd)
    return {"ok": True}
"""


def service(tmp_path: Path, name: str, bus: str, store: str, app_id: str, secret: str) -> ServiceProcess:
    """A (not yet started) service process ``name`` of the shared Kafka bus and MongoDB store."""
    return ServiceProcess(
        tmp_path / f"data-{name}",
        tmp_path / f"{name}.log",
        "--bus",
        bus,
        "--store",
        store,
        TRIGGERBUS_SECRET_KEY=secret,
        TRIGGERBUS_KAFKA_APP_ID=app_id,
        TRIGGERBUS_MONGO_DATABASE=app_id,
        TRIGGERBUS_KAFKA_SESSION_TIMEOUT_S="6",
        TRIGGERBUS_KAFKA_FETCH_MAX_WAIT_MS="50",
        TRIGGERBUS_RETRY_BASE_S="0.2",
    )


async def start_all(services: list[ServiceProcess]) -> None:
    """Start every process, then wait until each is healthy (they join one Kafka group: slow)."""
    for s in services:
        s.start()
    for s in services:
        await s.wait_healthy(timeout=90, interval=0.2)


async def test_two_processes_share_work_and_survive_a_sigkill(
    kafka_bootstrap: str, mongo_uri: str, tmp_path: Path
) -> None:
    app_id = f"tbd{uuid.uuid4().hex[:8]}"
    secret = Fernet.generate_key().decode()
    bus, ledger = f"kafka://{kafka_bootstrap}", tmp_path / "ledger.txt"
    services = [service(tmp_path, name, bus, mongo_uri, app_id, secret) for name in ("a", "b")]
    bases = [s.base for s in services]
    logs = [s.log for s in services]
    urn = f"urn:fss:local:{PROJECT}:function:default:worker:latest"
    try:
        await start_all(services)
        accepted: list[str] = []
        async with aiohttp.ClientSession(headers={"X-Auth-Token": TOKEN}) as http:
            body = python_function("worker", WORKER, max_instance_num=4)
            async with http.post(f"{bases[0]}/v2/{PROJECT}/fgs/functions", json=body) as resp:
                assert resp.status == 200, await resp.text()

            async def submit(i: int) -> None:
                base = bases[i % 2]  # both processes accept
                try:
                    async with http.post(
                        f"{base}/v2/{PROJECT}/fgs/functions/{urn}/invocations-async",
                        json={"ledger": str(ledger), "i": i},
                    ) as resp:
                        if resp.status == 202:
                            accepted.append((await resp.json())["request_id"])
                except aiohttp.ClientError:
                    pass  # process B died mid-request: never acknowledged

            # Keep submitting until both processes have run work, then kill B mid-stream.
            submitted = 0
            deadline = time.monotonic() + 120
            while True:
                await asyncio.gather(*(submit(submitted + i) for i in range(20)))
                submitted += 20
                runs = ledger.read_text().split("\n") if ledger.exists() else []
                if len(runs) > 40 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            producers = [asyncio.create_task(submit(submitted + i)) for i in range(200)]
            await asyncio.sleep(0.3)
            services[1].kill()
            await asyncio.gather(*producers)
            assert accepted

            def record_url(rid: str) -> str:
                return f"{services[0].fgs}/functions/{urn}/async-invocations/{rid}"

            statuses, pending = await wait_all_finished(http, record_url, accepted, timeout=180, interval=0.5)
            failed = [rid for rid, status in statuses.items() if status != "SUCCESS"]
            reasons = [await record_of(http, bases[0], urn, rid) for rid in failed[:3]]
        assert not pending, f"{len(pending)} of {len(accepted)} accepted invocations never finished"
        assert not failed, (f"{len(failed)} invocations did not succeed, e.g. {reasons}", logs[0].read_text()[-4000:])
        runs = [line.split()[0] for line in ledger.read_text().splitlines() if line]
        assert set(accepted) <= set(runs), "an accepted invocation never ran"
        duplicates = len(runs) - len(set(runs))
        print(json.dumps({"accepted": len(accepted), "runs": len(runs), "duplicates": duplicates}))
    finally:
        for s in services:
            s.stop(timeout=30)


COLLECTOR = """
import os
def handler(event, context):
    fd = os.open(context.getUserData("out"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for record in event["records"]:
        for message in record["messages"]:
            os.write(fd, (message + "\\n").encode())
    os.close(fd)
    return None
"""


async def record_of(http: aiohttp.ClientSession, base: str, urn: str, request_id: str) -> dict[str, object]:
    async with http.get(f"{base}/v2/{PROJECT}/fgs/functions/{urn}/async-invocations/{request_id}") as resp:
        return dict(await resp.json())


async def test_a_kafka_trigger_spread_over_two_processes_survives_a_sigkill(
    kafka_bootstrap: str, mongo_uri: str, tmp_path: Path
) -> None:
    """Both processes consume the trigger's partitions; whichever runs a batch, the process
    whose consumer read it learns it finished (broadcast completions) and commits. Then one
    process is SIGKILLed mid-stream: the other takes over its partitions, every message
    reaches the function, every batch ends SUCCESS and the offsets reach the end."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    app_id = f"tbk{uuid.uuid4().hex[:8]}"
    topic = f"orders-{uuid.uuid4().hex[:6]}"
    secret = Fernet.generate_key().decode()
    out = tmp_path / "messages.txt"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    await admin.close()

    bus = f"kafka://{kafka_bootstrap}"
    services = [service(tmp_path, name, bus, mongo_uri, app_id, secret) for name in ("a", "b")]
    bases = [s.base for s in services]
    logs = [s.log for s in services]
    urn = f"urn:fss:local:{PROJECT}:function:default:collector:latest"
    try:
        await start_all(services)
        async with aiohttp.ClientSession(headers={"X-Auth-Token": TOKEN}) as http:
            body = python_function("collector", COLLECTOR, user_data={"out": str(out)})
            async with http.post(f"{bases[0]}/v2/{PROJECT}/fgs/functions", json=body) as resp:
                assert resp.status == 200, await resp.text()
            trigger_body = {
                "trigger_type_code": "OPENSOURCEKAFKA",
                "event_data": {
                    "kafka_connect_address": kafka_bootstrap,
                    "topic_ids": [topic],
                    "batch_size": 10,
                    "batch_window_ms": 100,
                    "start_position": "EARLIEST",
                },
            }
            async with http.post(f"{bases[0]}/v2/{PROJECT}/fgs/triggers/{urn}", json=trigger_body) as resp:
                trigger = await resp.json()
                assert resp.status == 201, trigger
            one = f"/v2/{PROJECT}/fgs/triggers/{urn}/OPENSOURCEKAFKA/{trigger['trigger_id']}"
            async with http.put(bases[0] + one, json={"trigger_status": "ACTIVE"}) as resp:
                assert resp.status == 200, await resp.text()

            async def assigned(base: str) -> set[int]:
                async with http.get(base + one) as resp:
                    state = (await resp.json()).get("state", {})
                return {p["partition"] for p in state.get("partitions", [])}

            # Both processes run the trigger (the second one via reconciliation with the store)
            # and its consumer group splits the 4 partitions between them.
            deadline = time.monotonic() + 120
            while True:
                a, b = await assigned(bases[0]), await assigned(bases[1])
                if a and b and a | b == {0, 1, 2, 3} and not a & b:
                    break
                assert time.monotonic() < deadline, f"partitions never split: {a} / {b}"
                await asyncio.sleep(1.0)

            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
            await producer.start()
            ends: dict[int, int] = {}
            total = 400
            for i in range(total):
                meta = await producer.send_and_wait(topic, f"m{i}".encode(), key=f"k{i}".encode())
                ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
                if i == total // 2:
                    # half-way: B has work in flight; kill it
                    while not out.exists() or len(out.read_text().split()) < 50:
                        await asyncio.sleep(0.1)
                    services[1].kill()
            await producer.stop()

            deadline = time.monotonic() + 180
            while not out.exists() or len(set(out.read_text().split())) < total:
                if time.monotonic() > deadline:
                    missing = {f"m{i}" for i in range(total)} - set(out.read_text().split())
                    async with http.get(bases[0] + one) as resp:
                        state = (await resp.json()).get("state")
                    raise AssertionError(
                        f"{len(missing)} messages never reached the function (e.g. {sorted(missing)[:5]}); "
                        f"state: {state}\nlog A: {logs[0].read_text()[-6000:]}"
                    )
                await asyncio.sleep(0.5)
            seen = out.read_text().split()
            assert set(seen) == {f"m{i}" for i in range(total)}
            print(json.dumps({"messages": total, "delivered": len(seen), "duplicates": len(seen) - total}))

            # Committed offsets reach the end of every partition, the killed process's share too.
            while True:
                async with http.get(bases[0] + one + "/checkpoint") as resp:
                    checkpoint = await resp.json()
                committed = {p["partition"]: p["committed"] for p in checkpoint["partitions"]}
                if all(committed.get(p) == end for p, end in ends.items()):
                    break
                if time.monotonic() > deadline:
                    async with http.get(bases[0] + one) as resp:
                        state = (await resp.json()).get("state")
                    stuck = []
                    for part in (state or {}).get("partitions", []):
                        if part.get("oldest_in_flight") is not None:
                            async with http.get(
                                f"{bases[0]}/v2/{PROJECT}/fgs/functions/{urn}/async-invocations",
                                params={
                                    "source.partition": part["partition"],
                                    "source.offset": part["oldest_in_flight"],
                                },
                            ) as resp:
                                stuck.append((part["partition"], part["oldest_in_flight"], await resp.json()))
                    tail = logs[0].read_text()[-4000:]
                    raise AssertionError(
                        f"commits stuck at {committed}, ends {ends}; state: {state}; stuck: {stuck}\nlog A: {tail}"
                    )
                await asyncio.sleep(0.5)
            # and every batch (including those re-run after the takeover) ended SUCCESS
            while True:
                async with http.get(
                    f"{bases[0]}/v2/{PROJECT}/fgs/functions/{urn}/async-invocations", params={"limit": 500}
                ) as resp:
                    records = (await resp.json())["invocations"]
                statuses = {r["status"] for r in records}
                if statuses == {"SUCCESS"}:
                    break
                bad = [r for r in records if r["status"] not in ("SUCCESS", "WAIT", "RUNNING")]
                assert not bad, (f"{len(bad)} batches did not succeed, e.g. {bad[:3]}", logs[0].read_text()[-4000:])
                assert time.monotonic() < deadline, statuses
                await asyncio.sleep(0.5)
    finally:
        for s in services:
            s.stop(timeout=30)
