"""How a trigger document reads to operators (CLI and console share triggerbus.trigger_view)."""

from __future__ import annotations

from triggerbus.trigger_view import lag_parts, lag_text, position_parts, trigger_detail, trigger_state


def test_state_follows_status_and_last_error() -> None:
    assert trigger_state({"trigger_status": "ACTIVE"}).state == "ACTIVE"
    failing = {"trigger_status": "ACTIVE", "state": {"last_error": "boom", "last_error_time": "2024-05-01 08:00:00"}}
    view = trigger_state(failing)
    assert (view.state, view.last_error, view.since) == ("ERROR", "boom", "2024-05-01 08:00:00")
    assert trigger_state({**failing, "trigger_status": "DISABLED"}).state == "DISABLED"


def test_lag_values_or_unknown() -> None:
    assert lag_parts({}) is None and lag_text({}) == ""
    state = {"lag": {"records": 12, "seconds": None, "oldest_age_s": 3.25}}
    assert lag_parts(state) == [("records", "12"), ("behind", "unknown"), ("oldest", "3.2 s")]
    assert lag_text(state) == "records 12, behind unknown, oldest 3.2 s"


def test_position_fallbacks() -> None:
    state = {
        "next_fire_time": "2024-05-01T08:00:00+00:00",
        "partitions": [{"topic": "orders", "partition": 0, "committed": 5, "end_offset": 9, "lag": 4}],
        "shards": [{"shard_id": "shardId-0000000000", "committed": "42"}],
        "resume_token_age_s": 1.5,
    }
    assert position_parts(state) == [
        "next fire 2024-05-01T08:00:00+00:00",
        "orders[0] at 5/9 lag 4",
        "shardId-0000000000 at 42",
        "resume token age 1.5 s",
    ]
    assert trigger_detail({"event_data": {"schedule": "3m"}}) == "3m"
    assert trigger_detail({"event_data": {"topic_ids": ["a", "b"]}}) == "a,b"
