"""LTS log groups/streams and LTS triggers against the real Redis on this machine and a real service.

Covered: the group/stream/report/query API and its precise errors; the documented event, exactly;
batches closed by accumulated size (75 KB of raw message) or by time; a log over 75 KB split into
75 KB events; the best-practice acceptance scenario (a function keeps the WRN/WARN/ERR/ERROR lines
and reports them to another log stream over HTTP); a poison batch; resuming after a restart.

Every test keeps its Redis keys under a prefix of its own and deletes them afterwards. Nothing
asserts on timing: waits poll for a condition until a deadline.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from connectors.redis_streams import StreamBackend
from schemas.events.lts import LTSEvent
from tests.integration.conftest import PROJECT, TOKEN, Harness, running
from tests.support.recording import read_jsonl
from tests.support.streams import REDIS, redis_prefix_fixture, streams_settings
from tests.support.waiting import bounded_waits

pytestmark = pytest.mark.integration

WAIT = 40.0
wait_for, wait_until = bounded_waits(WAIT, interval=0.05)
CODE = "LTS"
LIMIT = 75 * 1024

# Appends each event, decoded, as one JSON line to user_data "out" once it is done; fails on a log
# containing POISON; one containing BLOCK first waits (at most 8 s) for the file user_data "gate".
RECORDER = """
import base64, json, os, time
def handler(event, context):
    payload = json.loads(base64.b64decode(event["lts"]["data"]))
    if any("BLOCK" in log["message"] for log in payload["logs"]):
        deadline = time.time() + 8
        while not os.path.exists(context.getUserData("gate")) and time.time() < deadline:
            time.sleep(0.05)
    fd = os.open(context.getUserData("out"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (json.dumps({"event": event, "payload": payload}) + "\\n").encode())
    os.close(fd)
    if any("POISON" in log["message"] for log in payload["logs"]):
        raise ValueError("poison log")
    return "ok"
"""

# Best practice ch. 4/14: keep the alarm lines and write them to another log stream.
FILTER = """
import base64, json, time, urllib.request
KEYWORDS = ("WRN", "WARN", "ERR", "ERROR")
def handler(event, context):
    payload = json.loads(base64.b64decode(event["lts"]["data"]))
    alarms = [log["message"] for log in payload["logs"] if any(k in log["message"] for k in KEYWORDS)]
    if not alarms:
        return "nothing to keep"
    body = {"log_time_ns": time.time_ns(), "contents": alarms, "labels": {"source": payload["log_topic_id"]}}
    request = urllib.request.Request(
        context.getUserData("target_url"),
        data=json.dumps(body).encode(),
        headers={"X-Auth-Token": context.getUserData("token"), "Content-Type": "application/json;charset=UTF-8"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())["errorMessage"]
"""


# -- helpers ---------------------------------------------------------------------------------------------


prefix = redis_prefix_fixture("lts")


def messages(path: Path) -> list[str]:
    return [log["message"] for line in read_jsonl(path) for log in line["payload"]["logs"]]


def raw_size(payload: dict[str, Any]) -> int:
    return len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())


async def create_group(h: Harness, name: str, ttl: int = 7) -> str:
    async with h.http.post(f"/v2/{PROJECT}/groups", json={"log_group_name": name, "ttl_in_days": ttl}) as resp:
        body = await resp.json()
        assert resp.status == 201, body
        return str(body["log_group_id"])


async def create_stream(h: Harness, group_id: str, name: str) -> str:
    async with h.http.post(f"/v2/{PROJECT}/groups/{group_id}/streams", json={"log_stream_name": name}) as resp:
        body = await resp.json()
        assert resp.status == 201, body
        return str(body["log_stream_id"])


def report_path(group_id: str, stream_id: str) -> str:
    return f"/v2/{PROJECT}/lts/groups/{group_id}/streams/{stream_id}/tenant/contents"


async def report(h: Harness, group_id: str, stream_id: str, lines: list[str], **labels: str) -> None:
    body = {"log_time_ns": time.time_ns(), "contents": lines, "labels": labels}
    async with h.http.post(report_path(group_id, stream_id), json=body) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
        assert answer == {"errorCode": "SVCSTG.ALS.200.200", "errorMessage": "Report success.", "result": None}


async def query(h: Harness, group_id: str, stream_id: str, **extra: Any) -> list[dict[str, Any]]:
    body = {"start_time": 0, "end_time": int(time.time() * 1000) + 60_000, "limit": 5000, **extra}
    async with h.http.post(f"/v2/{PROJECT}/groups/{group_id}/streams/{stream_id}/content/query", json=body) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
        return list(answer["logs"])


async def trigger(h: Harness, urn: str, group_id: str, stream_id: str, **extra: Any) -> str:
    """An LTS trigger of ``urn`` on a log stream (asserting 201): its id."""
    data = {"log_group_id": group_id, "log_topic_id": stream_id, **extra}
    return str((await h.add_trigger(urn, CODE, data))["trigger_id"])


async def wait_caught_up(h: Harness, urn: str, trigger_id: str) -> None:
    """Until the trigger's committed position is the newest log of its stream."""

    async def caught_up() -> bool:
        current = await h.trigger_state(urn, CODE, trigger_id)
        shards = current.get("shards") or [{}]
        return (
            bool(shards[0].get("committed"))
            and shards[0]["committed"] == shards[0].get("read_to")
            and not (shards[0]["in_flight"])
        )

    await wait_for(caught_up, "the trigger's position at its last batch")


async def recorder(h: Harness, tmp_path: Path, name: str) -> tuple[str, Path]:
    """RECORDER as function ``name`` (gate file ``tmp_path/<name>.gate``): its URN and output file."""
    return await h.create_recorder(name, RECORDER, tmp_path, "gate")


async def triggered_stream(
    h: Harness, tmp_path: Path, name: str, stream: str = "s", **extra: Any
) -> tuple[str, str, str, Path, str]:
    """Log group "g", its log stream ``stream``, and an LTS trigger (``extra`` in its event_data) on it for
    RECORDER as function ``name``: (group id, stream id, function URN, output file, trigger id)."""
    group_id = await create_group(h, "g")
    stream_id = await create_stream(h, group_id, stream)
    urn, out = await recorder(h, tmp_path, name)
    return group_id, stream_id, urn, out, await trigger(h, urn, group_id, stream_id, **extra)


async def lts_keys(prefix: str) -> list[bytes]:
    backend = StreamBackend(REDIS, prefix)
    try:
        return [k async for k in backend.redis.scan_iter(match=f"{prefix}:lts:*")]
    finally:
        await backend.close()


# -- tests -----------------------------------------------------------------------------------------------


async def test_groups_streams_reports_queries_and_their_precise_errors(tmp_path: Path, prefix: str) -> None:
    async with running(streams_settings(tmp_path, prefix)) as h:
        group_id = await create_group(h, "apps", ttl=3)
        async with h.http.post(f"/v2/{PROJECT}/groups", json={"log_group_name": "apps"}) as resp:
            assert resp.status == 409 and "already exists" in (await resp.json())["error_msg"]
        for body, words in (
            ({"log_group_name": "a b"}, "log_group_name"),
            ({"log_group_name": "x", "ttl_in_days": 0}, "ttl_in_days"),
            ({"log_group_name": "x", "ttl_in_days": 366}, "ttl_in_days"),
            ({}, "log_group_name"),
        ):
            async with h.http.post(f"/v2/{PROJECT}/groups", json=body) as resp:
                error = await resp.json()
                assert resp.status == 400 and words in error["error_msg"], (body, error)
        async with h.http.get(f"/v2/{PROJECT}/groups") as resp:
            [listed] = (await resp.json())["log_groups"]
        assert listed["log_group_id"] == group_id and listed["log_group_name"] == "apps"
        assert listed["ttl_in_days"] == 3

        stream_id = await create_stream(h, group_id, "web")
        async with h.http.post(f"/v2/{PROJECT}/groups/{group_id}/streams", json={"log_stream_name": "web"}) as resp:
            assert resp.status == 409
        missing_group = str(uuid.uuid4())
        async with h.http.post(f"/v2/{PROJECT}/groups/{missing_group}/streams", json={"log_stream_name": "w"}) as resp:
            assert resp.status == 404 and missing_group in (await resp.json())["error_msg"]
        async with h.http.get(f"/v2/{PROJECT}/groups/{group_id}/streams") as resp:
            [listed_stream] = (await resp.json())["log_streams"]
        assert listed_stream == {
            "creation_time": listed_stream["creation_time"],
            "log_stream_name": "web",
            "log_stream_id": stream_id,
            "ttl_in_days": 3,
            "filter_count": 0,
        }

        # both report forms, on both paths; query returns them oldest first with their labels
        await report(h, group_id, stream_id, ["first", "second"], hostName="web-1")
        timed = {"contents": [{"log_time_ns": "1700000000000000000", "log": "third"}], "labels": {"app": "shop"}}
        async with h.http.post(f"/v2/{PROJECT}/groups/{group_id}/streams/{stream_id}/tenant/contents", json=timed) as r:
            assert r.status == 200, await r.text()
        logs = await query(h, group_id, stream_id)
        assert [log["content"] for log in logs] == ["first", "second", "third"]
        assert logs[0]["labels"] == {"hostName": "web-1"} and logs[2]["labels"] == {"app": "shop"}
        assert logs[2]["time"] == 1700000000000
        assert await query(h, group_id, stream_id, end_time=0) == []

        bad_reports: list[tuple[dict[str, Any], int, str]] = [
            ({"contents": ["no time"]}, 400, "log_time_ns"),
            ({"log_time_ns": 1, "contents": []}, 400, "contents"),
            ({"log_time_ns": 1, "contents": ["x"] * 10001}, 400, "contents"),
            ({"log_time_ns": 1, "contents": ["x" * (1024 * 1024 + 1)]}, 413, "contents[0]"),
            ({"log_time_ns": 1, "contents": ["x"], "labels": {"k": "v" * 1025}}, 400, "labels"),
            ({"log_time_ns": -1, "contents": ["x"]}, 400, "log_time_ns"),
        ]
        for body, status, words in bad_reports:
            async with h.http.post(report_path(group_id, stream_id), json=body) as resp:
                error = await resp.json()
                assert resp.status == status and words in error["error_msg"], (status, error)
        async with h.http.post(
            report_path(group_id, str(uuid.uuid4())), json={"log_time_ns": 1, "contents": ["x"]}
        ) as r:
            assert r.status == 404
        assert len(await query(h, group_id, stream_id)) == 3  # refused reports stored nothing

        async with h.http.delete(f"/v2/{PROJECT}/groups/{group_id}/streams/{stream_id}") as resp:
            assert resp.status == 204
        async with h.http.delete(f"/v2/{PROJECT}/groups/{group_id}/streams/{stream_id}") as resp:
            assert resp.status == 404
        assert await lts_keys(prefix) == []  # the stream's logs went with it
        async with h.http.delete(f"/v2/{PROJECT}/groups/{group_id}") as resp:
            assert resp.status == 204
        async with h.http.get(f"/v2/{PROJECT}/groups") as resp:
            assert (await resp.json())["log_groups"] == []


async def test_reported_logs_reach_the_trigger_as_the_documented_event(tmp_path: Path, prefix: str) -> None:
    async with running(streams_settings(tmp_path, prefix)) as h:
        group_id = await create_group(h, "g")
        stream_id = await create_stream(h, group_id, "s")
        await report(h, group_id, stream_id, ["before the trigger"])
        urn, out = await recorder(h, tmp_path, "shape")
        trigger_id = await trigger(h, urn, group_id, stream_id, batch_window_ms=200)
        async with h.http.get(h.fgs(f"/triggers/{urn}/{CODE}/{trigger_id}")) as resp:
            shown = (await resp.json())["event_data"]
        assert shown["log_group_name"] == "g" and shown["log_topic_name"] == "s"

        started = time.time_ns()
        body = {
            "log_time_ns": started,
            "contents": ["2018-06-26/18:40:53 [INF] loaded", 'quote " and ✓', "third"],
            "labels": {"hostName": "ecs-testagent", "hostIP": "192.168.1.98", "pathFile": "/var/log/app.log"},
        }
        async with h.http.post(report_path(group_id, stream_id), json=body) as resp:
            assert resp.status == 200
        [line] = await wait_until(lambda: read_jsonl(out), "the event")
        event = line["event"]
        assert list(event) == ["lts"] and list(event["lts"]) == ["data"]
        raw = base64.b64decode(event["lts"]["data"])
        payload = json.loads(raw)
        assert list(payload) == ["logs", "owner", "log_group_id", "log_topic_id"]
        assert payload["owner"] == PROJECT
        assert payload["log_group_id"] == group_id and payload["log_topic_id"] == stream_id
        assert [log["message"] for log in payload["logs"]] == body["contents"]  # not the log from before
        for index, log in enumerate(payload["logs"]):
            assert list(log) == ["message", "time", "host_name", "ip", "path", "log_uid", "line_no"]
            assert log["time"] == (started + index) // 1_000_000
            assert (log["host_name"], log["ip"], log["path"]) == ("ecs-testagent", "192.168.1.98", "/var/log/app.log")
            assert str(uuid.UUID(log["log_uid"])) == log["log_uid"]
            assert log["line_no"] == index + 1
        assert raw == json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()  # compact UTF-8
        assert LTSEvent.model_validate(event).decoded().logs == payload["logs"]

        [record] = await h.invocations(urn)
        assert record["trigger_id"] == trigger_id and record["status"] == "SUCCESS"
        assert record["source"]["log_topic_id"] == stream_id and record["source"]["count"] == 3
        await wait_caught_up(h, urn, trigger_id)


async def test_batches_close_at_75_kb_of_raw_message_or_after_the_window(tmp_path: Path, prefix: str) -> None:
    async with running(streams_settings(tmp_path, prefix)) as h:
        # only size closes these batches
        group_id, big_stream, _, out, _ = await triggered_stream(h, tmp_path, "sized", "big", batch_window_ms=300_000)
        lines = [f"{i:03d} " + "x" * 9_000 for i in range(40)]  # ~9 KB each: 8 fit in 75 KB
        for chunk in range(0, 40, 10):
            await report(h, group_id, big_stream, lines[chunk : chunk + 10])

        await wait_until(lambda: len(read_jsonl(out)) >= 4, "the first four full events")
        # batches may run concurrently: put them in stream order by their first log's number
        full = sorted(read_jsonl(out), key=lambda e: e["payload"]["logs"][0]["message"])
        delivered = [log for e in full for log in e["payload"]["logs"]]
        assert [log["message"] for log in delivered] == lines[: len(delivered)]  # in order, none twice
        for e in full:
            size = raw_size(e["payload"])
            assert size <= LIMIT
            one_more = json.dumps(e["payload"]["logs"][0], ensure_ascii=False, separators=(",", ":"))
            assert size + 1 + len(one_more.encode()) > LIMIT  # it was closed because the next log did not fit
        assert len(delivered) < len(lines)  # the rest waits for more logs (or its 300 s)

        # time: two small logs on another stream are sent once the window passed
        small_stream = await create_stream(h, group_id, "small")
        urn2, out2 = await recorder(h, tmp_path, "timed")
        trigger_id = await trigger(h, urn2, group_id, small_stream, batch_window_ms=300)
        await report(h, group_id, small_stream, ["tick", "tock"])
        [timed] = await wait_until(lambda: read_jsonl(out2), "the event closed by time")
        assert [log["message"] for log in timed["payload"]["logs"]] == ["tick", "tock"]
        await wait_caught_up(h, urn2, trigger_id)


async def test_a_log_over_75_kb_is_split_into_75_kb_events(tmp_path: Path, prefix: str) -> None:
    async with running(streams_settings(tmp_path, prefix)) as h:
        group_id, stream_id, urn, out, trigger_id = await triggered_stream(h, tmp_path, "split", batch_window_ms=100)
        # 200,000 characters; quotes and ✓ make its JSON longer than its length, the end marks the order
        huge = ('ab"c✓' * 40_000)[:-3] + "END"
        await report(h, group_id, stream_id, ["before", huge, "after"])

        await wait_caught_up(h, urn, trigger_id)  # every batch finished (they may run concurrently)
        got = read_jsonl(out)
        small = [e for e in got if "split_index" not in e["payload"]["logs"][0]]
        assert sorted(log["message"] for e in small for log in e["payload"]["logs"]) == ["after", "before"]
        split = sorted((e for e in got if e not in small), key=lambda e: e["payload"]["logs"][0]["split_index"])
        assert len(split) >= 3 and all(len(e["payload"]["logs"]) == 1 for e in split)
        parts = [e["payload"]["logs"][0] for e in split]
        assert "".join(p["message"] for p in parts) == huge
        assert [p["split_index"] for p in parts] == list(range(len(parts)))
        assert {p["split_count"] for p in parts} == {len(parts)}
        assert len({p["log_uid"] for p in parts}) == 1  # pieces of one log
        for e in split:
            assert raw_size(e["payload"]) <= LIMIT
        assert raw_size(split[0]["payload"]) > LIMIT - 100  # pieces are filled up to the limit
        assert len(got) == len(split) + 2  # "before" and "after" were not merged into a piece
        assert (await h.trigger_state(urn, CODE, trigger_id))["split_logs"] == 1


async def test_best_practice_filters_alarm_lines_into_another_log_stream(tmp_path: Path, prefix: str) -> None:
    async with running(streams_settings(tmp_path, prefix)) as h:
        group_id = await create_group(h, "polo.guoying")
        source = await create_stream(h, group_id, "test-206")
        target = await create_stream(h, group_id, "test-1121")
        user_data = {"target_url": h.base_url + report_path(group_id, target), "token": TOKEN}
        urn = await h.create_function("lts_cleanse", FILTER, user_data=user_data)
        trigger_id = await trigger(h, urn, group_id, source, batch_window_ms=200)
        lines = [
            "2018-06-26/18:40:53 [INF] [config.go:72] Successfully loaded general configuration file",
            "2018-06-26/18:40:53 [WRN] [config.go:82] projectId is not consistent with metadata",
            "2018-06-26/18:40:54 [DBG] cache warmed",
            "2018-06-26/18:40:55 [ERROR] payment refused",
            "2018-06-26/18:40:56 WARN disk 91% full",
            "an error in lower case is not an alarm",
            "2018-06-26/18:40:57 [ERR] lost connection",
        ]
        await report(h, group_id, source, lines[:4])
        await report(h, group_id, source, lines[4:])
        wanted = [line for line in lines if any(k in line for k in ("WRN", "WARN", "ERR", "ERROR"))]
        assert len(wanted) == 4

        async def filtered() -> list[str] | None:
            kept = [log["content"] for log in await query(h, group_id, target)]
            return kept if len(kept) >= len(wanted) else None

        kept = await wait_for(filtered, "the alarm lines in the target stream")
        assert sorted(kept) == sorted(wanted)  # batches may run concurrently; each line once
        await wait_caught_up(h, urn, trigger_id)
        assert all(r["status"] == "SUCCESS" for r in await h.invocations(urn))
        assert len(await query(h, group_id, target)) == len(wanted)  # nothing more came


async def test_poison_batch_fails_after_its_retries_and_the_stream_moves_on(tmp_path: Path, prefix: str) -> None:
    async with running(streams_settings(tmp_path, prefix)) as h:
        group_id = await create_group(h, "g")
        stream_id = await create_stream(h, group_id, "s")
        urn, out = await recorder(h, tmp_path, "poisoned")
        await h.set_async_config(urn, {"max_async_retry_attempts": 1})
        trigger_id = await trigger(h, urn, group_id, stream_id, batch_window_ms=100)
        await report(h, group_id, stream_id, ["ok-1", "POISON-2"])
        [fail] = await wait_for(lambda: h.invocations(urn, status="FAIL"), "the FAIL record")
        assert fail["source"]["count"] == 2
        assert messages(out).count("POISON-2") == 2  # the first attempt and one retry
        await report(h, group_id, stream_id, ["ok-3"])
        await wait_until(lambda: "ok-3" in messages(out), "the log after the poison batch")
        await wait_caught_up(h, urn, trigger_id)
        assert (await h.trigger_state(urn, CODE, trigger_id))["finished"] == {"FAIL": 1, "SUCCESS": 1}


async def test_restart_reads_again_from_the_committed_position(tmp_path: Path, prefix: str) -> None:
    async with running(streams_settings(tmp_path, prefix)) as h:
        group_id, stream_id, urn, out, trigger_id = await triggered_stream(h, tmp_path, "resume", batch_window_ms=100)
        await report(h, group_id, stream_id, ["first"])
        await wait_until(lambda: messages(out) == ["first"], "the first batch")
        await wait_caught_up(h, urn, trigger_id)
        committed = (await h.trigger_state(urn, CODE, trigger_id))["shards"][0]["committed"]
        await report(h, group_id, stream_id, ["BLOCK-2"])

        async def running_block() -> bool:
            current = (await h.trigger_state(urn, CODE, trigger_id))["shards"][0]
            return bool(current["in_flight"])

        await wait_for(running_block, "the blocked batch handed over")
    # stopped with BLOCK-2 unfinished: its position stayed before it
    async with running(streams_settings(tmp_path, prefix)) as h:

        async def resumed() -> dict[str, Any] | None:
            shards = (await h.trigger_state(urn, CODE, trigger_id)).get("shards")
            return shards[0] if shards else None

        shard = await wait_for(resumed, "the trigger running again")
        assert shard["committed"] == committed
        await report(h, group_id, stream_id, ["after"])
        (tmp_path / "resume.gate").touch()
        await wait_until(lambda: "after" in messages(out), "the log reported after the restart")
        await wait_caught_up(h, urn, trigger_id)
        done = messages(out)
        assert done.count("first") == 1  # committed before the stop: not read again
        assert done.count("BLOCK-2") >= 1 and done.count("after") == 1
