"""GET /metrics end to end: the real service, scraped over HTTP and parsed as Prometheus text.

Counts after successful, failing and throttled invocations, duration statistics, a failed
destination delivery, a Kafka trigger's lag while its function cannot keep up and after, and a
lag that cannot be known (NaN, ``lag_known`` 0). Nothing waits on time: conditions are polled.
"""

from __future__ import annotations

import asyncio
import json
import math
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import TOKEN, Harness, free_port, make_settings, running
from tests.integration.test_kafka_trigger import create_topics, produce, short_group_timeouts, unique
from tests.support import waiting

pytestmark = pytest.mark.integration
__all__ = ["short_group_timeouts"]  # the Kafka tests' consumer tuning applies here too

wait_for = partial(waiting.wait_for, timeout=60.0)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# Fails when asked; waits for its gate file (user data "gate") when the event says so.
FUNCTION = """
import json, os, time
def handler(event, context):
    if isinstance(event, dict) and event.get("fail"):
        raise RuntimeError("asked to fail")
    messages = [m for r in event.get("records", []) for m in r.get("messages", [])] if isinstance(event, dict) else []
    if (isinstance(event, dict) and event.get("wait")) or any(m.startswith("WAIT") for m in messages):
        while not os.path.exists(context.getUserData("gate")):
            time.sleep(0.02)
    return "ok"
"""


async def scrape(h: Harness, **headers: str) -> Samples:
    async with aiohttp.ClientSession(base_url=h.base_url) as http, http.get("/metrics", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The one sample named ``name`` whose labels include ``labels`` (None if there is none)."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def fn(name: str) -> dict[str, str]:
    return {"package": "default", "function": name}


async def metric(h: Harness, name: str, **labels: str) -> float | None:
    return value(await scrape(h, **{"X-Auth-Token": TOKEN}), name, **labels)


async def test_metrics_need_the_token_in_either_header(harness: Harness) -> None:
    async with aiohttp.ClientSession(base_url=harness.base_url) as http:
        async with http.get("/metrics") as resp:
            assert resp.status == 401
            assert (await resp.json())["error_code"] == "FSS.0401"
        async with http.get("/metrics", headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 403
    await scrape(harness, Authorization=f"Bearer {TOKEN}")  # 200 (empty: nothing ran yet)
    await scrape(harness, **{"X-Auth-Token": TOKEN})


async def test_metrics_can_be_public(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path / "data", metrics_public=True)) as h:
        await scrape(h)  # 200 without a token
        async with aiohttp.ClientSession(base_url=h.base_url) as http, http.get(h.fgs("/functions")) as resp:
            assert resp.status == 401  # the rest of the API still needs it


async def test_function_counts_errors_throttles_and_durations(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path / "data", metrics_sample_s=0.2)) as h:
        urn, _ = await h.create_recorder("calc", FUNCTION, tmp_path, "gate", max_instance_num=1)
        for event in ({"n": 1}, {"n": 2}, {"fail": True}):
            async with h.http.post(h.fgs(f"/functions/{urn}/invocations"), json=event) as resp:
                assert resp.status == 200
        # Throttled: one sync call holds the only instance until the gate opens.
        holder = asyncio.ensure_future(_sync_status(h, urn, {"wait": True}))
        await wait_for(lambda: metric(h, "triggerbus_function_concurrency", **fn("calc")), "the held instance")
        async with h.http.post(h.fgs(f"/functions/{urn}/invocations"), json={}) as resp:
            assert resp.status == 429
        (tmp_path / "calc.gate").touch()
        assert await holder == 200
        # An async invocation that fails twice (retries 1) and ends FAIL.
        async with h.http.put(
            h.fgs(f"/functions/{urn}/async-invoke-config"), json={"max_async_retry_attempts": 1}
        ) as resp:
            assert resp.status == 200, await resp.text()
        request_id = await h.invoke_async(urn, {"fail": True})
        assert (await h.wait_terminal(urn, request_id))["status"] == "FAIL"

        s = await scrape(h, **{"X-Auth-Token": TOKEN})
        labels = fn("calc")
        assert value(s, "triggerbus_function_invocations_total", invoke_type="sync", **labels) == 4
        assert value(s, "triggerbus_function_invocations_total", invoke_type="async", **labels) == 2
        code_errors = {"kind": "function", "cause": "code_exception", **labels}
        assert value(s, "triggerbus_function_errors_total", invoke_type="sync", **code_errors) == 1
        assert value(s, "triggerbus_function_errors_total", invoke_type="async", **code_errors) == 2
        assert value(s, "triggerbus_function_errors_total", kind="system", **labels) is None
        assert value(s, "triggerbus_function_rejected_total", reason="concurrency_limit", **labels) == 1
        assert value(s, "triggerbus_async_retries_total", **labels) == 1
        assert value(s, "triggerbus_async_invocations_finished_total", status="FAIL", **labels) == 1
        assert value(s, "triggerbus_function_concurrency", **labels) == 0
        assert value(s, "triggerbus_function_duration_seconds_count", **labels) == 6
        stats = {
            stat: value(s, "triggerbus_function_duration_window_seconds", stat=stat, **labels)
            for stat in ("avg", "max", "min", "p50", "p80", "p95", "p99", "p99.9")
        }
        assert all(v is not None and v >= 0 for v in stats.values()), stats
        assert stats["min"] <= stats["p50"] <= stats["p99.9"] <= stats["max"]  # type: ignore[operator]
        # the async queue of the function is empty now, and known to be
        await wait_for(lambda: _equals(h, "triggerbus_async_queue_waiting", 0, **labels), "the sampled queue of calc")
        assert await metric(h, "triggerbus_async_queue_oldest_wait_age_seconds", **labels) == 0


