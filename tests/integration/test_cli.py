"""The ``triggerbus`` command against a real service, and the offline cron preview."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import PROJECT, ROOT, TOKEN, Harness

pytestmark = pytest.mark.integration


def cli(*args: str, endpoint: str = "", check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRIGGERBUS_TOKEN": TOKEN, "TRIGGERBUS_PROJECT": PROJECT,
           "COLUMNS": "200"}  # fmt: skip
    if endpoint:
        env["TRIGGERBUS_ENDPOINT"] = endpoint
    proc = subprocess.run(
        [sys.executable, "-m", "triggerbus.cli", *args], capture_output=True, text=True, env=env, timeout=60
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.parametrize(
    ("expression", "start", "expected"),
    [
        ("CRON_TZ=Asia/Shanghai 0 0 12 * * *", "2024-05-01T13:00:00+08:00",
         ["2024-05-02T12:00:00+08:00", "2024-05-03T12:00:00+08:00"]),
        ("CRON_TZ=Asia/Shanghai 0 30 12 * * *", "2024-05-01T00:00:00+08:00",
         ["2024-05-01T12:30:00+08:00", "2024-05-02T12:30:00+08:00"]),
        ("CRON_TZ=Asia/Shanghai 0 26,29,33 * * *", "2024-05-01T10:27:00+08:00",
         ["2024-05-01T10:29:00+08:00", "2024-05-01T10:33:00+08:00", "2024-05-01T11:26:00+08:00"]),
        ("CRON_TZ=Asia/Shanghai 0 30 12 ? * MON-FRI", "2024-05-03T13:00:00+08:00",
         ["2024-05-06T12:30:00+08:00", "2024-05-07T12:30:00+08:00"]),
        ("CRON_TZ=Asia/Shanghai 0 0/5 12-14 ? * MON-FRI", "2024-05-03T14:50:00+08:00",
         ["2024-05-03T14:55:00+08:00", "2024-05-06T12:00:00+08:00", "2024-05-06T12:05:00+08:00"]),
        ("CRON_TZ=Asia/Shanghai 0 0 12 ? JAN,FEB,MAR,APR *", "2024-04-30T12:00:00+08:00",
         ["2025-01-01T12:00:00+08:00", "2025-01-02T12:00:00+08:00"]),
        ("@every 1h30m", "2024-05-01T00:00:00Z", ["2024-05-01T01:30:00+00:00", "2024-05-01T03:00:00+00:00"]),
        ("3m", "2024-05-01T00:00:00Z", ["2024-05-01T00:03:00+00:00", "2024-05-01T00:06:00+00:00"]),
    ],
)  # fmt: skip
def test_cron_next_previews_the_doc_examples(expression: str, start: str, expected: list[str]) -> None:
    out = cli("cron", "next", expression, "--count", str(len(expected)), "--from", start).stdout
    assert out.split() == expected


def test_cron_next_explains_bad_expressions() -> None:
    proc = cli("cron", "next", "* * * * * * * *", check=False)
    assert proc.returncode == 2
    assert "expected 5 or 6 fields" in proc.stderr


def test_cron_next_marks_dst_shifts() -> None:
    out = cli("cron", "next", "CRON_TZ=Europe/Berlin 0 30 2 * * *", "-n", "2", "--from", "2026-03-28T12:00:00Z",
              "--notes").stdout  # fmt: skip
    assert out.splitlines() == ["2026-03-29T03:00:00+02:00  # dst-gap-shifted", "2026-03-30T02:30:00+02:00"]


async def test_walkthrough_commands(harness: Harness, tmp_path: Path) -> None:
    code = tmp_path / "fn"
    code.mkdir()
    (code / "index.py").write_text(
        "def handler(event, context):\n"
        "    print('processing', event)\n"
        "    return {'greeting': 'hello ' + event.get('name', context.getUserData('default_name'))}\n"
    )
    endpoint = harness.base_url

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return cli(*args, endpoint=endpoint, check=check)

    created = await asyncio.to_thread(run, "functions", "create", "greeter", "--code", str(code),
                                      "--user-data", "default_name=world")  # fmt: skip
    assert "urn:fss:local:proj1:function:default:greeter:latest" in created.stdout
    listing = await asyncio.to_thread(run, "functions", "list")
    assert "greeter" in listing.stdout

    sync = await asyncio.to_thread(run, "invoke", "greeter", "--data", '{"name": "Ada"}', "--log")
    assert json.loads(sync.stdout) == {"greeting": "hello Ada"}
    assert "Start invoke request" in sync.stderr and "processing" in sync.stderr

    accepted = await asyncio.to_thread(run, "invoke", "greeter", "--async")
    request_id = accepted.stdout.split()[-1]
    record = await harness.wait_terminal(harness.urn("greeter"), request_id)
    assert json.loads(record["response"]) == {"greeting": "hello world"}

    timer = await asyncio.to_thread(run, "triggers", "add-timer", "greeter", "--cron", "@every 1s", "--user-event", "x")
    assert "TIMER trigger" in timer.stdout
    apig = await asyncio.to_thread(run, "triggers", "add-apig", "greeter", "--path", "/greet")
    assert f"{endpoint}/apig/greet" in apig.stdout
    triggers = await asyncio.to_thread(run, "triggers", "list", "greeter")
    assert "TIMER" in triggers.stdout and "APIG" in triggers.stdout

    await asyncio.sleep(1.5)
    records = await asyncio.to_thread(run, "records", "list", "greeter", "--status", "SUCCESS")
    assert "SUCCESS" in records.stdout
    shown = await asyncio.to_thread(run, "records", "show", "greeter", request_id)
    assert request_id in shown.stdout and "Finish invoke request" in shown.stdout

    configured = await asyncio.to_thread(run, "async-config", "greeter", "--retries", "2", "--max-age", "600")
    assert '"max_async_retry_attempts": 2' in configured.stdout

    failed = await asyncio.to_thread(run, "invoke", "missing-fn", check=False)
    assert failed.returncode == 1
    assert "FSS.0404" in failed.stderr
