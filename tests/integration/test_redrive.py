"""Redrive through the real service: a FAIL/DISCARD record runs again under a new, linked request id."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from schemas.records import AsyncStatus
from tests.integration.conftest import PROJECT, Harness
from tests.support.redrive import create_marker_function

pytestmark = pytest.mark.integration


async def redrive(harness: Harness, urn: str, request_id: str) -> tuple[int, dict[str, str]]:
    async with harness.http.post(harness.fgs(f"/functions/{urn}/async-invocations/{request_id}/redrive")) as resp:
        return resp.status, dict(await resp.json())


async def test_redrive_runs_the_original_payload_under_a_linked_request_id(harness: Harness, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    urn = await create_marker_function(harness, "flaky", marker)
    event = {"order": 42, "note": "<b>x</b>"}
    old = await harness.invoke_async(urn, event)
    failed = await harness.wait_terminal(urn, old)
    assert failed["status"] == "FAIL" and failed["error_code"] == 4101

    marker.unlink()
    status, body = await redrive(harness, urn, old)
    assert status == 202, body
    new = body["request_id"]
    assert body == {"request_id": new, "redrive_of": old} and new != old

    done = await harness.wait_terminal(urn, new)
    assert done["status"] == "SUCCESS"
    assert done["redrive_of"] == old
    assert done["payload"] == failed["payload"]
    assert done["response"] and '"order": 42' in done["response"]
    assert (await harness.record(urn, old))["status"] == "FAIL"  # the old record is left as it was

    async with harness.http.get(harness.fgs(f"/functions/{urn}/async-invocations"), params={"redrive_of": old}) as resp:
        listing = await resp.json()
    assert [r["request_id"] for r in listing["invocations"]] == [new] and listing["count"] == 1

    async with harness.http.get(f"/v3/{PROJECT}/traces", params={"trace_name": "redriveAsyncInvocation"}) as resp:
        traces = (await resp.json())["traces"]
    assert len(traces) == 1 and traces[0]["code"] == 202


async def test_redrive_refuses_records_that_did_not_fail(harness: Harness, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    urn = await create_marker_function(harness, "flaky2", marker)
    marker.unlink()
    ok = await harness.invoke_async(urn, {})
    assert (await harness.wait_terminal(urn, ok))["status"] == "SUCCESS"
    status, body = await redrive(harness, urn, ok)
    assert status == 400
    assert body["error_code"] == "FSS.0400"
    assert "SUCCESS" in body["error_msg"] and "only FAIL or DISCARD" in body["error_msg"]

    status, body = await redrive(harness, urn, "no-such-request")
    assert status == 404 and body["error_code"] == "FSS.0404"


async def test_redrive_of_a_discarded_record(harness: Harness, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    urn = await create_marker_function(harness, "slowpoke", marker)
    marker.unlink()
    record = await harness.service.store.get_record(await harness.invoke_async(urn, {"n": 1}))
    assert record is not None
    await harness.wait_terminal(urn, record.request_id)
    # A DISCARD record (as if its event had aged out), then redriven.
    await harness.service.store.update_record(
        record.request_id,
        status=AsyncStatus.DISCARD,
        error_code=4408,
        condition="EventAgeExceeded",
        end_time=time.time(),
    )
    status, body = await redrive(harness, urn, record.request_id)
    assert status == 202, body
    assert (await harness.wait_terminal(urn, body["request_id"]))["status"] == "SUCCESS"
