"""Misbehaving functions against the real service: precise causes, isolation, bounded retries.

Functions that hang, kill their worker, allocate without bound, return 10 MB or raise on every
call run next to a well-behaved one. Every record names its precise cause (docs/api.md, record
error codes), the well-behaved function completes all of its invocations (also one in flight
while a worker dies), no worker process or zombie is left behind, and a function failing
everything gets at most its retry budget of retries (invoker/retry_budget.py). Waits are
bounded only to catch hangs; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import test_http_functions
from tests.integration.conftest import Harness, make_settings, running
from tests.integration.test_http_functions import FakeFunction
from tests.support.waiting import bounded_waits

pytestmark = pytest.mark.integration

wait_for, wait_until = bounded_waits(90.0)
function_server = test_http_functions.function_server  # the fake HTTP function, a fixture

HANG = """
import time
def handler(event, context):
    time.sleep(10**6)
"""

CRASH = """
import os, signal
def handler(event, context):
    print("about to die", event["how"], flush=True)
    if event["how"] == "exit":
        os._exit(1)
    os.kill(os.getpid(), signal.SIGKILL)
"""

HOG = """
leaked = []
def handler(event, context):
    while True:
        leaked.append(b"x" * (4 << 20))
"""

HUGE = """
def handler(event, context):
    return "x" * (10 * 1024 * 1024)
"""

RAISE = """
def handler(event, context):
    raise ValueError("always " + str(event["i"]))
"""

GOOD = """
import json, os, time
def handler(event, context):
    gate = event.get("gate")
    if gate:  # in flight until the test opens the gate (bounded: the test fails on a hang anyway)
        open(gate + ".started", "w").close()
        deadline = time.time() + 60
        while not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.02)
    return {"i": event["i"], "pid": os.getpid()}
"""

# name -> (source, extra CreateFunction fields, events, expected error code, expected message part)
BAD: dict[str, tuple[str, dict[str, Any], list[dict[str, Any]], int, str]] = {
    "hang": (HANG, {"timeout": 3}, [{"i": 0}, {"i": 1}], 4104, "function invocation timed out after 3 s"),
    "crash": (
        CRASH,
        {},
        [{"how": "exit"}, {"how": "kill"}, {"how": "exit"}],
        4106,
        "worker process exited with ",
    ),
    "hog": (HOG, {"memory_size": 128}, [{"i": 0}, {"i": 1}], 4105, "runtime memory limit exceeded"),
    "huge": (HUGE, {}, [{"i": 0}, {"i": 1}], 4107, "over the limit of 6291456 bytes"),
    "raise": (RAISE, {}, [{"i": i} for i in range(3)], 4101, "ValueError: always "),
}


def children(pid: int) -> dict[int, str]:
    """Child processes of ``pid``: pid -> state letter (``Z`` = zombie)."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid:
            found[int(entry)] = state
    return found


@pytest.fixture
async def roomy(tmp_path: Path) -> AsyncIterator[Harness]:
    """A service whose pool fits every function's instance limit (2 each) at once."""
    async with running(make_settings(tmp_path / "data", max_workers=14)) as h:
        yield h