async def test_failed_destination_delivery_is_counted(tmp_path: Path, s3_server: Any) -> None:
    settings = make_settings(
        tmp_path / "data",
        obs_endpoint=s3_server.endpoint,
        obs_access_key=s3_server.access_key,
        obs_secret_key=s3_server.secret_key,
    )
    async with running(settings) as h:
        urn = await h.create_function("dest", FUNCTION)
        obs = {"destination": "OBS", "param": json.dumps({"bucket": "no-such-bucket-for-metrics"})}
        async with h.http.put(
            h.fgs(f"/functions/{urn}/async-invoke-config"), json={"destination_config": {"on_success": obs}}
        ) as resp:
            assert resp.status == 200, await resp.text()
        await h.invoke_async(urn, {"n": 1})
        labels = {"kind": "OBS", "outcome": "retrying", **fn("dest")}
        await wait_for(lambda: metric(h, "triggerbus_destination_deliveries_total", **labels), "a failed delivery")
        assert await metric(h, "triggerbus_destination_deliveries_total", kind="OBS", outcome="delivered") is None


async def test_kafka_trigger_lag_while_behind_and_after(tmp_path: Path, kafka_bootstrap: str) -> None:
    topic = unique("lag")
    await create_topics(kafka_bootstrap, [topic])
    async with running(make_settings(tmp_path / "data", metrics_sample_s=0.2)) as h:
        urn, _ = await h.create_recorder("lagging", FUNCTION, tmp_path, "gate")
        data = {"kafka_connect_address": kafka_bootstrap, "topic_ids": [topic], "batch_size": 1, "batch_window_ms": 0}
        trigger_id = await h.add_active_trigger(urn, "OPENSOURCEKAFKA", data)
        labels = {"trigger_id": trigger_id, "trigger_type": "OPENSOURCEKAFKA", **fn("lagging")}
        await wait_for(lambda: _equals(h, "triggerbus_trigger_lag_records", 0, **labels), "a consuming trigger")
        # The first record holds its batch until the gate opens: nothing after it can be committed.
        await produce(kafka_bootstrap, topic, [b"WAIT-0", b"m1", b"m2"], partition=0)
        await wait_for(lambda: _equals(h, "triggerbus_trigger_lag_records", 3, **labels), "a lag of 3 records")
        # The lag counts from the broker's end offset at once; the reads, and m1/m2 finishing, follow.
        await wait_for(lambda: _equals(h, "triggerbus_trigger_events_total", 3, **labels), "3 records read")
        await wait_for(lambda: _equals(h, "triggerbus_async_queue_running", 1, **fn("lagging")), "only WAIT-0 running")
        s = await scrape(h, **{"X-Auth-Token": TOKEN})
        assert value(s, "triggerbus_trigger_lag_known", measure="records", **labels) == 1
        assert value(s, "triggerbus_trigger_events_total", **labels) == 3
        assert value(s, "triggerbus_trigger_batches_total", **labels) == 3
        assert value(s, "triggerbus_async_queue_running", **fn("lagging")) == 1
        state = await h.trigger_state(urn, "OPENSOURCEKAFKA", trigger_id)
        assert state["lag"]["records"] == 3
        (tmp_path / "lagging.gate").touch()
        await wait_for(lambda: _equals(h, "triggerbus_trigger_lag_records", 0, **labels), "the lag back at 0")
        assert await metric(h, "triggerbus_trigger_lag_seconds", **labels) == 0


async def test_unknown_lag_is_nan_and_not_known(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path / "data", metrics_sample_s=0.2)) as h:
        urn = await h.create_function("nobroker", FUNCTION)
        data = {"kafka_connect_address": f"127.0.0.1:{free_port()}", "topic_ids": ["t"], "batch_size": 1}
        trigger_id = await h.add_active_trigger(urn, "OPENSOURCEKAFKA", data)
        labels = {"trigger_id": trigger_id, "trigger_type": "OPENSOURCEKAFKA", **fn("nobroker")}

        async def sampled() -> Samples | None:
            s = await scrape(h, **{"X-Auth-Token": TOKEN})
            return s if value(s, "triggerbus_trigger_lag_known", measure="records", **labels) is not None else None

        s = await wait_for(sampled, "a lag sample of the trigger")
        for name in ("lag_records", "lag_seconds", "oldest_unprocessed_age_seconds"):
            assert math.isnan(value(s, f"triggerbus_trigger_{name}", **labels))  # type: ignore[arg-type]
        for measure in ("records", "seconds", "oldest_age_s"):
            assert value(s, "triggerbus_trigger_lag_known", measure=measure, **labels) == 0
        state = await h.trigger_state(urn, "OPENSOURCEKAFKA", trigger_id)
        assert state["lag"] == {"records": None, "seconds": None, "oldest_age_s": None}


async def _equals(h: Harness, name: str, expected: float, **labels: str) -> bool:
    return await metric(h, name, **labels) == expected


async def _sync_status(h: Harness, urn: str, event: dict[str, Any]) -> int:
    async with h.http.post(h.fgs(f"/functions/{urn}/invocations"), json=event) as resp:
        await resp.read()
        return resp.status
