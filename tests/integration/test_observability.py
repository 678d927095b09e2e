"""Logs and tracing against a real service: structured service logs, per-request function logs by
request id (API and CLI, bounded), and W3C trace context from HTTP, CloudEvents and Kafka sources
to the function, with and without an OpenTelemetry exporter.

Functions that must show the headers they got are real HTTP servers (aiohttp), as in
test_http_functions; Kafka records go through the tansu broker of the test session.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bus.base import Bus, Message, Outgoing, Subscription
from bus.sqlite import SQLiteBus
from bus.sqlitedb import Database
from invoker import tracing
from invoker.envelope import INVOCATIONS_TOPIC, InvocationEnvelope
from tests.integration.conftest import TOKEN, Harness, make_settings, running
from tests.integration.test_cli import cli
from tests.support import waiting
from tests.support.recording import read_jsonl, wait_lines
from tests.support.service import ServiceProcess
from triggerbus.logs import JsonFormatter

pytestmark = pytest.mark.integration

TRACE_A = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_B = "0af7651916cd43dd8448eb211c80319c"
PARENT_A = f"00-{TRACE_A}-00f067aa0ba902b7-01"
PARENT_B = f"00-{TRACE_B}-b7ad6b7169203331-01"
STRUCTURED = {"Content-Type": "application/cloudevents+json"}
wait_for = partial(waiting.wait_for, timeout=60.0)

# Appends {"request_id", "traceparent", "messages"} (Kafka messages, if any) to user_data "out".
TRACE_RECORDER = """
import json, os
def handler(event, context):
    messages = [m for r in event.get("records", []) for m in r.get("messages", [])]
    line = {"request_id": context.getRequestID(), "traceparent": context.getTraceParent(), "messages": messages}
    fd = os.open(context.getUserData("out"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (json.dumps(line) + "\\n").encode())
    os.close(fd)
    return "ok"
"""

PRINTER = """
def handler(event, context):
    print("hello from", context.getRequestID())
    context.getLogger().info("trace parent: %s", context.getTraceParent() or "-")
    for _ in range(event.get("megabytes", 0) * 1024):
        print("x" * 1023)
    if event.get("megabytes"):
        print("THE LAST LINE")
    return "ok"
"""


# -- an HTTP function that remembers what it got -----------------------------------------------------------


@dataclass
class HttpFunction:
    url: str = ""
    calls: list[dict[str, str]] = field(default_factory=list)  # request headers, lower-cased names

    def traceparents(self) -> list[str]:
        return [c["traceparent"] for c in self.calls if "traceparent" in c]


@pytest.fixture
async def http_function() -> AsyncIterator[HttpFunction]:
    state = HttpFunction()

    async def invoke(request: web.Request) -> web.Response:
        await request.read()
        state.calls.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response("ok")

    app = web.Application()
    app.router.add_post("/invoke", invoke)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


async def create_http_function(h: Harness, fn: HttpFunction) -> str:
    name = f"web{uuid.uuid4().hex[:8]}"
    body = {"func_name": name, "runtime": "http", "code_url": fn.url}
    async with h.http.post(h.fgs("/functions"), json=body) as resp:
        assert resp.status == 200, await resp.text()
    return h.urn(name)


async def invoke_with_trace(h: Harness, urn: str, traceparent: str) -> str:
    headers = {"traceparent": traceparent, "tracestate": "vendor=1"}
    async with h.http.post(h.fgs(f"/functions/{urn}/invocations-async"), json={}, headers=headers) as resp:
        body = await resp.json()
        assert resp.status == 202, body
    return str(body["request_id"])


def hex_trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Spans recorded in memory, as a configured exporter would send them."""
    for name in ("TRIGGERBUS_OTEL_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_tracer_provider(provider)
    yield exporter
    tracing.set_tracer_provider(None)


# -- service logs --------------------------------------------------------------------------------------------


@pytest.fixture
def service_log() -> Iterator[io.StringIO]:
    """Every service log line of an in-process service, formatted as `triggerbus serve` does."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_service_log_lines_name_the_invocation(harness: Harness, service_log: io.StringIO) -> None:
    urn = await harness.create_function("printer", PRINTER)
    rid = await harness.invoke_async(urn, {})
    assert (await harness.wait_terminal(urn, rid))["status"] == "SUCCESS"
    web_urn = await http_function_fails(harness)  # a function that fails: its Finish line says so
    lines = json_lines(service_log.getvalue())
    mine = [line for line in lines if line.get("request_id") == rid]
    start = next(line for line in mine if line["message"].startswith("Start invoke request"))
    finish = next(line for line in mine if line["message"].startswith("Finish invoke request"))
    assert start["message"] == f"Start invoke request '{rid}', version: latest"
    assert finish["message"].startswith(f"Finish invoke request '{rid}'(invoke Success), duration: ")
    assert "billing duration: " in finish["message"] and "memory used: " in finish["message"]
    for line in (start, finish):
        assert line["function_urn"] == urn and line["logger"] == "invoker.dispatcher" and line["level"] == "INFO"
    failed = [line for line in lines if "(invoke Failed)" in line["message"]]
    assert failed and all(line["function_urn"] == web_urn for line in failed)
    assert TOKEN not in service_log.getvalue()


async def http_function_fails(h: Harness) -> str:
    """An HTTP function nobody listens for fails its one attempt (no retries); its URN."""
    urn = await create_http_function(h, HttpFunction(url="http://127.0.0.1:9"))
    async with h.http.put(h.fgs(f"/functions/{urn}/async-invoke-config"), json={"max_async_retry_attempts": 0}) as r:
        assert r.status == 200, await r.text()
    rid = await h.invoke_async(urn, {})
    assert (await h.wait_terminal(urn, rid))["status"] == "FAIL"
    return urn


async def test_serve_writes_json_lines_by_default(tmp_path: Path) -> None:
    with ServiceProcess(tmp_path / "data", tmp_path / "service.log") as service:
        await service.wait_healthy()
        async with service.harness() as h:
            urn = await h.create_function("printer", PRINTER)
            rid = await h.invoke_async(urn, {})
            assert (await h.wait_terminal(urn, rid))["status"] == "SUCCESS"
        assert service.terminate() == 0
    lines = json_lines(service.log.read_text())
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    mine = [line["message"] for line in lines if line.get("request_id") == rid and line.get("function_urn") == urn]
    assert any(m.startswith(f"Start invoke request '{rid}'") for m in mine), lines
    assert any(m.startswith(f"Finish invoke request '{rid}'(invoke Success)") for m in mine), lines
    assert TOKEN not in service.log.read_text()


# -- function logs by request id -----------------------------------------------------------------------------


async def fetch_logs(h: Harness, urn: str, rid: str, **query: str) -> tuple[int, str, str]:
    async with h.http.get(h.fgs(f"/functions/{urn}/async-invocations/{rid}/logs"), params=query) as resp:
        return resp.status, resp.content_type, await resp.text()


async def test_function_output_by_request_id_through_the_api_and_the_cli(harness: Harness) -> None:
    urn = await harness.create_function("printer", PRINTER)
    rid = await harness.invoke_async(urn, {})
    assert (await harness.wait_terminal(urn, rid))["status"] == "SUCCESS"

    status, content_type, body = await fetch_logs(harness, urn, rid)
    assert (status, content_type) == (200, "application/json")
    doc = json.loads(body)
    assert (doc["request_id"], doc["function_urn"], doc["status"]) == (rid, urn, "SUCCESS")
    (attempt,) = doc["attempts"]
    assert attempt["n"] == 1 and attempt["status"] == "SUCCESS"
    lines = attempt["logs"].splitlines()
    assert lines[0].endswith(f"Start invoke request '{rid}', version: latest")
    assert lines[1] == f"hello from {rid}"
    assert lines[2].endswith(f"{rid} INFO trace parent: -")
    assert f"Finish invoke request '{rid}'(invoke Success), duration: " in lines[-1]

    status, content_type, text = await fetch_logs(harness, urn, rid, format="text")
    assert (status, content_type) == (200, "text/plain")
    assert text == attempt["logs"] + "\n"
    status, _, other = await fetch_logs(harness, urn, rid, attempt="2")
    assert status == 200 and json.loads(other)["attempts"] == []
    assert (await fetch_logs(harness, urn, str(uuid.uuid4())))[0] == 404

    printed = await asyncio.to_thread(cli, "records", "logs", "printer", rid, endpoint=harness.base_url)
    assert printed.stdout == text
    as_json = await asyncio.to_thread(cli, "records", "logs", "printer", rid, "--json", endpoint=harness.base_url)
    assert json.loads(as_json.stdout)["attempts"][0]["logs"] == attempt["logs"]


async def test_a_megabyte_of_output_is_cut_to_the_bound_with_a_marker(harness: Harness) -> None:
    urn = await harness.create_function("printer", PRINTER)
    rid = await harness.invoke_async(urn, {"megabytes": 1})
    assert (await harness.wait_terminal(urn, rid))["status"] == "SUCCESS"
    status, _, text = await fetch_logs(harness, urn, rid, format="text")
    assert status == 200
    limit = harness.service.settings.function_log_bytes
    assert limit == 64 * 1024  # the documented default
    assert len(text.encode()) < limit + 1024  # the output kept, plus the Start/Finish lines and the marker
    lines = text.splitlines()
    assert lines[0].endswith(f"Start invoke request '{rid}', version: latest")
    assert lines[1].startswith("[... ") and lines[1].endswith(" bytes of earlier output truncated ...]")
    dropped = int(lines[1].split()[1])
    assert dropped > 1024 * 1024 - limit  # what the function printed, less what was kept
    assert lines[-2] == "THE LAST LINE" and "(invoke Success)" in lines[-1]


# -- trace context, propagated -------------------------------------------------------------------------------


async def test_traceparent_of_an_async_http_invocation_reaches_the_http_function(
    harness: Harness, http_function: HttpFunction
) -> None:
    urn = await create_http_function(harness, http_function)
    rid = await invoke_with_trace(harness, urn, PARENT_A)
    assert (await harness.wait_terminal(urn, rid))["status"] == "SUCCESS"
    (call,) = http_function.calls
    assert call["traceparent"] == PARENT_A and call["tracestate"] == "vendor=1"  # no exporter: passed on as is
    untraced = await harness.invoke_async(urn, {})
    await harness.wait_terminal(urn, untraced)
    assert "traceparent" not in http_function.calls[1]


async def test_traceparent_of_a_sync_invocation_reaches_a_python_function(harness: Harness) -> None:
    urn = await harness.create_function("printer", PRINTER)
    headers = {"traceparent": PARENT_B, "X-Cff-Log-Type": "tail"}
    async with harness.http.post(harness.fgs(f"/functions/{urn}/invocations"), json={}, headers=headers) as resp:
        assert resp.status == 200
        log = base64.b64decode(resp.headers["X-Cff-Function-Log"]).decode()
    assert f"INFO trace parent: {PARENT_B}" in log


async def trace_recorder(h: Harness, directory: Path) -> tuple[str, Path]:
    """A Python function recording the trace context each invocation got: its URN and output file."""
    return await h.create_recorder(f"tr{uuid.uuid4().hex[:8]}", TRACE_RECORDER, directory)


async def test_cloudevents_traceparent_reaches_the_function(
    harness: Harness, tmp_path: Path, service_log: io.StringIO
) -> None:
    urn, out = await trace_recorder(harness, tmp_path)
    channel = f"ch{uuid.uuid4().hex[:8]}"
    trigger_id = (await harness.add_trigger(urn, "EVENTGRID", {"channel_name": channel}))["trigger_id"]

    async def post(data: bytes, headers: dict[str, str]) -> str:
        async with harness.http.post(f"/eventgrid/channels/{channel}/events", data=data, headers=headers) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
        (rid,) = answer["events"][0]["request_ids"]
        assert (await harness.wait_terminal(urn, rid))["status"] == "SUCCESS"
        return str(next(line["traceparent"] for line in read_jsonl(out) if line["request_id"] == rid))

    event = {"specversion": "1.0", "id": "e1", "source": "shop", "type": "t", "traceparent": PARENT_A, "data": {}}
    assert await post(json.dumps(event).encode(), STRUCTURED) == PARENT_A
    binary = {"ce-specversion": "1.0", "ce-id": "e2", "ce-source": "shop", "ce-type": "t",
              "Content-Type": "application/json"}  # fmt: skip
    assert await post(b"{}", {**binary, "ce-traceparent": PARENT_B}) == PARENT_B
    assert await post(b"{}", {**binary, "ce-id": "e3", "traceparent": PARENT_A}) == PARENT_A  # the plain HTTP header
    assert await post(b"{}", {**binary, "ce-id": "e4"}) == ""
    # the service log names the trigger and the trace of each invocation
    starts = [line for line in json_lines(service_log.getvalue()) if line["message"].startswith("Start invoke")]
    assert len(starts) == 4 and all(line["trigger_id"] == trigger_id for line in starts)
    assert [line.get("trace_id") for line in starts] == [TRACE_A, TRACE_B, TRACE_A, None]


async def produce_traced(bootstrap: str, topic: str, records: list[tuple[bytes, str | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for value, traceparent in records:
            headers = [("traceparent", traceparent.encode())] if traceparent else None
            await producer.send_and_wait(topic, value, partition=0, headers=headers)
    finally:
        await producer.stop()


async def kafka_trigger(h: Harness, urn: str, bootstrap: str, topic: str) -> None:
    from tests.integration.test_kafka_trigger import create_topics

    await create_topics(bootstrap, [topic])
    data = {"kafka_connect_address": bootstrap, "topic_ids": [topic], "batch_size": 10, "batch_window_ms": 500}
    trigger_id = await h.add_active_trigger(urn, "OPENSOURCEKAFKA", data)

    async def consuming() -> bool:
        state = await h.trigger_state(urn, "OPENSOURCEKAFKA", trigger_id)
        return bool(state.get("partitions"))

    await wait_for(consuming, "the trigger to be assigned its partition")


async def test_kafka_record_traceparent_reaches_the_function(tmp_path: Path, kafka_bootstrap: str) -> None:
    topic = f"traced-{uuid.uuid4().hex[:8]}"
    async with running(make_settings(tmp_path / "data")) as h:
        urn, out = await trace_recorder(h, tmp_path)
        await kafka_trigger(h, urn, kafka_bootstrap, topic)
        await produce_traced(kafka_bootstrap, topic, [(b"one", PARENT_A)])
        (line,) = await wait_lines(out, 1, timeout=60)
        assert line["traceparent"] == PARENT_A and line["messages"] == ["one"]


# -- spans, with an exporter ---------------------------------------------------------------------------------


async def test_spans_form_one_trace_from_the_http_request_to_the_function(
    exported: InMemorySpanExporter, harness: Harness, http_function: HttpFunction
) -> None:
    urn = await create_http_function(harness, http_function)
    rid = await invoke_with_trace(harness, urn, PARENT_A)
    assert (await harness.wait_terminal(urn, rid))["status"] == "SUCCESS"
    spans = {span.name: span for span in exported.get_finished_spans()}
    name = urn.split(":")[-2]
    receive, invoke = spans[f"receive {name}"], spans[f"invoke {name}"]
    assert hex_trace_id(receive) == hex_trace_id(invoke) == TRACE_A
    assert receive.parent is not None and format(receive.parent.span_id, "016x") == PARENT_A.split("-")[2]
    assert invoke.parent is not None and receive.context is not None
    assert invoke.parent.span_id == receive.context.span_id
    assert invoke.attributes is not None and invoke.attributes["faas.invocation_id"] == rid
    # the function continues the invoke span: same trace, the invoke span as its parent
    assert invoke.context is not None
    sent = tracing.parse_traceparent(http_function.traceparents()[0])
    assert sent == (TRACE_A, format(invoke.context.span_id, "016x"), "01")
    assert http_function.calls[0]["tracestate"] == "vendor=1"


async def test_kafka_spans_continue_the_first_record_and_link_the_others(
    exported: InMemorySpanExporter, tmp_path: Path, kafka_bootstrap: str
) -> None:
    topic = f"traced-{uuid.uuid4().hex[:8]}"
    async with running(make_settings(tmp_path / "data")) as h:
        urn, out = await trace_recorder(h, tmp_path)
        await kafka_trigger(h, urn, kafka_bootstrap, topic)
        await produce_traced(kafka_bootstrap, topic, [(b"one", PARENT_A), (b"two", PARENT_B), (b"three", None)])

        async def all_invoked() -> list[dict[str, Any]] | None:
            lines = read_jsonl(out)
            return lines if sorted(m for line in lines for m in line["messages"]) == ["one", "three", "two"] else None

        lines = await wait_for(all_invoked, "the three records to reach the function")
    spans = exported.get_finished_spans()
    first = next(line for line in lines if "one" in line["messages"])
    assert tracing.trace_id_of(first) == TRACE_A  # the first record's trace goes on into the function
    in_a = [s for s in spans if hex_trace_id(s) == TRACE_A]
    assert {s.name.split()[0] for s in in_a} >= {"receive", "invoke"}
    receive = next(s for s in in_a if s.name == f"receive {topic}")
    assert receive.parent is not None and format(receive.parent.span_id, "016x") == PARENT_A.split("-")[2]
    # the second record's context is linked from the first's trace (same poll or same batch), or,
    # fetched and batched on its own, it starts its own invocation in its own trace
    linked = {format(link.context.trace_id, "032x") for s in in_a for link in s.links}
    assert TRACE_B in linked or any(s.name.startswith("invoke") and hex_trace_id(s) == TRACE_B for s in spans)


# -- the envelope's context on both buses ---------------------------------------------------------------------


def traced_envelope() -> InvocationEnvelope:
    return InvocationEnvelope(
        function_urn="urn:fss:local:p:function:default:f:latest",
        payload="{}",
        trace={"traceparent": PARENT_A, "tracestate": "vendor=1"},
        trace_links=[PARENT_B],
    )


async def round_trip(bus: Bus, sub: Subscription, topic: str) -> list[InvocationEnvelope]:
    """Publish a traced envelope now and once delayed (as a retry is); both as read back."""
    sent = traced_envelope()
    await bus.publish(Outgoing(topic, sent.to_bytes(), key=sent.function_urn))
    await bus.publish(Outgoing(topic, sent.to_bytes(), key=sent.function_urn, deliver_at=time.time() + 1.0))

    async def both() -> list[Message] | None:
        got.extend(await sub.fetch(10, 0.2))
        return got if len(got) >= 2 else None

    got: list[Message] = []
    await wait_for(both, "the envelopes to come back")
    return [InvocationEnvelope.from_bytes(m.value) for m in got]


async def test_the_trace_context_survives_the_sqlite_bus(tmp_path: Path) -> None:
    db = Database(tmp_path / "bus.db")
    await db.open()
    bus = SQLiteBus(db, partitions=2, commit_interval=0.01)
    await bus.start()
    try:
        sub = bus.subscribe("g", [INVOCATIONS_TOPIC])
        for env in await round_trip(bus, sub, INVOCATIONS_TOPIC):
            assert (env.trace, env.trace_links) == (traced_envelope().trace, [PARENT_B])
    finally:
        await bus.close()
        await db.close()


async def test_the_trace_context_survives_the_kafka_bus(kafka_bootstrap: str) -> None:
    from tests.integration.test_kafka_bus import kafka_bus, names

    app_id, topic = names()
    async with kafka_bus(kafka_bootstrap, app_id, topic) as (bus, sub):
        for env in await round_trip(bus, sub, topic):
            assert (env.trace, env.trace_links) == (traced_envelope().trace, [PARENT_B])
