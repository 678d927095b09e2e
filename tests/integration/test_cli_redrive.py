"""``triggerbus records redrive`` (one id, several, or every FAIL record of a window) and
``triggerbus triggers list`` with state, last error and lag, against a real service."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.integration.conftest import Harness
from tests.integration.test_cli import cli
from tests.support.redrive import create_marker_function

pytestmark = pytest.mark.integration

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


async def test_bulk_redrive_of_the_failed_records(harness: Harness, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    urn = await create_marker_function(harness, "flaky", marker)
    failed = [await harness.invoke_async(urn, {"n": n}) for n in range(3)]
    for request_id in failed:
        assert (await harness.wait_terminal(urn, request_id))["status"] == "FAIL"
    marker.unlink()

    out = await asyncio.to_thread(
        cli, "records", "redrive", "flaky", "--status", "FAIL", "--since", "1h", endpoint=harness.base_url
    )
    assert "3 redriven, 0 refused" in out.stdout
    pairs = dict(re.findall(rf"({UUID})\W+->\W+({UUID})", out.stdout))
    assert set(pairs) == set(failed)
    for old, new in pairs.items():
        done = await harness.wait_terminal(urn, new)
        assert (done["status"], done["redrive_of"]) == ("SUCCESS", old)

    # One id: a SUCCESS record is refused with the API's reason, exit status 1.
    one = next(iter(pairs.values()))
    refused = await asyncio.to_thread(
        cli, "records", "redrive", "flaky", one, failed[0], endpoint=harness.base_url, check=False
    )
    assert refused.returncode == 1
    assert "1 redriven, 1 refused" in refused.stdout
    assert "FSS.0400" in refused.stdout and "only FAIL or DISCARD" in refused.stdout

    usage = await asyncio.to_thread(cli, "records", "redrive", "flaky", endpoint=harness.base_url, check=False)
    assert usage.returncode == 2 and "--status" in usage.stderr


async def test_triggers_list_shows_state_and_position(harness: Harness) -> None:
    urn = await harness.create_function("ticker", "def handler(event, context):\n    return 1\n")
    body = {"trigger_type_code": "TIMER", "event_data": {"name": "t", "schedule_type": "Rate", "schedule": "3m"}}
    async with harness.http.post(harness.fgs(f"/triggers/{urn}"), json=body) as resp:
        trigger_id = (await resp.json())["trigger_id"]
    out = await asyncio.to_thread(cli, "triggers", "list", endpoint=harness.base_url)
    assert trigger_id in out.stdout and "ticker" in out.stdout
    assert "ACTIVE" in out.stdout and "next fire" in out.stdout and "unknown" in out.stdout
    async with harness.http.put(
        harness.fgs(f"/triggers/{urn}/TIMER/{trigger_id}"), json={"trigger_status": "DISABLED"}
    ) as resp:
        assert resp.status == 200
    out = await asyncio.to_thread(cli, "triggers", "list", "ticker", endpoint=harness.base_url)
    assert "DISABLED" in out.stdout
