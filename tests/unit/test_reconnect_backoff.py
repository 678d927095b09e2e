"""Every connector's reconnect backoff is exponential, capped and jittered, and /health's verdict
on a trigger's connector state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import connectors.dds as dds
import connectors.iotda as iotda
import connectors.kafka as kafka
import connectors.rabbitmq as rabbitmq
import connectors.redis_streams as redis_streams
from triggerbus.health import source_problem

BACKOFFS: dict[str, tuple[Callable[[int], float], float, float]] = {
    # name: (function, first ceiling, cap)
    "kafka": (kafka._backoff, kafka.BACKOFF_BASE_S * 1, kafka.BACKOFF_CAP_S),
    "rabbitmq": (rabbitmq._backoff, rabbitmq.BACKOFF_BASE_S * 1, rabbitmq.BACKOFF_CAP_S),
    "dds": (dds._backoff, dds.BACKOFF_BASE_S * 1, dds.BACKOFF_CAP_S),
    "redis_streams": (redis_streams.backoff, redis_streams.BACKOFF_BASE_S * 1, redis_streams.BACKOFF_CAP_S),
    "iotda": (iotda.reconnect_backoff, float(iotda.RECONNECT_MIN_S), float(iotda.RECONNECT_MAX_S)),
}


@pytest.mark.parametrize("name", sorted(BACKOFFS))
def test_backoff_is_exponential_capped_and_jittered(name: str) -> None:
    backoff, first, cap = BACKOFFS[name]
    assert cap <= 30.0
    for attempt in (0, 1, 2, 3, 5, 10, 16, 17, 64, 10_000):
        ceiling = min(cap, first * 2.0**attempt) if attempt < 60 else cap
        samples = [backoff(attempt) for _ in range(200)]
        # Equal jitter: somewhere in the upper half of the ceiling, never above the cap.
        assert all(ceiling / 2 <= s <= ceiling for s in samples), (attempt, min(samples), max(samples))
        assert len(set(samples)) > 150, "not jittered"  # floats from random.uniform: all distinct
    assert max(backoff(0) for _ in range(100)) <= first
    assert min(backoff(100) for _ in range(100)) >= cap / 2  # later attempts wait longer, up to the cap


def test_the_mqtt_link_hands_paho_a_jittered_delay_before_every_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.new_event_loop()
    try:
        config = iotda.LinkConfig(
            host="127.0.0.1", port=1, client_id="tb-backoff-test", topics=("t",), qos=1,
            username=None, password=None, mqtt_version="3.1.1", session_expiry_s=60,
        )  # fmt: skip
        link = iotda.MqttLink(config, loop)
        delays: list[tuple[float, float]] = []
        monkeypatch.setattr(link.client, "reconnect_delay_set", lambda lo, hi: delays.append((lo, hi)))
        for _ in range(8):
            link._on_connect_fail(link.client, None)
        assert all(lo == hi for lo, hi in delays)  # paho's next wait is exactly this (it resets to min)
        waits = [lo for lo, _ in delays]
        assert 0.5 <= waits[0] <= 1.0 and 15.0 <= waits[-1] <= 30.0
        assert "jittered backoff" in (link.last_error or "")
    finally:
        loop.close()


def test_health_names_only_triggers_that_cannot_reach_their_source() -> None:
    assert source_problem({"consumer_state": "running", "last_error": "old news"}) is None
    assert source_problem({"consumer_state": "backoff", "last_error": "refused"}) == "refused"
    assert source_problem({"consumer_state": "reconnecting"}) == "reconnecting"
    assert source_problem({"holds_session": True, "connected": False, "last_error": "gone"}) == "gone"
    assert source_problem({"holds_session": False, "connected": False}) is None  # another process holds it
    assert source_problem({"holds_session": True, "connected": True}) is None
    assert source_problem({"reconcile": {"last_error": "EndpointConnectionError"}}) is not None
    assert source_problem({"reconcile": {"last_error": None}, "notifications": 3}) is None
