"""Hostile input against every route of a running service, and against the connectors' parsers.

Every route of the app (walked from ``app.router.resources()``, the console sub-app included) gets
its path filled with ids of objects this test created and with hostile values, and is sent
malformed, oversized, wrongly typed and hostile bodies, queries and headers: first a fixed list,
then hypothesis-generated ones. The answer must come within a bound (hang detector), never be a
5xx, and every 4xx must be an FSS error body (the console answers HTML pages). Afterwards the
store is intact: what was created before is still readable, ``PRAGMA integrity_check`` is ok and
/health answers. Trigger configurations of every ``trigger_type_code`` get mutated ``event_data``
the same way. The parsers of the connectors get hypothesis binary/text/recursive-JSON input and
may raise only their documented error types. Totals are printed (``-s``) and recorded in
docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from connectors import cts, iotda, kafka, obs, rabbitmq, redis_streams
from connectors.schedule import ScheduleError, parse_schedule
from schemas.errors import FSSError
from schemas.events.apig import APIGResponse
from schemas.events.dds import MongoChange
from schemas.events.eventgrid import binary_cloudevent, validate_cloudevent
from schemas.functions import parse_user_data
from schemas.triggers import parse_event_data
from schemas.urn import FunctionUrn
from tests.integration.conftest import PROJECT, TOKEN, Harness, running
from tests.integration.test_console_http import login
from tests.support.routes import (
    HOSTILE_SEGMENTS,
    Answer,
    Route,
    app_routes,
    assert_fss_error,
    check_answer,
    send,
    sqlite_integrity,
)
from tests.support.streams import redis_prefix_fixture, streams_settings
from tests.unit.test_trigger_schemas import VALID
from triggerbus.api import dis as dis_api
from triggerbus.api import lts as lts_api
from triggerbus.api import smn as smn_api

pytestmark = pytest.mark.integration

prefix = redis_prefix_fixture("fuzz")
COUNTS: Counter[str] = Counter()

HOSTILE_STRINGS: list[Any] = [
    "'; DROP TABLE records;--",
    '" OR 1=1 --',
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "../../etc/passwd",
    "a\x00b",
    "\u202eevil\u202c",
    "\ud800",  # a lone surrogate: valid JSON (\\ud800), not encodable as UTF-8
    "x" * 10_000,
    "${jndi:ldap://x/a}",
    "{{7*7}}",
    "",
    " ",
]
WRONG_VALUES: list[Any] = [None, True, -1, 0, 10**30, -(10**30), 1.5, math.inf, "str", [], {}, [1, "a"], {"a": {}}]
SCHEDULES = [
    ("Cron", "* * * * * * * *"),
    ("Cron", "@every 0s"),
    ("Cron", "@every -1s"),
    ("Cron", "@every 99999999999999999h"),
    ("Cron", "CRON_TZ=Nowhere/City 0 * * * *"),
    ("Cron", "CRON_TZ= 0 * * * *"),
    ("Cron", "CRON_TZ=../../etc/passwd 0 * * * *"),
    ("Cron", "0 0 31 2 *"),
    ("Cron", "*/0 * * * *"),
    ("Cron", "5-1 * * * *"),
    ("Cron", "99999999999999999999 * * * *"),
    ("Cron", "0 0 0 ? * MON#9"),
    ("Cron", "@yearly @yearly"),
    ("Cron", "* " * 2000),
    ("Rate", "0m"),
    ("Rate", "-1m"),
    ("Rate", "99999999999999999999d"),
    ("Rate", "1x"),
    ("Rate", "1.5h"),
]
QUERY_NAMES = [
    "marker",
    "maxitems",
    "limit",
    "offset",
    "status",
    "request_id",
    "requests",
    "query_begin_time",
    "query_end_time",
    "trigger_id",
    "source.topic",
    "redrive_of",
    "attempt",
    "format",
    "stream-name",
    "partition-id",
    "cursor-type",
    "starting-sequence-number",
    "timestamp",
    "partition-cursor",
    "max_fetch_bytes",
    "trace_name",
    "from",
    "to",
    "function",
    "project",
    "name",
    "window",
]
HEADER_NAMES = [
    "Content-Type",
    "Accept",
    "X-Cff-Log-Type",
    "X-CFF-Request-Version",
    "traceparent",
    "tracestate",
    "X-Apig-AppCode",
    "ce-specversion",
    "ce-type",
    "ce-source",
    "ce-id",
    "Content-Encoding",
    "Range",
    "X-Forwarded-For",
    "Cookie",
]
APIG_FUNCTION = (
    "def handler(event, context):\n"
    "    return {'statusCode': 200, 'headers': {}, 'body': 'ok', 'isBase64Encoded': False}\n"
)

# A valid body per route (method, template suffix), for the field-by-field mutations.
BASE_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/fgs/functions"): {
        "func_name": "made",
        "runtime": "Python3.10",
        "handler": "index.handler",
        "code_type": "inline",
        "func_code": {"file": "ZGVmIGhhbmRsZXIoZSwgYyk6IHJldHVybiAx"},
        "timeout": 3,
        "memory_size": 128,
        "user_data": {"k": "v"},
        "max_instance_num": 2,
    },
    ("PUT", "/config"): {
        "timeout": 10,
        "memory_size": 256,
        "description": "d",
        "user_data": "{}",
        "max_instance_num": 3,
    },
    ("PUT", "/async-invoke-config"): {
        "max_async_retry_attempts": 1,
        "max_async_event_age_in_seconds": 60,
        "destination_config": {"on_failure": {"destination": "FunctionGraph", "param": "{}"}},
    },
    ("POST", "/invocations"): {"k": "v"},
    ("POST", "/invocations-async"): {"k": "v"},
    ("POST", "/cancel"): {"request_id": "00000000-0000-0000-0000-000000000000"},
    ("POST", "/fgs/triggers/{function_urn}"): {
        "trigger_type_code": "TIMER",
        "trigger_status": "ACTIVE",
        "event_data": {"name": "t1", "schedule_type": "Rate", "schedule": "1d"},
    },
    ("PUT", "/{trigger_id}"): {"trigger_status": "ACTIVE", "event_data": {"schedule": "2d", "schedule_type": "Rate"}},
    ("PUT", "/checkpoint"): {"partition": 0, "offset": 1, "position": "x"},
    ("POST", "/topics"): {"name": "t-made", "display_name": "d"},
    ("POST", "/publish"): {
        "message": "m",
        "subject": "s",
        "message_attributes": [{"name": "a", "type": "STRING", "value": "v"}],
    },
    ("POST", "/streams"): {"stream_name": "made", "partition_count": 1, "data_duration": 24, "data_type": "BLOB"},
    ("POST", "/records"): {"stream_name": "fuzz-stream", "records": [{"data": "aGk=", "partition_key": "k"}]},
    ("POST", "/groups"): {"log_group_name": "made", "ttl_in_days": 7},
    ("POST", "/{log_group_id}/streams"): {"log_stream_name": "made", "ttl_in_days": 7},
    ("POST", "/tenant/contents"): {"log_time_ns": 1, "contents": ["line"], "labels": {"a": "b"}},
    ("POST", "/high-accuracy"): {"contents": [{"log_time_ns": 1, "log": "l"}], "labels": {}},
    ("POST", "/content/query"): {"start_time": 0, "end_time": 1, "limit": 10},
    ("POST", "/traces"): {"service_type": "FGS", "resource_type": "f", "trace_name": "t", "trace_status": "normal"},
    ("POST", "/events"): {"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": {}},
    ("POST", "/obs/events/{token}"): {"Records": [{"eventName": "ObjectCreated:Put", "s3": {}}]},
}


def base_body(route: Route) -> dict[str, Any] | None:
    matches = [
        body
        for (method, suffix), body in BASE_BODIES.items()
        if method == route.method and route.template.endswith(suffix)
    ]
    return matches[0] if matches else None


def encode(value: Any) -> bytes:
    """JSON as sent (``\\ud800`` escapes keep lone surrogates; Infinity as Python writes it)."""
    return json.dumps(value).encode()


# -- fixtures ----------------------------------------------------------------------------------------


async def create_via(h: Harness, path: str, body: dict[str, Any], key: str) -> str:
    async with h.http.post(path, json=body) as resp:
        answer = await resp.json()
        assert resp.status in (200, 201), answer
    return str(answer[key])


async def fuzz_targets(h: Harness) -> dict[str, str]:
    """Objects of each kind to aim at; the values that fill each path parameter."""
    urn = await h.create_function("fuzzme", APIG_FUNCTION)
    timer = await h.add_trigger(urn, "TIMER", {"name": "fuzz-timer", "schedule_type": "Rate", "schedule": "1d"})
    apig = {"name": "fuzz_api", "path": "/fuzz", "auth": "NONE", "match_mode": "SWA", "func_info": {"timeout": 20000}}
    await h.add_trigger(urn, "APIG", apig)
    await h.add_trigger(urn, "EVENTGRID", {"channel_name": "fuzzch"})
    request_id = await h.invoke_async(urn, {"first": True})
    await h.wait_terminal(urn, request_id)
    v2 = f"/v2/{PROJECT}"
    topic_urn = await create_via(h, f"{v2}/notifications/topics", {"name": "fuzz-topic"}, "topic_urn")
    await create_via(h, f"{v2}/streams", {"stream_name": "fuzz-stream", "partition_count": 1}, "stream_name")
    group = await create_via(h, f"{v2}/groups", {"log_group_name": "fuzz-group"}, "log_group_id")
    stream = await create_via(h, f"{v2}/groups/{group}/streams", {"log_stream_name": "fuzz-ls"}, "log_stream_id")
    return {
        "project_id": PROJECT,
        "function_urn": urn,
        "urn": urn,
        "request_id": request_id,
        "trigger_type_code": "TIMER",
        "type": "TIMER",
        "trigger_id": str(timer["trigger_id"]),
        "topic_urn": topic_urn,
        "stream_name": "fuzz-stream",
        "log_group_id": group,
        "log_stream_id": stream,
        "channel": "fuzzch",
        "token": "not-the-token",
        "tail": "/fuzz/x",
    }


async def assert_store_intact(h: Harness, ids: dict[str, str]) -> None:
    """What was created before the run is still there and readable, the SQLite file is sound."""
    urn = ids["function_urn"]
    for path in (
        h.fgs(f"/functions/{urn}/config"),
        h.trigger_path(urn, "TIMER", ids["trigger_id"]),
        h.fgs(f"/functions/{urn}/async-invocations/{ids['request_id']}"),
        h.fgs(f"/triggers/{urn}"),
        h.fgs("/functions"),
        f"/v2/{PROJECT}/notifications/topics/{ids['topic_urn']}",
        f"/v2/{PROJECT}/streams/fuzz-stream",
        f"/v2/{PROJECT}/groups/{ids['log_group_id']}/streams",
    ):
        async with h.http.get(path) as resp:
            assert resp.status == 200, (path, await resp.text())
            await resp.json()
    request_id = await h.invoke_async(urn, {"after": "the fuzzing"})
    assert (await h.wait_terminal(urn, request_id))["status"] == "SUCCESS"
    async with h.http.get("/health") as resp:
        # "degraded" only names triggers whose source is unreachable (fuzzed configs may create such)
        assert resp.status == 200 and (await resp.json())["status"] in ("ok", "degraded")
    assert await asyncio.to_thread(sqlite_integrity, h.server.settings.data_dir / "triggerbus.db") == "ok"


@pytest.fixture
async def fuzz(tmp_path: Path, prefix: str) -> AsyncIterator[tuple[Harness, dict[str, str], aiohttp.ClientSession]]:
    """A running service with one object of each kind, and a logged-in console session."""
    async with running(streams_settings(tmp_path, prefix)) as h:
        ids = await fuzz_targets(h)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(base_url=h.base_url, cookie_jar=jar) as console:
            await login(console)
            yield h, ids, console
        await assert_store_intact(h, ids)


def run_hypothesis(test: Callable[[], None]) -> Coroutine[Any, Any, None]:
    """Run a (sync) hypothesis test in a thread while the service keeps running on this loop."""
    return asyncio.to_thread(test)


def on_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Answer]) -> Answer:
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=120)


# -- every route -------------------------------------------------------------------------------------


def fixed_bodies(route: Route) -> list[tuple[str, bytes]]:
    """Malformed bodies every route with a body gets, and the base body with each field made wrong."""
    bodies: list[tuple[str, bytes]] = [
        ("empty", b""),
        ("invalid JSON", b'{"a": '),
        ("invalid UTF-8", b'{"name": "\xff\xfe\xed\xa0\x80"}'),
        ("deep JSON", b"[" * 100_000 + b"]" * 100_000),
        ("deep objects", b'{"a":' * 5000 + b"1" + b"}" * 5000),
        ("NaN", b'{"timeout": NaN, "limit": Infinity}'),
        ("null", b"null"),
        ("array", b"[1, 2]"),
        ("string", b'"str"'),
        ("huge number", b"1" + b"0" * 5000),
        ("2 MB string", encode({"name": "x" * 2_000_000})),
    ]
    base = base_body(route)
    if base is not None:
        bodies.append(("base body", encode(base)))
        for key in base:
            for value in [*WRONG_VALUES, *HOSTILE_STRINGS[:9]]:
                bodies.append((f"{key}={str(value)[:40]!r}", encode({**base, key: value})))
            bodies.append((f"without {key}", encode({k: v for k, v in base.items() if k != key})))
    return bodies


def path_variants(route: Route, ids: dict[str, str]) -> list[tuple[str, str]]:
    """(label, path): valid ids (not for DELETE: it would delete them), then each parameter hostile."""
    variants = [] if route.method == "DELETE" else [("valid ids", route.path(ids))]
    for name in route.params:
        for value in HOSTILE_SEGMENTS:
            variants.append((f"{name}={value[:30]!r}", route.path({**ids, name: value})))
    if route.method == "DELETE" and not route.params:
        variants.append(("no params", route.template))
    return variants


def session_for(route: Route, h: Harness, console: aiohttp.ClientSession) -> aiohttp.ClientSession:
    return console if route.console else h.http


async def test_every_route_answers_bad_input_with_a_clear_4xx(
    fuzz: tuple[Harness, dict[str, str], aiohttp.ClientSession],
) -> None:
    h, ids, console = fuzz
    routes = app_routes(h.server._runner.app)  # type: ignore[union-attr]
    assert len(routes) > 60, routes
    counts: Counter[str] = Counter()

    # 1. Fixed: every route, every hostile path value, every malformed body, with the valid ids.
    for route in routes:
        http = session_for(route, h, console)
        for label, path in path_variants(route, ids):
            check_answer(route, await send(http, route.method, path, data=b"{}"), label)
            counts["paths"] += 1
        if route.method in ("GET", "DELETE"):
            continue
        path = route.path(ids)
        for label, data in fixed_bodies(route):
            check_answer(route, await send(http, route.method, path, data=data), label)
            counts["bodies"] += 1

    # Hostile queries on every GET, valid ids.
    for route in (r for r in routes if r.method == "GET"):
        for name in QUERY_NAMES:
            for value in ["-1", "99999999999999999999", "abc", "'; DROP TABLE records;--", "\x00", "x" * 5000]:
                answer = await send(session_for(route, h, console), "GET", route.path(ids), params={name: value})
                check_answer(route, answer, f"?{name}={value[:30]!r}")
                counts["queries"] += 1

    # 2. Generated: any route, path, body, query and headers.
    loop = asyncio.get_running_loop()
    json_values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats()
        | st.text(max_size=40),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=12,
    )
    hostile = st.sampled_from(HOSTILE_STRINGS) | st.sampled_from(WRONG_VALUES)
    ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200)

    @st.composite
    def bodies(draw: st.DrawFn, route: Route) -> bytes:
        base = base_body(route)
        kind = draw(st.sampled_from(["binary", "json", "mutated", "mutated", "mutated", "nested"]))
        if kind == "binary":
            return draw(st.binary(max_size=300))
        if kind == "json":
            return encode(draw(json_values))
        if kind == "nested":
            depth = draw(st.integers(min_value=10, max_value=50_000))
            return (b'{"a":[' * depth) + b"0" + (b"]}" * depth)
        body = dict(base or draw(st.dictionaries(st.sampled_from(QUERY_NAMES), json_values, max_size=3)))
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            key = draw(st.sampled_from(sorted(body)) | st.text(max_size=12)) if body else draw(st.text(max_size=12))
            body[key] = draw(hostile | json_values)
        return encode(body)

    @settings(max_examples=1200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.data())
    def generated(data: st.DataObject) -> None:
        route = data.draw(st.sampled_from(routes))
        values = dict(ids)
        if route.params and (route.method == "DELETE" or data.draw(st.booleans())):
            name = route.params[-1] if route.method == "DELETE" else data.draw(st.sampled_from(route.params))
            values[name] = data.draw(st.sampled_from(HOSTILE_SEGMENTS) | st.text(min_size=1, max_size=60))
        body = None if route.method == "GET" else data.draw(bodies(route))
        query = data.draw(
            st.dictionaries(st.sampled_from(QUERY_NAMES), ascii_text | st.sampled_from(HOSTILE_SEGMENTS), max_size=3)
        )
        headers = data.draw(st.dictionaries(st.sampled_from(HEADER_NAMES), ascii_text, max_size=3))
        answer = on_loop(
            loop,
            send(
                session_for(route, h, console),
                route.method,
                route.path(values),
                data=body,
                params=query,
                headers=headers,
            ),
        )
        check_answer(route, answer, f"path={values} query={query} headers={headers} body={(body or b'')[:200]!r}")
        counts["generated"] += 1

    await run_hypothesis(generated)
    COUNTS.update({f"routes.{k}": v for k, v in counts.items()})
    COUNTS["routes"] = len(routes)
    print(f"\nbad input: {len(routes)} routes, requests {dict(counts)}, total {sum(counts.values())}")


# -- request sizes and headers ----------------------------------------------------------------------


async def test_oversized_bodies_and_headers_are_refused_quickly(
    fuzz: tuple[Harness, dict[str, str], aiohttp.ClientSession],
) -> None:
    h, ids, _ = fuzz
    urn = ids["function_urn"]
    cases = [
        (h.fgs(f"/functions/{urn}/invocations-async"), 256 * 1024),
        (h.fgs(f"/functions/{urn}/invocations"), 6 * 1024 * 1024),
        (h.fgs("/functions"), 60 * 1024 * 1024),
        (f"/v2/{PROJECT}/notifications/topics", 60 * 1024 * 1024),
    ]
    for path, limit in cases:
        # Announced by Content-Length: refused before the body is read (the client is still sending).
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await send(h.http, "POST", path, data=b"x" * (limit + 1))
        assert answer.status == 413, (path, answer)
        assert_fss_error(answer, path)
        assert loop.time() - started < 15

        # Chunked, no Content-Length: cut at the limit.
        async def chunks(size: int = limit + 1) -> AsyncIterator[bytes]:
            sent = 0
            while sent < size:
                piece = min(65536, size - sent)
                sent += piece
                yield b"1" * piece

        answer = await send(h.http, "POST", path, data=chunks())  # type: ignore[arg-type]
        assert answer.status == 413, (path, answer)
        assert_fss_error(answer, path)
        COUNTS["sizes"] += 2

    # Huge header values and too many headers: a 4xx from the HTTP parser, never a 5xx; the service lives on.
    for headers in (
        {"X-Big": "a" * 20_000},
        {f"X-H{i}": "v" for i in range(300)},
        {"X-Auth-Token": TOKEN + "a" * 9000},
    ):
        answer = await send(h.http, "GET", h.fgs("/functions"), headers=headers)
        assert 400 <= answer.status < 500, answer
        COUNTS["sizes"] += 1
    async with h.http.get(h.fgs("/functions")) as resp:
        assert resp.status == 200


# -- trigger configurations --------------------------------------------------------------------------


async def test_every_trigger_type_refuses_mutated_event_data(
    fuzz: tuple[Harness, dict[str, str], aiohttp.ClientSession],
) -> None:
    h, _, _ = fuzz
    urn = await h.create_function("triggered", APIG_FUNCTION)
    route = Route("POST", "/v2/{project_id}/fgs/triggers/{function_urn}")
    path = h.fgs(f"/triggers/{urn}")
    counts: Counter[str] = Counter()

    async def post(code: Any, event_data: Any, label: str) -> Answer:
        body = encode({"trigger_type_code": code, "event_data": event_data})
        answer = await send(h.http, "POST", path, data=body)
        check_answer(route, answer, f"{code} {label}")
        counts["fixed"] += 1
        return answer

    for code, valid in VALID.items():
        for key in valid:
            for value in [*WRONG_VALUES, *HOSTILE_STRINGS]:
                await post(code, {**valid, key: value}, f"{key}={str(value)[:40]!r}")
        for key in (
            "batch_size",
            "polling_interval",
            "max_fetch_bytes",
            "concurrency",
            "session_expiry_s",
            "batch_window_ms",
        ):
            for value in (-1, 0, -(2**63), 2**64, "10", 1.5):
                await post(code, {**valid, key: value}, f"{key}={value!r}")
        await post(code, {**valid, "unknown": "<script>"}, "unknown key")
        not_objects: list[Any] = [None, [], "x", {}, {"a": {"b": [None]}}]
        for not_an_object in not_objects:
            await post(code, not_an_object, f"event_data={not_an_object!r}")
    for bad_code in (None, "", "timer", "NOPE", "'; DROP TABLE triggers;--", 7, ["TIMER"]):
        await post(bad_code, VALID["TIMER"], f"code={bad_code!r}")
    for schedule_type, schedule in SCHEDULES:
        timer = {"name": "sched", "schedule_type": schedule_type, "schedule": schedule}
        answer = await post("TIMER", timer, f"schedule {schedule[:40]!r}")
        assert answer.status == 400, (schedule, answer)

    loop = asyncio.get_running_loop()
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
        max_leaves=8,
    )
    cron_fields = st.sampled_from(
        ["*", "?", "0", "-1", "60", "*/0", "1-0", "L", "W", "#", "MON#6", "JAN-DEC", "99999999999"]
    )

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.data())
    def generated(data: st.DataObject) -> None:
        code = data.draw(st.sampled_from(sorted(VALID)))
        event_data = dict(VALID[code])
        if code == "TIMER" and data.draw(st.booleans()):
            zone = data.draw(st.sampled_from(["", "CRON_TZ=Nowhere/City ", "CRON_TZ=UTC ", "TZ=Europe/Berlin "]))
            fields = data.draw(st.lists(cron_fields, min_size=0, max_size=9))
            event_data.update(schedule_type="Cron", schedule=zone + " ".join(fields))
        else:
            for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
                key = data.draw(st.sampled_from(sorted(event_data)) | st.text(max_size=10))
                event_data[key] = data.draw(json_values | st.sampled_from(HOSTILE_STRINGS))
        body = encode({"trigger_type_code": code, "event_data": event_data})
        answer = on_loop(loop, send(h.http, "POST", path, data=body))
        check_answer(route, answer, body[:300].decode(errors="replace"))
        counts["generated"] += 1

    await run_hypothesis(generated)
    COUNTS.update({f"triggers.{k}": v for k, v in counts.items()})
    print(f"\ntrigger configs: {dict(counts)}, total {sum(counts.values())}")


# -- connector parsers -------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=15), inner, max_size=5),
    max_leaves=15,
)
# A record shaped like the real thing, with any part replaced: reaches the checks behind the first one.
S3_RECORD = st.fixed_dictionaries(
    {
        "eventName": st.sampled_from(["ObjectCreated:Put", "s3:ObjectRemoved:Delete", "ObjectCreated:Copy"]) | JSON,
        "eventTime": st.sampled_from(["2024-12-02T09:49:37.939Z", "2024-13-45T99:99:99Z", "2024-12-02T09:49:37+0530"])
        | JSON,
        "awsRegion": st.just("r") | JSON,
        "s3": st.fixed_dictionaries(
            {
                "bucket": st.fixed_dictionaries({"name": st.text(max_size=20) | JSON}) | JSON,
                "object": st.fixed_dictionaries(
                    {
                        "key": st.text(max_size=30) | JSON,
                        "size": st.integers() | JSON,
                        "eTag": st.text(max_size=5) | JSON,
                    }
                )
                | JSON,
            }
        )
        | JSON,
    }
)
CLOUDEVENT = st.fixed_dictionaries(
    {
        "specversion": st.just("1.0") | JSON,
        "id": st.text(max_size=5) | JSON,
        "source": st.text(max_size=5) | JSON,
        "type": st.text(max_size=5) | JSON,
    },
    optional={
        "data": JSON,
        "data_base64": st.text(max_size=20) | JSON,
        "time": st.text(max_size=30) | JSON,
        "ttl": JSON,
    },
)
HEADERS = st.lists(
    st.tuples(
        st.sampled_from(["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time", "ce-x"]) | st.text(max_size=10),
        st.text(max_size=30),
    ),
    max_size=6,
)
NOW = datetime(2025, 1, 1, tzinfo=UTC)
# JSON texts that json.loads refuses with something else than JSONDecodeError (or accepts, not being JSON).
NASTY_JSON_TEXTS = ("1" * 5000, "[" * 100_000 + "]" * 100_000, '{"default": NaN}', '{"default": "\\ud800"}')
ALLOWED: tuple[type[BaseException], ...] = (FSSError, ValueError)  # ValidationError, NotificationError, ScheduleError


def parsed_by(name: str, call: Callable[[], object], allowed: tuple[type[BaseException], ...] = ALLOWED) -> None:
    """``call()`` returns, or raises one of ``allowed``; anything else (TypeError, KeyError ...) is a bug."""
    COUNTS[f"parsers.{name}"] += 1
    with contextlib.suppress(*allowed):
        call()


PARSER_SETTINGS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@PARSER_SETTINGS
@given(document=JSON | st.fixed_dictionaries({"Records": st.lists(S3_RECORD | JSON, max_size=3)}) | S3_RECORD)
def test_obs_notification_parsing(document: Any) -> None:
    parsed_by("obs.parse_notification", lambda: obs.parse_notification(document, region="r"))
    parsed_by("obs.normalize_record", lambda: obs.normalize_record(document, region="r"))
    for message in (json.dumps(document, default=str), *NASTY_JSON_TEXTS):
        sns = {"Type": "Notification", "TopicArn": "arn", "Message": message}
        parsed_by("obs.parse_notification(sns)", functools.partial(obs.parse_notification, sns, region="r"))
    parsed_by("obs.parse_event_time", lambda: obs.parse_event_time(document, "eventTime"))


@PARSER_SETTINGS
@given(
    event=CLOUDEVENT | JSON,
    headers=HEADERS,
    body=st.binary(max_size=200),
    content_type=st.none() | st.text(max_size=30),
)
def test_cloudevents_parsing(event: Any, headers: list[tuple[str, str]], body: bytes, content_type: str | None) -> None:
    parsed_by("eventgrid.validate_cloudevent", lambda: validate_cloudevent(event))
    parsed_by("eventgrid.binary_cloudevent", lambda: binary_cloudevent(headers, body, content_type))


@PARSER_SETTINGS
@given(
    topic=st.text(max_size=80) | st.from_regex(r"\$oc/devices/[^/]*/sys/[a-z/_]*(\?request_id=.*)?", fullmatch=True),
    payload=st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()),
)
def test_iotda_topic_and_payload_parsing(topic: str, payload: bytes) -> None:
    parsed_by("iotda.parse_topic", lambda: iotda.parse_topic(topic))
    defaults = iotda.HeaderDefaults(product_id=None, app_id=None)
    parsed_by("iotda.device_events", lambda: iotda.device_events(topic, payload, NOW, defaults))


def resolve_published(body: dict[str, Any]) -> str:
    return smn_api.resolve_message(smn_api.PublishRequest.model_validate(body))


@PARSER_SETTINGS
@given(
    smn=JSON,
    dis=JSON | st.fixed_dictionaries({"stream_name": JSON, "records": st.lists(JSON, max_size=3) | JSON}),
    lts=JSON
    | st.fixed_dictionaries({"contents": st.lists(JSON, max_size=3) | JSON, "labels": JSON, "log_time_ns": JSON}),
)
def test_smn_dis_lts_request_models(smn: Any, dis: Any, lts: Any) -> None:
    parsed_by("smn.PublishRequest", lambda: smn_api.PublishRequest.model_validate(smn), (ValidationError, FSSError))
    for structure in (json.dumps(smn, default=str), *NASTY_JSON_TEXTS):
        publish = {"message_structure": structure}
        parsed_by(
            "smn.resolve_message",
            functools.partial(resolve_published, publish),
            (ValidationError, FSSError),
        )
    parsed_by("smn.CreateTopicRequest", lambda: smn_api.CreateTopicRequest.model_validate(smn), (ValidationError,))
    parsed_by("dis.PutRecordsRequest", lambda: dis_api.PutRecordsRequest.model_validate(dis), (ValidationError,))
    parsed_by("dis.CreateStreamRequest", lambda: dis_api.CreateStreamRequest.model_validate(dis), (ValidationError,))
    parsed_by("lts.ReportRequest", lambda: lts_api.ReportRequest.model_validate(lts), (ValidationError,))
    parsed_by("lts.QueryRequest", lambda: lts_api.QueryRequest.model_validate(lts), (ValidationError,))


@PARSER_SETTINGS
@given(value=st.binary(max_size=300) | st.none(), text=st.text(max_size=60), change=JSON)
def test_stream_message_decoding(value: bytes | None, text: str, change: Any) -> None:
    parsed_by("kafka.decode_message", lambda: kafka.decode_message(value), ())
    parsed_by("rabbitmq.decode_message", lambda: rabbitmq.decode_message(value or b""), ())
    parsed_by("kafka.parse_item_id", lambda: kafka.parse_item_id("t1", "t1:" + text), ())
    parsed_by("rabbitmq.parse_item_id", lambda: rabbitmq.parse_item_id("t1", "t1:" + text), ())
    parsed_by("redis_streams.parse_id", lambda: redis_streams.parse_id(text))
    parsed_by("cts.parse_operations", lambda: cts.parse_operations(change), (FSSError,))
    parsed_by("apig.from_function_result", lambda: APIGResponse.from_function_result(change))
    if isinstance(change, dict):
        parsed_by("dds.MongoChange.from_change_stream", lambda: MongoChange.from_change_stream(change))


CRON = st.lists(
    st.sampled_from(
        [
            "*",
            "?",
            "0",
            "59",
            "-1",
            "60",
            "*/0",
            "*/7",
            "1-0",
            "1-5/2",
            "L",
            "W",
            "15W",
            "LW",
            "5L",
            "MON#6",
            "MON-FRI",
            "JAN-DEC",
            "99999999999999",
            ",",
            "1,,2",
            "SUN#1",
        ]
    )
    | st.text(max_size=6),
    max_size=9,
).map(" ".join)
ZONE = st.sampled_from(
    ["", "CRON_TZ=Nowhere/City ", "CRON_TZ=Asia/Shanghai ", "CRON_TZ= ", "TZ=UTC ", "CRON_TZ=../../x "]
)
EVERY = st.sampled_from(["@every ", "@every -", "@"]).flatmap(lambda p: st.text(max_size=12).map(lambda t: p + t))


@settings(max_examples=1000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    schedule_type=st.sampled_from(["Rate", "Cron", "cron", "RATE"]) | st.text(max_size=5),
    schedule=st.tuples(ZONE, CRON | EVERY | st.text(max_size=30)).map("".join)
    | st.from_regex(r"-?\d{1,25}[smhdw]?", fullmatch=True),
    tz=st.sampled_from(["UTC", "Asia/Shanghai", "Nowhere/City", ""]),
)
def test_schedule_parsing(schedule_type: str, schedule: str, tz: str) -> None:
    def parse_and_step() -> None:
        parsed = parse_schedule(schedule_type, schedule, default_tz=tz, anchor=NOW)
        parsed.next_after(NOW)  # a schedule that parses must also compute its next fire time

    parsed_by("schedule.parse_schedule", parse_and_step, (ScheduleError,))


@PARSER_SETTINGS
@given(text=st.text(max_size=120), data=JSON, trigger_type=st.sampled_from(sorted(VALID)))
def test_urn_user_data_and_event_data_parsing(text: str, data: Any, trigger_type: str) -> None:
    parsed_by("urn.FunctionUrn.parse", lambda: FunctionUrn.parse(text))
    parsed_by("urn.FunctionUrn.parse(urn-like)", lambda: FunctionUrn.parse("urn:fss:r:p:function:" + text))
    parsed_by("functions.parse_user_data", lambda: parse_user_data(data))
    parsed_by("functions.parse_user_data(text)", lambda: parse_user_data(text))
    mutated = {**VALID[trigger_type], **data} if isinstance(data, dict) else data
    parsed_by("triggers.parse_event_data", lambda: parse_event_data(trigger_type, mutated), (FSSError,))


def test_zz_print_totals() -> None:
    """The totals of this module's run (kept last by its name), for docs/reliability.md."""
    parsers = sum(v for k, v in COUNTS.items() if k.startswith("parsers."))
    http = sum(v for k, v in COUNTS.items() if k.startswith(("routes.", "triggers.")) or k == "sizes")
    print(f"\nbad input totals: {http} HTTP requests over {COUNTS['routes']} routes, {parsers} parser inputs")
    for key, value in sorted(COUNTS.items()):
        print(f"  {key}: {value}")
