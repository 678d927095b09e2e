"""Structured service logs: one JSON object per line, with the invocation it concerns.

Every line carries ``time``, ``level``, ``logger`` and ``message``; ``request_id``,
``function_urn``, ``trigger_id`` and ``trace_id`` are added when the code that logs runs
inside :func:`log_context` (the invoker, the dispatcher and the connectors set it), and
``exc`` holds the traceback of a logged exception. ``TRIGGERBUS_LOG_FORMAT=text`` keeps
classic lines, with the same fields appended as ``key=value``.

The context lives in a :class:`contextvars.ContextVar`, so it follows asyncio tasks: a task
started inside a ``log_context`` block inherits it, and concurrent invocations never see
each other's ids.

What goes into a line is the message the code logged, nothing more: callers log ids, URNs
and counts, never connection strings, tokens or trigger ``event_data`` (which may hold
passwords).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

__all__ = ["CONTEXT_FIELDS", "JsonFormatter", "TextFormatter", "configure_logging", "current_context", "log_context"]

CONTEXT_FIELDS = ("request_id", "function_urn", "trigger_id", "trace_id")
FORMAT_ENV = "TRIGGERBUS_LOG_FORMAT"

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("triggerbus_log_context", default=None)


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Add fields (``request_id``, ``function_urn``, ``trigger_id``, ``trace_id``) to every
    line logged inside the block; nested blocks add to (and may override) the outer ones.
    ``None`` or empty values are ignored."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise TypeError(f"log_context: unknown fields {sorted(unknown)}")
    merged = {**(_context.get() or {}), **{k: str(v) for k, v in fields.items() if v}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, str]:
    """The fields :func:`log_context` set for the running code (a copy)."""
    return dict(_context.get() or {})


def _fields(record: logging.LogRecord) -> dict[str, str]:
    """Context fields of a record: the log_context, overridden by ``extra={...}`` of the call."""
    fields = dict(_context.get() or {})
    for name in CONTEXT_FIELDS:
        value = record.__dict__.get(name)
        if value:
            fields[name] = str(value)
    return fields


def _iso(created: float) -> str:
    moment = datetime.fromtimestamp(created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", [request_id, function_urn, trigger_id, trace_id], [exc]}``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(_fields(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The classic ``time level logger: message`` line, plus ``key=value`` context fields."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if not fields:
            return line
        head, sep, tail = line.partition("\n")  # fields stay on the message line, before a traceback
        return head + " " + " ".join(f"{k}={v}" for k, v in fields.items()) + sep + tail


def configure_logging(level: str = "INFO", fmt: str | None = None, stream: Any = None) -> logging.Handler:
    """Send every log line to stderr (or ``stream``) as JSON (default) or text.

    ``fmt`` defaults to ``TRIGGERBUS_LOG_FORMAT`` (``json`` | ``text``). Replaces the
    root logger's handlers, so calling it twice does not duplicate lines.
    """
    chosen = (fmt or os.environ.get(FORMAT_ENV) or "json").strip().lower()
    if chosen not in ("json", "text"):
        raise ValueError(f"{FORMAT_ENV} must be 'json' or 'text', not {chosen!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
