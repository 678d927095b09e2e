"""W3C trace context from the sources to the function, and OpenTelemetry spans when asked for.

A *carrier* is the W3C header pair as a small dict, ``{"traceparent": ..., "tracestate": ...}``
(empty when the source sent none or an invalid one). Sources extract it (HTTP headers,
CloudEvents ``traceparent`` attribute, Kafka record headers), the bus envelope carries it
(:class:`invoker.envelope.InvocationEnvelope` ``trace`` and ``trace_links``), and the
dispatcher hands it to the function: HTTP functions get ``traceparent``/``tracestate``
request headers, Python functions ``context.getTraceParent()``.

Without an exporter (the default) nothing else happens: the incoming context is passed on
as it came, and the OpenTelemetry SDK is not even imported. With
``TRIGGERBUS_OTEL_EXPORTER=otlp|console`` (or a standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), :func:`configure_tracing` installs an SDK tracer
provider and :func:`span` records real spans: a *receive* span where an event enters
(child of the incoming context) and an *invoke* span per attempt (child of the receive
span); the function then gets the invoke span's context, so its own spans nest under it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from invoker.envelope import StreamItem

__all__ = [
    "MAX_LINKS",
    "TRACEPARENT",
    "TRACESTATE",
    "Span",
    "carrier",
    "configure_tracing",
    "from_cloudevent",
    "from_headers",
    "parent_and_links",
    "parse_traceparent",
    "receive_items",
    "set_tracer_provider",
    "shutdown_tracing",
    "span",
    "trace_id_of",
]

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
MAX_LINKS = 128  # the SDK's default span link limit; a batch links at most this many other records
_MAX_TRACESTATE = 512  # W3C: 32 list members; we keep what fits a header comfortably
_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
EXPORTER_ENV = "TRIGGERBUS_OTEL_EXPORTER"

_provider: Any = None  # opentelemetry.sdk.trace.TracerProvider once configured
_tracer: Any = None


# -- carriers ------------------------------------------------------------------------------------


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """``(trace_id, parent_id, flags)`` of a valid W3C ``traceparent``, else None."""
    if not value:
        return None
    match = _TRACEPARENT_RE.match(value.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, flags


def carrier(traceparent: str | None, tracestate: str | None = None) -> dict[str, str]:
    """A validated carrier; empty when ``traceparent`` is missing or invalid."""
    if parse_traceparent(traceparent) is None:
        return {}
    assert traceparent is not None
    found = {TRACEPARENT: traceparent.strip().lower()}
    if tracestate and tracestate.strip() and len(tracestate) <= _MAX_TRACESTATE:
        found[TRACESTATE] = tracestate.strip()
    return found


def trace_id_of(found: Mapping[str, str] | None) -> str | None:
    parsed = parse_traceparent((found or {}).get(TRACEPARENT))
    return parsed[0] if parsed else None


def _text(value: str | bytes | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace")
    return value


def from_headers(headers: Mapping[str, Any] | Iterable[tuple[str, str | bytes | None]] | None) -> dict[str, str]:
    """The carrier in HTTP headers or Kafka record headers (names case-insensitive, bytes values ok)."""
    if not headers:
        return {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    seen: dict[str, str | None] = {}
    for name, value in pairs:
        lowered = str(name).lower()
        if lowered in (TRACEPARENT, TRACESTATE) and lowered not in seen:
            seen[lowered] = _text(value)
    return carrier(seen.get(TRACEPARENT), seen.get(TRACESTATE))


def from_cloudevent(event: Mapping[str, Any], headers: Mapping[str, Any] | None = None) -> dict[str, str]:
    """A CloudEvent's distributed-tracing extension (``traceparent``/``tracestate`` attributes;
    binary mode's ``ce-traceparent`` header becomes that attribute), else the HTTP request's
    own ``traceparent`` header."""
    found = carrier(_attribute(event, TRACEPARENT), _attribute(event, TRACESTATE))
    return found or from_headers(headers)


def _attribute(event: Mapping[str, Any], name: str) -> str | None:
    value = event.get(name)
    return value if isinstance(value, str) else None


def parent_and_links(carriers: Iterable[Mapping[str, str]]) -> tuple[dict[str, str], list[str]]:
    """Several records become one invocation (a batch): the first record's context is the
    parent, the other distinct ones become span links (at most :data:`MAX_LINKS`)."""
    parent: dict[str, str] = {}
    links: list[str] = []
    for found in carriers:
        traceparent = found.get(TRACEPARENT) if found else None
        if not traceparent:
            continue
        if not parent:
            parent = dict(found)
        elif traceparent != parent[TRACEPARENT] and traceparent not in links and len(links) < MAX_LINKS:
            links.append(traceparent)
    return parent, links


# -- spans ---------------------------------------------------------------------------------------


def configure_tracing(env: Mapping[str, str] | None = None) -> str | None:
    """Install an SDK tracer provider if an exporter is configured; returns its name or None.

    ``TRIGGERBUS_OTEL_EXPORTER``: ``otlp`` (OTLP over HTTP; endpoint, headers and the rest from
    the standard ``OTEL_EXPORTER_OTLP_*`` variables), ``console`` (spans as JSON on stdout) or
    ``none``. Unset, a standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` selects ``otlp``.
    """
    env = os.environ if env is None else env
    name = env.get(EXPORTER_ENV, "").strip().lower()
    if not name and (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        name = "otlp"
    if name in ("", "none"):
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    elif name == "console":
        exporter = ConsoleSpanExporter()
    else:
        raise ValueError(f"{EXPORTER_ENV} must be otlp, console or none, not {name!r}")
    provider = TracerProvider(resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "triggerbus")}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    set_tracer_provider(provider)
    return name


def set_tracer_provider(provider: Any) -> None:
    """Use this OpenTelemetry ``TracerProvider`` for Triggerbus spans (None: propagate only).

    Ours, not the global one: the service never makes its spans current in a shared context,
    so they cannot leak into other tasks.
    """
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer("triggerbus") if provider is not None else None


def shutdown_tracing() -> None:
    """Flush and stop the configured provider (at service shutdown)."""
    provider = _provider
    set_tracer_provider(None)
    if provider is not None:
        provider.shutdown()


class Span:
    """A span in progress, or a stand-in that only passes the context on (no exporter)."""

    __slots__ = ("_span", "carrier")

    def __init__(self, downstream: dict[str, str], otel_span: Any = None) -> None:
        self.carrier = downstream  # what to send to the next hop
        self._span = otel_span

    @property
    def trace_id(self) -> str | None:
        return trace_id_of(self.carrier)

    @property
    def recording(self) -> bool:
        return self._span is not None

    def set_attribute(self, name: str, value: str | int | float | bool) -> None:
        if self._span is not None:
            self._span.set_attribute(name, value)

    def fail(self, description: str) -> None:
        if self._span is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, description[:500]))


@contextlib.contextmanager
def span(
    name: str,
    parent: Mapping[str, str] | None,
    *,
    kind: str = "internal",
    links: Sequence[str] = (),
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[Span]:
    """A span named ``name``, child of the ``parent`` carrier (a new trace without one).

    ``kind``: internal | server | client | producer | consumer. ``links``: traceparents of
    other contexts this work also continues (the other records of a batch). Without a
    configured exporter it yields the parent carrier unchanged and costs nothing.
    """
    tracer = _tracer
    if tracer is None:
        yield Span(dict(parent or {}))
        return
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    span_links = []
    for traceparent in links[:MAX_LINKS]:
        linked = trace.get_current_span(propagator.extract({TRACEPARENT: traceparent})).get_span_context()
        if linked.is_valid:
            span_links.append(trace.Link(linked))
    otel_span = tracer.start_span(
        name,
        context=propagator.extract(dict(parent or {})),
        kind=getattr(trace.SpanKind, kind.upper()),
        links=span_links,
        attributes=dict(attributes or {}),
    )
    downstream: dict[str, str] = {}
    propagator.inject(downstream, context=trace.set_span_in_context(otel_span))
    handle = Span(downstream, otel_span)
    try:
        yield handle
    except BaseException as exc:
        otel_span.record_exception(exc)
        handle.fail(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        otel_span.end()


def receive_items(name: str, items: Sequence[StreamItem], attributes: Mapping[str, str | int] | None = None) -> None:
    """Source records fetched together (a Kafka poll of one partition) enter the bus.

    Without an exporter each item keeps its own record's context. With one, a single
    *receive* span covers them (parent: the first record's context, links: the others')
    and every item carries that span's context on, to the invoke span of its batch.
    """
    if _tracer is None or not items:
        return
    parent, links = parent_and_links(item.trace for item in items)
    with span(name, parent, kind="consumer", links=links, attributes=attributes) as received:
        for item in items:
            item.trace = received.carrier