async def test_misbehaving_functions_get_precise_causes_and_do_not_hurt_others(roomy: Harness, tmp_path: Path) -> None:
    h = roomy
    before = children(os.getpid())
    good = await h.create_function("good", GOOD, max_instance_num=2)
    urns: dict[str, str] = {}
    for name, (source, extra, _, _, _) in BAD.items():
        urns[name] = await h.create_function(name, source, max_instance_num=2, **extra)
        await h.set_async_config(urns[name], {"max_async_retry_attempts": 1})

    # One good invocation in flight (its worker busy) while the bad functions run and crash.
    gate = tmp_path / "gate"
    held = await h.invoke_async(good, {"i": -1, "gate": str(gate)})
    await wait_until(Path(f"{gate}.started").exists, "the held invocation to start")

    bad_ids = {
        name: [await h.invoke_async(urns[name], e) for e in events] for name, (_, _, events, _, _) in BAD.items()
    }
    n_good = 40
    good_ids: list[str] = []
    for i in range(n_good):  # interleaved with the failures, not after them
        good_ids.append(await h.invoke_async(good, {"i": i}))
        if i % 10 == 0:
            await asyncio.sleep(0.2)

    crash_records = await asyncio.gather(*(h.wait_terminal(urns["crash"], r, timeout=90) for r in bad_ids["crash"]))
    assert all(r["status"] == "FAIL" for r in crash_records)
    gate.touch()  # the held invocation continues on a worker that outlived every crash so far

    for name, (_, _, _, code, part) in BAD.items():
        records = await asyncio.gather(*(h.wait_terminal(urns[name], r, timeout=90) for r in bad_ids[name]))
        for record in records:
            assert record["status"] == "FAIL", (name, record)
            assert record["attempts"] == 2, (name, record)  # max_async_retry_attempts=1: retried once
            assert record["error_code"] == code, (name, record)
            assert part in record["error_message"], (name, record)
            for attempt in record["attempt_details"]:
                assert (attempt["status"], attempt["error_code"]) == ("FAIL", code), (name, attempt)
                assert part in attempt["error_message"], (name, attempt)

    good_records = await asyncio.gather(*(h.wait_terminal(good, r, timeout=90) for r in [held, *good_ids]))
    assert [r["status"] for r in good_records] == ["SUCCESS"] * (n_good + 1)
    assert all(r["attempts"] == 1 for r in good_records)  # none of them needed a retry

    # Messages name the precise detail of each cause.
    crash_messages = sorted({r["error_message"].split(";")[0] for r in crash_records})
    assert crash_messages == ["worker process exited with exit code 1", "worker process exited with signal SIGKILL"]

    # Every worker of a failed attempt is gone and reaped: what is left is the pool's live workers.
    runtime = h.service.python_runtime

    def leftovers() -> dict[int, str]:
        return {p: s for p, s in children(os.getpid()).items() if p not in before}

    await wait_until(lambda: set(leftovers()) <= set(runtime.worker_pids()), "dead workers to be reaped")
    assert "Z" not in leftovers().values()
    assert not set(runtime.worker_pids()) & {p for p in before}
    for name in ("hang", "crash", "hog"):  # their workers were killed: none is kept warm
        assert runtime.worker_pids(urns[name]) == [], name
    health = await h.http.get("/health")
    assert health.status == 200


async def test_a_retry_storm_is_bounded_by_the_budget_and_nothing_is_lost(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", retry_budget_ratio=0.1, retry_budget_min=3, retry_budget_window_s=600)
    async with running(settings) as h:
        urn = await h.create_function("storm", RAISE)
        retries = 3
        await h.set_async_config(urn, {"max_async_retry_attempts": retries})
        n = 40
        ids = [await h.invoke_async(urn, {"i": i}) for i in range(n)]
        records = [await h.wait_terminal(urn, r, timeout=90) for r in ids]

    assert [r["status"] for r in records] == ["FAIL"] * n  # every invocation ends, none is lost
    assert all(r["error_code"] == 4101 for r in records)  # the cause stays the function's exception
    attempts = sum(r["attempts"] for r in records)
    budget = 3 + 0.1 * n  # floor + ratio x invocations in the window
    assert n < attempts <= n + budget  # without the budget it would be n x (1 + retries) = 160
    refused = [r for r in records if "retry budget exhausted" in r["error_message"]]
    assert len(refused) >= n - budget  # each invocation the budget stopped says so, with its last error
    assert all("last error: ValueError: always " in r["error_message"] for r in refused)
    assert all(r["attempts"] < 1 + retries for r in refused)


async def test_a_429_is_a_throttle_and_its_retry_after_is_capped(tmp_path: Path, function_server: FakeFunction) -> None:
    # Retry-After asks for a day; the cap (TRIGGERBUS_RETRY_AFTER_MAX_S, here 1 s) brings the retry back
    # at once. Without the cap the bounded wait below would fail.
    async with running(make_settings(tmp_path / "data", retry_after_max_s=1.0)) as h:
        urn = await h.create_function("web", "", runtime="http", code_url=function_server.url)
        function_server.throttles, function_server.retry_after = 1, "86400"
        rid = await h.invoke_async(urn, {"mode": "throttle"})
        record = await h.wait_terminal(urn, rid, timeout=30)
        async with h.http.get("/metrics") as resp:
            metrics = await resp.text()

    assert record["status"] == "SUCCESS"
    first, second = record["attempt_details"]
    assert (first["error_code"], first["error_message"]) == (4290, "HTTP function answered 429 Too Many Requests")
    assert second["status"] == "SUCCESS"
    throttled = [line for line in metrics.splitlines() if 'reason="function_throttled"' in line and 'web"' in line]
    assert throttled and throttled[0].endswith(" 1.0")  # counted as a throttle (rejectcount) ...
    assert 'cause="throttled"' not in metrics  # ... not as a function error
