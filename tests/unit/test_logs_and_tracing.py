"""Structured log lines (triggerbus.logs) and W3C trace context handling (invoker.tracing)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from invoker import tracing
from invoker.envelope import InvocationEnvelope, StreamItem
from invoker.runtime.context import FunctionContext, FunctionInfo
from invoker.runtime.invoke_log import finish_line, start_line
from triggerbus.logs import JsonFormatter, TextFormatter, configure_logging, current_context, log_context

TRACE_A = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_B = "0af7651916cd43dd8448eb211c80319c"
PARENT_A = f"00-{TRACE_A}-00f067aa0ba902b7-01"
PARENT_B = f"00-{TRACE_B}-b7ad6b7169203331-01"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# -- logs ----------------------------------------------------------------------------------------------


def test_json_lines_carry_the_context_fields(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("outside")
    with log_context(function_urn="urn:fn", trigger_id="t-1"), log_context(request_id="r-1", trigger_id=None):
        logger.warning("inside %s", "block")
        assert current_context() == {"function_urn": "urn:fn", "trigger_id": "t-1", "request_id": "r-1"}
    logger.info("after")
    outside, inside, after = lines(stream)
    assert set(outside) == {"time", "level", "logger", "message"}
    assert inside["message"] == "inside block" and inside["level"] == "WARNING" and inside["logger"] == "tests.logs"
    assert (inside["request_id"], inside["function_urn"], inside["trigger_id"]) == ("r-1", "urn:fn", "t-1")
    assert "request_id" not in after
    assert str(outside["time"]).endswith("Z")


def test_exceptions_and_extra_fields(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise ValueError("broken thing")
    except ValueError:
        logger.exception("it failed", extra={"request_id": "from-extra"})
    (line,) = lines(stream)
    assert line["request_id"] == "from-extra"
    assert "ValueError: broken thing" in str(line["exc"]) and "Traceback" in str(line["exc"])


async def test_concurrent_tasks_keep_their_own_context(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured

    async def one(request_id: str) -> None:
        with log_context(request_id=request_id):
            await asyncio.sleep(0.01)
            logger.info("done %s", request_id)

    await asyncio.gather(*(one(f"r{i}") for i in range(20)))
    assert all(line["message"] == f"done {line['request_id']}" for line in lines(stream))


def test_text_format_and_bad_names() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    with log_context(request_id="r-9"):
        assert TextFormatter().format(record).endswith("x: hello request_id=r-9")
    with pytest.raises(TypeError), log_context(password="nope"):  # type: ignore[arg-type]
        pass
    with pytest.raises(ValueError, match="TRIGGERBUS_LOG_FORMAT"):
        configure_logging("INFO", "xml")


def test_finish_line_says_success_or_failure() -> None:
    assert start_line("r1", "latest", 0).endswith("Start invoke request 'r1', version: latest")
    ok = finish_line("r1", 1.5, 12.0, True, 0)
    assert ok.endswith("Finish invoke request 'r1'(invoke Success), duration: 1.500ms, billing duration: 2ms, "
                       "memory used: 12.000MB")  # fmt: skip
    assert "'r1'(invoke Failed), duration: " in finish_line("r1", 1.5, 12.0, False)


# -- trace context ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (PARENT_A, True),
        (PARENT_A.upper(), True),
        (f"01-{TRACE_A}-00f067aa0ba902b7-01-future", True),  # a later version may add fields
        (f"00-{TRACE_A}-00f067aa0ba902b7-01-extra", False),
        (f"ff-{TRACE_A}-00f067aa0ba902b7-01", False),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", False),
        (f"00-{TRACE_A}-{'0' * 16}-01", False),
        ("00-4bf92f3577b34da6-00f067aa0ba902b7-01", False),
        ("", False),
    ],
)
def test_traceparent_validation(value: str, valid: bool) -> None:
    assert (tracing.parse_traceparent(value) is not None) is valid
    assert bool(tracing.carrier(value, "k=v")) is valid


def test_carriers_from_headers_cloudevents_and_kafka() -> None:
    assert tracing.from_headers({"TraceParent": PARENT_A, "TraceState": "a=1"}) == {
        "traceparent": PARENT_A,
        "tracestate": "a=1",
    }
    assert tracing.from_headers([("traceparent", PARENT_B.encode()), ("other", b"x")]) == {"traceparent": PARENT_B}
    assert tracing.from_headers({"tracestate": "a=1"}) == {}
    event = {"id": "1", "traceparent": PARENT_A}
    assert tracing.from_cloudevent(event, {"traceparent": PARENT_B}) == {"traceparent": PARENT_A}
    assert tracing.from_cloudevent({"id": "1"}, {"traceparent": PARENT_B}) == {"traceparent": PARENT_B}
    assert tracing.trace_id_of({"traceparent": PARENT_B}) == TRACE_B


def test_a_batch_continues_its_first_context_and_links_the_others() -> None:
    parent, links = tracing.parent_and_links([{}, {"traceparent": PARENT_A}, {"traceparent": PARENT_B}, {}] * 2)
    assert parent == {"traceparent": PARENT_A}
    assert links == [PARENT_B]


def test_envelopes_and_items_keep_the_context_on_the_wire() -> None:
    env = InvocationEnvelope(
        function_urn="urn:x", payload="{}", trace={"traceparent": PARENT_A}, trace_links=[PARENT_B]
    )
    back = InvocationEnvelope.from_bytes(env.to_bytes())
    assert back.trace == {"traceparent": PARENT_A} and back.trace_links == [PARENT_B]
    old = json.loads(env.to_bytes())
    del old["trace"], old["trace_links"]  # written before tracing existed
    assert InvocationEnvelope.model_validate(old).trace == {}
    item = StreamItem(item_id="i", trigger_id="t", trigger_type="KAFKA", function_urn="u", data={}, size=1)
    item.trace = {"traceparent": PARENT_B}
    assert StreamItem.model_validate_json(item.model_dump_json()).trace == {"traceparent": PARENT_B}


def test_the_python_context_exposes_the_trace() -> None:
    ctx = FunctionContext("r", 0.0, FunctionInfo(), lambda _: None, {"traceparent": PARENT_A, "tracestate": "a=1"})
    assert (ctx.getTraceParent(), ctx.getTraceState(), ctx.getTraceID()) == (PARENT_A, "a=1", TRACE_A)
    bare = FunctionContext("r", 0.0, FunctionInfo(), lambda _: None)
    assert (bare.getTraceParent(), bare.getTraceID()) == ("", "")


# -- spans -----------------------------------------------------------------------------------------------


def test_without_an_exporter_the_context_passes_through() -> None:
    with tracing.span("receive", {"traceparent": PARENT_A}) as span:
        assert span.carrier == {"traceparent": PARENT_A} and not span.recording
    with tracing.span("receive", None) as span:
        assert span.carrier == {} and span.trace_id is None
    assert tracing.configure_tracing({}) is None


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_tracer_provider(provider)
    yield exporter
    tracing.set_tracer_provider(None)


def test_spans_are_children_of_the_incoming_context(exported: InMemorySpanExporter) -> None:
    with tracing.span("receive", {"traceparent": PARENT_A, "tracestate": "a=1"}, kind="producer") as received:
        assert received.trace_id == TRACE_A and received.carrier["tracestate"] == "a=1"
    with tracing.span("invoke", received.carrier, kind="client", links=[PARENT_B]) as invoked:
        invoked.fail("code_exception: boom")
    receive, invoke = exported.get_finished_spans()
    assert receive.context is not None and invoke.context is not None and invoke.parent is not None
    assert receive.parent is not None and receive.parent.span_id == 0x00F067AA0BA902B7
    assert {format(s.context.trace_id, "032x") for s in (receive, invoke)} == {TRACE_A}
    assert invoke.parent.span_id == receive.context.span_id
    assert [format(link.context.trace_id, "032x") for link in invoke.links] == [TRACE_B]
    assert invoke.status.status_code.name == "ERROR"
    assert tracing.parse_traceparent(invoked.carrier["traceparent"]) == (
        TRACE_A,
        format(invoke.context.span_id, "016x"),
        "01",
    )


def test_a_kafka_poll_gets_one_receive_span(exported: InMemorySpanExporter) -> None:
    items = [
        StreamItem(item_id=str(i), trigger_id="t", trigger_type="KAFKA", function_urn="u", data={}, size=1, trace=t)
        for i, t in enumerate([{}, {"traceparent": PARENT_A}, {"traceparent": PARENT_B}])
    ]
    tracing.receive_items("receive orders", items)
    (span,) = exported.get_finished_spans()
    assert span.context is not None and format(span.context.trace_id, "032x") == TRACE_A
    assert [format(link.context.trace_id, "032x") for link in span.links] == [TRACE_B]
    assert all(tracing.trace_id_of(item.trace) == TRACE_A for item in items)


def test_exporters_are_chosen_by_environment() -> None:
    try:
        assert tracing.configure_tracing({"TRIGGERBUS_OTEL_EXPORTER": "console"}) == "console"
        with tracing.span("x", {"traceparent": PARENT_A}) as span:
            assert span.recording and span.trace_id == TRACE_A
        tracing.shutdown_tracing()
        assert tracing.configure_tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}) == "otlp"
        tracing.shutdown_tracing()  # nothing was recorded: nothing to send
        off = {"TRIGGERBUS_OTEL_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"}
        assert tracing.configure_tracing(off) is None
        with pytest.raises(ValueError, match="otlp, console or none"):
            tracing.configure_tracing({"TRIGGERBUS_OTEL_EXPORTER": "jaeger"})
    finally:
        tracing.set_tracer_provider(None)
