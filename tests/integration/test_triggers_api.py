"""Trigger management API: create/list/get/update/delete, status rules, validation, audit, secrets."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Harness

pytestmark = pytest.mark.integration

FN = "def handler(event, context):\n    return event\n"


def timer(schedule: str = "3m", schedule_type: str = "Rate", **extra: object) -> dict:
    return {
        "trigger_type_code": "TIMER",
        "event_type_code": "MessageCreated",
        "event_data": {"name": "Timer-l8v2", "schedule": schedule, "schedule_type": schedule_type, **extra},
    }


def apig(path: str = "/hello", **extra: object) -> dict:
    data = {
        "name": "API_hello",
        "path": path,
        "req_method": "ANY",
        "auth": "NONE",
        "protocol": "HTTPS",
        "match_mode": "NORMAL",
        "env_name": "RELEASE",
        "type": 1,
        "func_info": {"timeout": 5000},
    }
    data.update(extra)
    return {"trigger_type_code": "APIG", "event_data": data}


async def create(harness: Harness, urn: str, body: dict) -> tuple[int, dict]:
    async with harness.http.post(harness.fgs(f"/triggers/{urn}"), json=body) as resp:
        return resp.status, await resp.json()


async def test_timer_trigger_crud_in_fg_shape(harness: Harness) -> None:
    urn = await harness.create_function("t", FN)
    status, trigger = await create(harness, urn, timer())
    assert status == 201, trigger
    assert set(trigger) >= {
        "trigger_id",
        "trigger_type_code",
        "trigger_status",
        "event_data",
        "last_updated_time",
        "created_time",
    }
    assert trigger["trigger_type_code"] == "TIMER"
    assert trigger["trigger_status"] == "ACTIVE"
    assert trigger["event_data"] == {"name": "Timer-l8v2", "schedule": "3m", "schedule_type": "Rate"}
    assert len(trigger["created_time"]) == len("2022-11-09 16:37:24")
    tid = trigger["trigger_id"]

    async with harness.http.get(harness.fgs(f"/triggers/{urn}")) as resp:
        assert [t["trigger_id"] for t in await resp.json()] == [tid]
    async with harness.http.get(harness.fgs(f"/triggers/{urn}/TIMER/{tid}")) as resp:
        shown = await resp.json()
    assert shown["state"]["next_fire_time"]

    async with harness.http.put(harness.fgs(f"/triggers/{urn}/TIMER/{tid}"), json={"trigger_status": "DISABLED"}) as r:
        assert r.status == 200
        assert (await r.json())["trigger_status"] == "DISABLED"
    async with harness.http.put(harness.fgs(f"/triggers/{urn}/TIMER/{tid}"), json={"trigger_status": "ACTIVE"}) as r:
        assert (await r.json())["trigger_status"] == "ACTIVE"
    async with harness.http.put(
        harness.fgs(f"/triggers/{urn}/TIMER/{tid}"), json={"event_data": {"schedule": "5m"}}
    ) as resp:
        assert (await resp.json())["event_data"]["schedule"] == "5m"

    async with harness.http.delete(harness.fgs(f"/triggers/{urn}/TIMER/{tid}")) as resp:
        assert resp.status == 204
    async with harness.http.get(harness.fgs(f"/triggers/{urn}/TIMER/{tid}")) as resp:
        assert resp.status == 404
    actions = [entry["action"] for entry in await harness.service.store.audit_log()]
    for action in ("createTrigger", "disableTrigger", "enableTrigger", "deleteTrigger"):
        assert action in actions


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (timer("61m"), "minutes must be in (0, 60]"),
        (timer("0m"), "minutes must be in (0, 60]"),
        (timer("25h"), "hours must be in (0, 24]"),
        (timer("31d"), "days must be in (0, 30]"),
        (timer("1.5h"), "only whole numbers"),
        (timer("* * * * * * * *", "Cron"), "expected 5 or 6 fields"),
        (timer("@every 0s", "Cron"), "@every"),
        (timer("CRON_TZ=Nowhere/City 0 * * * * *", "Cron"), "Nowhere/City"),
        (timer("? * * * * *", "Cron"), "'?'"),
        (timer("3m", "Weekly"), "schedule_type"),
        ({"trigger_type_code": "TIMER", "event_data": {"schedule": "3m", "schedule_type": "Rate"}}, "name"),
        ({"trigger_type_code": "NOPE", "event_data": {}}, "trigger_type_code"),
        ({"trigger_type_code": "TIMER", "event_data": []}, "event_data: must be a JSON object"),
        ({"trigger_type_code": "TIMER"}, "event_data"),
        (apig(func_info={"timeout": 60001}), "func_info.timeout"),
        (apig(func_info={"timeout": 0}), "func_info.timeout"),
        (apig(path="no-slash"), "path"),
        (apig(path="/a/../b"), "path"),
        (apig(req_method="FETCH"), "req_method"),
        (apig(auth="APP"), "app_code"),
        (
            {"trigger_type_code": "KAFKA", "event_data": {"instance_id": "i", "topic_ids": ["t"], "batch_size": 5000}},
            "batch_size",
        ),
        (
            {
                "trigger_type_code": "DDS",
                "event_data": {"instance_id": "i", "db_name": "admin", "collection_name": "c"},
            },
            "reserved",
        ),
        (
            {
                "trigger_type_code": "DIS",
                "event_data": {
                    "stream_name": "s",
                    "sharditerator_type": "LATEST",
                    "polling_interval": 30,
                    "batch_size": 10001,
                },
            },
            "batch_size",
        ),
        (
            {
                "trigger_type_code": "ROCKETMQ",
                "event_data": {"instance_id": "i", "topic": "t", "consumer_group": "g"},
            },
            "ROCKETMQ triggers are not served by this Triggerbus yet",
        ),
    ],
)
async def test_invalid_triggers_get_precise_errors(harness: Harness, body: dict, message: str) -> None:
    urn = await harness.create_function("v", FN)
    status, error = await create(harness, urn, body)
    assert status == 400, error
    assert error["error_code"] == "FSS.0400"
    assert message in error["error_msg"], error["error_msg"]


async def test_apig_triggers_cannot_be_disabled_and_paths_are_unique(harness: Harness) -> None:
    urn = await harness.create_function("web", FN)
    status, trigger = await create(harness, urn, apig())
    assert status == 201, trigger
    assert trigger["event_data"]["invoke_url"] == f"{harness.base_url}/apig/hello"
    assert trigger["event_data"]["api_id"]
    tid = trigger["trigger_id"]
    async with harness.http.put(harness.fgs(f"/triggers/{urn}/APIG/{tid}"), json={"trigger_status": "DISABLED"}) as r:
        body = await r.json()
    assert r.status == 400
    assert body["error_msg"].startswith("trigger_status: APIG triggers cannot be disabled, only deleted")
    other = await harness.create_function("web2", FN)
    status, error = await create(harness, other, apig())
    assert status == 409
    assert error["error_code"] == "FSS.0409"
    assert tid in error["error_msg"]
    status, _ = await create(harness, urn, {**apig(), "trigger_status": "DISABLED"})
    assert status == 400


async def test_secrets_in_event_data_are_encrypted_and_masked(harness: Harness) -> None:
    urn = await harness.create_function("appauth", FN)
    code = "a-very-long-app-code-1234567890"
    status, trigger = await create(harness, urn, apig(path="/secure", auth="APP", app_code=code))
    assert status == 201, trigger
    assert trigger["event_data"]["app_code"] == "******"
    async with harness.http.get(harness.fgs(f"/triggers/{urn}")) as resp:
        assert code not in await resp.text()
    raw = (harness.server.settings.data_dir / "triggerbus.db").read_bytes()
    assert code.encode() not in raw


async def test_deleting_a_function_deletes_its_triggers(harness: Harness) -> None:
    urn = await harness.create_function("gone", FN)
    status, trigger = await create(harness, urn, apig(path="/gone"))
    assert status == 201
    async with harness.http.delete(harness.fgs(f"/functions/{urn}")) as resp:
        assert resp.status == 204
    assert await harness.service.store.get_trigger(trigger["trigger_id"]) is None
    async with harness.http.get(harness.base_url + "/apig/gone") as resp:
        assert resp.status == 404


async def test_http_functions_only_take_apig_triggers(harness: Harness) -> None:
    body = {"func_name": "httpfn", "runtime": "http", "code_url": "http://127.0.0.1:9/"}
    async with harness.http.post(harness.fgs("/functions"), json=body) as resp:
        assert resp.status == 200, await resp.text()
    status, error = await create(harness, harness.urn("httpfn"), timer())
    assert status == 400
    assert "HTTP functions can only have APIG/APIC triggers" in error["error_msg"]


async def test_http_function_cannot_target_the_service_itself(harness: Harness) -> None:
    body = {"func_name": "loop", "runtime": "http", "code_url": harness.base_url + "/v2"}
    async with harness.http.post(harness.fgs("/functions"), json=body) as resp:
        error = await resp.json()
    assert resp.status == 400
    assert "points at this service's own API" in error["error_msg"]


async def test_delete_all_triggers(harness: Harness) -> None:
    urn = await harness.create_function("multi", FN)
    for i in range(3):
        assert (await create(harness, urn, timer(f"{i + 1}m")))[0] == 201
    async with harness.http.delete(harness.fgs(f"/triggers/{urn}")) as resp:
        assert resp.status == 204
    async with harness.http.get(harness.fgs(f"/triggers/{urn}")) as resp:
        assert await resp.json() == []
