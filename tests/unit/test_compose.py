"""docker-compose.yml cannot be run here (no Docker engine): check its structure instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def load() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_every_service_can_start_and_report_health() -> None:
    services = load()["services"]
    assert {"triggerbus-1", "triggerbus-2", "kafka", "mongo", "minio", "rabbitmq", "mosquitto", "redis"} <= set(
        services
    )
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        health = service.get("healthcheck", {})
        assert health.get("test"), f"{name} has no healthcheck"
        for port in service.get("ports", []):
            host, _, container = str(port).partition(":")
            assert host.isdigit() and container.isdigit(), f"{name}: bad port mapping {port!r}"


def test_dependencies_exist_and_wait_for_health() -> None:
    services = load()["services"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition == {"condition": "service_healthy"}, name


def test_triggerbus_processes_run_distributed_with_shared_secrets() -> None:
    data = load()
    volumes = set(data["volumes"])
    for name in ("triggerbus-1", "triggerbus-2"):
        service = data["services"][name]
        assert service["command"] == ["--bus", "kafka://kafka:9092", "--store", "mongodb://mongo:27017/?replicaSet=rs0"]
        env = service["environment"]
        assert env["TRIGGERBUS_TOKEN"].startswith("${TRIGGERBUS_TOKEN:?")  # required, never a default
        assert env["TRIGGERBUS_SECRET_KEY"].startswith("${TRIGGERBUS_SECRET_KEY:?")
        for volume in service["volumes"]:
            assert volume.split(":")[0] in volumes
    assert data["services"]["triggerbus-1"]["ports"] != data["services"]["triggerbus-2"]["ports"]
    assert "--replSet" in data["services"]["mongo"]["command"]  # change streams need a replica set


def test_minio_pushes_notifications_to_the_shared_obs_webhook_and_redis_keeps_every_write() -> None:
    services = load()["services"]
    minio = services["minio"]["environment"]
    assert minio["MINIO_NOTIFY_WEBHOOK_ENABLE_TRIGGERBUS"] == "on"
    assert "/obs/events/${TRIGGERBUS_OBS_WEBHOOK_TOKEN:?" in minio["MINIO_NOTIFY_WEBHOOK_ENDPOINT_TRIGGERBUS"]
    assert minio["MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_TRIGGERBUS"].startswith("/data/")  # survives restarts
    redis = services["redis"]["command"]
    assert redis[redis.index("--appendfsync") + 1] == "always"
    assert redis[redis.index("--maxmemory-policy") + 1] == "noeviction"
    for name in ("triggerbus-1", "triggerbus-2"):
        assert services[name]["environment"]["TRIGGERBUS_STREAMS_REDIS"] == "redis://redis:6379/0"
