"""Recording functions: deployed functions that append what they receive to a JSON-lines file.

A test hands the file's path to the function in its user data (``"out"``), lets events flow, and
reads the file back (:func:`read_jsonl`) to see exactly what the function got, in order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_for

# Appends {"event", "request_id"} as one JSON line to the file named by user_data "out".
REQUEST_RECORDER = """
import json, os
def handler(event, context):
    line = json.dumps({"event": event, "request_id": context.getRequestID()})
    fd = os.open(context.getUserData("out"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (line + "\\n").encode())
    os.close(fd)
    return "ok"
"""

# For batch events with records[].messages[] (Kafka, RabbitMQ): appends each event it gets as one JSON
# line to user_data "out". A batch with a message starting "BLOCK" first waits for the file named by
# user_data "gate" (at most user_data "gate_s" seconds, default 8); "SLOW" takes 50 ms; "POISON" fails
# after being recorded.
BATCH_RECORDER = """
import json, os, time
def handler(event, context):
    messages = [m for r in event.get("records", []) for m in r.get("messages", [])]
    if any(m.startswith("BLOCK") for m in messages):
        gate = context.getUserData("gate")
        deadline = time.time() + float(context.getUserData("gate_s") or 8)
        while not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.05)
    if any(m.startswith("SLOW") for m in messages):
        time.sleep(0.05)
    fd = os.open(context.getUserData("out"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (json.dumps(event) + "\\n").encode())
    os.close(fd)
    if any(m.startswith("POISON") for m in messages):
        raise ValueError("poison message")
    return "ok"
"""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line written to ``path`` so far (none if the file does not exist yet).

    A last line without its newline is being written right now (or its writer was killed mid-write,
    and its invocation will run again): it is left for a later read.
    """
    if not path.exists():
        return []
    complete, _, _ = path.read_text().rpartition("\n")
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


async def wait_lines(path: Path, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The lines of ``path`` once it holds at least ``count`` of them (polled until ``timeout``)."""

    async def enough() -> list[dict[str, Any]] | None:
        lines = read_jsonl(path)
        return lines if len(lines) >= count else None

    return list(await wait_for(enough, f"{count} line(s) in {path.name}", timeout, interval=0.05))


def batch_messages(path: Path) -> list[str]:
    """The messages of every record of every batch event (Kafka, RabbitMQ) written to ``path``, in order."""
    return [m for event in read_jsonl(path) for record in event["records"] for m in record["messages"]]
