"""The destination event and config-time destination checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from invoker.destinations import build_event, check_no_cycle, check_supported
from invoker.runtime.base import ErrorCategory, InvocationError, InvocationResult
from schemas.async_config import AsyncInvokeConfig, DestinationConfig, DestinationKind, FuncAsyncDestinationConfig
from schemas.destination import DestinationEvent
from schemas.errors import FSSError

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"


@pytest.mark.parametrize("name", ["async_destination_hw", "async_destination_otc_real"])
def test_documented_destination_events_round_trip_exactly(name: str) -> None:
    sample = json.loads((GOLDEN / f"{name}.json").read_text())
    assert DestinationEvent.model_validate(sample).dump() == sample


def test_success_event_matches_the_documented_sample() -> None:
    sample = json.loads((GOLDEN / "async_destination_hw.json").read_text())
    request_id = sample["request_context"]["request_id"]
    event = build_event(
        request_id=request_id,
        function_urn=sample["request_context"]["function_urn"],
        payload="",
        result=InvocationResult(request_id, b'"hello world!"'),
        attempts=0,
        now=1597924800.0,  # 2020-08-20T12:00:00Z
    )
    assert event.dump() == sample


def test_failure_event_matches_the_real_capture_shape() -> None:
    sample = json.loads((GOLDEN / "async_destination_otc_real.json").read_text())
    error = InvocationError(ErrorCategory.CODE_EXCEPTION, "boom", error_type="ObsException", stack=["at x"])
    body = json.dumps(error.as_payload()).encode()
    event = build_event(
        request_id="r1",
        function_urn="urn:fss:eu-de:p:function:default:f:latest",
        payload=sample["request_payload"],
        result=InvocationResult("r1", body, error),
        attempts=1,
        condition="UnhandledInvocationError",
    ).dump()
    assert set(event) == set(sample)
    assert set(event["request_context"]) == set(sample["request_context"])
    assert event["request_context"]["condition"] == sample["request_context"]["condition"]
    assert event["response_context"] == {"status_code": 500, "function_error": ""}
    assert json.loads(event["response_payload"]) == {
        "errorMessage": "boom",
        "errorType": "ObsException",
        "stackTrace": ["at x"],
    }
    assert event["request_payload"] == sample["request_payload"]


def test_non_code_failures_name_the_error() -> None:
    error = InvocationError(ErrorCategory.TIMEOUT, "function invocation timed out after 3 s")
    event = build_event(
        request_id="r",
        function_urn="u",
        payload="{}",
        result=InvocationResult("r", b"{}", error),
        attempts=2,
        condition="InvocationTimeout",
    ).dump()
    assert event["response_context"] == {
        "status_code": 500,
        "function_error": "function invocation timed out after 3 s",
    }
    assert event["request_context"]["approximate_invoke_count"] == 2


def config(urn: str, success: str | None = None, failure: str | None = None) -> AsyncInvokeConfig:
    def dest(target: str | None) -> DestinationConfig | None:
        if target is None:
            return None
        return DestinationConfig(destination="FunctionGraph", param=json.dumps({"func_urn": target}))

    return AsyncInvokeConfig(
        func_urn=urn, destination_config=FuncAsyncDestinationConfig(on_success=dest(success), on_failure=dest(failure))
    )


A, B, C = (f"urn:fss:r:p:function:default:{n}" for n in "abc")


def test_cycle_through_success_and_failure_edges_is_refused() -> None:
    others = {A: config(A, success=B + ":latest"), B: config(B, failure=C + ":latest")}
    with pytest.raises(FSSError) as err:
        check_no_cycle(C + ":latest", config(C, success=A), others)
    message = err.value.message
    assert message.startswith("destination_config would create an invocation cycle: ")
    assert f"{C} -> {A} (on_success) -> {B} (on_success) -> {C} (on_failure)" in message


def test_self_destination_is_a_cycle() -> None:
    with pytest.raises(FSSError):
        check_no_cycle(A, config(A, failure=A), {})


def test_chains_and_diamonds_are_fine() -> None:
    others = {B: config(B, success=C), C: config(C)}
    check_no_cycle(A, config(A, success=B, failure=C), others)


def test_unavailable_destination_kinds_are_refused() -> None:
    smn = AsyncInvokeConfig(
        func_urn=A,
        destination_config=FuncAsyncDestinationConfig(
            on_failure=DestinationConfig(destination="SMN", param='{"topic_urn": "urn:smn:r:p:topic"}')
        ),
    )
    with pytest.raises(FSSError) as err:
        check_supported(smn, {DestinationKind.FUNCTIONGRAPH, DestinationKind.OBS})
    assert err.value.message.startswith("destination_config.on_failure.destination: SMN is not available")
    check_supported(smn, {DestinationKind.SMN})
