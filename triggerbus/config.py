"""Service settings: defaults, overridable by environment variables and CLI flags."""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(slots=True)
class Settings:
    data_dir: Path = field(default_factory=lambda: Path(_env("TRIGGERBUS_DATA_DIR", "./data")))
    host: str = field(default_factory=lambda: _env("TRIGGERBUS_HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: int(_env("TRIGGERBUS_PORT", "8080")))
    public_url: str = field(default_factory=lambda: _env("TRIGGERBUS_PUBLIC_URL", ""))
    region: str = field(default_factory=lambda: _env("TRIGGERBUS_REGION", "local"))
    timezone: str = field(default_factory=lambda: _env("TRIGGERBUS_TIMEZONE", "UTC"))
    token: str = field(default_factory=lambda: _env("TRIGGERBUS_TOKEN", ""))
    node_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}")
    sqlite_synchronous: str = field(default_factory=lambda: _env("TRIGGERBUS_SQLITE_SYNCHRONOUS", "FULL"))
    bus_partitions: int = 8
    max_workers: int = field(
        default_factory=lambda: int(_env("TRIGGERBUS_MAX_WORKERS", str(max(4, 2 * (os.cpu_count() or 2)))))
    )
    worker_idle_ttl_s: float = 300.0
    # GET /metrics without the API token (TRIGGERBUS_METRICS_PUBLIC=1), e.g. behind a private network;
    # lag and queue gauges are measured every metrics_sample_s (docs/operations.md).
    metrics_public: bool = field(default_factory=lambda: _env("TRIGGERBUS_METRICS_PUBLIC", "") in ("1", "true", "yes"))
    metrics_sample_s: float = field(default_factory=lambda: float(_env("TRIGGERBUS_METRICS_SAMPLE_S", "5")))
    metrics_window_s: float = 60.0  # the duration avg/max/min/percentile gauges cover this many seconds
    # Function output (stdout/stderr) kept per attempt; beyond it the oldest output is dropped
    # and a "[... N bytes of earlier output truncated ...]" marker says how much (docs/observability.md).
    function_log_bytes: int = field(default_factory=lambda: int(_env("TRIGGERBUS_FUNCTION_LOG_BYTES", "65536")))
    retry_base_s: float = field(default_factory=lambda: float(_env("TRIGGERBUS_RETRY_BASE_S", "1")))
    retry_cap_s: float = field(default_factory=lambda: float(_env("TRIGGERBUS_RETRY_CAP_S", "300")))
    # Retry-After of a 429 is honoured up to this many seconds (invoker/retry.py); per-function
    # retry budget: retries <= MIN + RATIO x first attempts per WINDOW_S, RATIO < 0 = off
    # (invoker/retry_budget.py, docs/reliability.md).
    retry_after_max_s: float = field(default_factory=lambda: float(_env("TRIGGERBUS_RETRY_AFTER_MAX_S", "3600")))
    retry_budget_ratio: float = field(default_factory=lambda: float(_env("TRIGGERBUS_RETRY_BUDGET_RATIO", "0.2")))
    retry_budget_min: int = field(default_factory=lambda: int(_env("TRIGGERBUS_RETRY_BUDGET_MIN", "10")))
    retry_budget_window_s: float = field(default_factory=lambda: float(_env("TRIGGERBUS_RETRY_BUDGET_WINDOW_S", "10")))
    records_retention_days: float = 7.0
    timer_misfire_policy: str = field(default_factory=lambda: _env("TRIGGERBUS_TIMER_MISFIRE", "fire_once"))
    timer_catchup_window_s: float = 300.0
    timer_lease_ttl_s: float = 10.0
    obs_endpoint: str = field(default_factory=lambda: _env("TRIGGERBUS_OBS_ENDPOINT", ""))
    obs_access_key: str = field(default_factory=lambda: _env("TRIGGERBUS_OBS_ACCESS_KEY", ""))
    obs_secret_key: str = field(default_factory=lambda: _env("TRIGGERBUS_OBS_SECRET_KEY", ""))
    # OBS triggers (docs/obs.md): the token of the shared notification URL /obs/events/<token>
    # (empty: that URL is off), the SNS endpoint subscription confirmations may be fetched from,
    # and the reconciliation scan (interval 0 = off unless a trigger sets reconcile_interval_s).
    obs_webhook_token: str = field(default_factory=lambda: _env("TRIGGERBUS_OBS_WEBHOOK_TOKEN", ""))
    obs_sns_endpoint: str = field(default_factory=lambda: _env("TRIGGERBUS_OBS_SNS_ENDPOINT", ""))
    obs_reconcile_interval_s: float = field(
        default_factory=lambda: float(_env("TRIGGERBUS_OBS_RECONCILE_INTERVAL_S", "0"))
    )
    obs_reconcile_settle_s: float = 60.0  # a notification may still arrive this long after the upload
    obs_reconcile_lookback_s: float = 600.0  # objects listed again behind the watermark (late LastModified)
    # HTTP functions never target this service's own port; other addresses of this machine (loopback,
    # local interfaces) only with TRIGGERBUS_HTTP_ALLOW_LOOPBACK=1 (invoker/runtime/target_guard.py).
    http_allow_loopback: bool = field(
        default_factory=lambda: _env("TRIGGERBUS_HTTP_ALLOW_LOOPBACK", "") in ("1", "true", "yes")
    )
    max_sync_body: int = 6 * 1024 * 1024
    max_async_body: int = 256 * 1024
    max_api_body: int = 60 * 1024 * 1024  # function create: 40 MB zip as base64
    invoker_max_in_flight: int = 4096
    # Where events and state live: "sqlite" (embedded, one process) or, to scale out over
    # several processes, bus "kafka://host:9092[,host2:9092]" and store "mongodb://...".
    bus_url: str = field(default_factory=lambda: _env("TRIGGERBUS_BUS", "sqlite"))
    store_url: str = field(default_factory=lambda: _env("TRIGGERBUS_STORE", "sqlite"))
    kafka_app_id: str = field(default_factory=lambda: _env("TRIGGERBUS_KAFKA_APP_ID", "triggerbus"))
    kafka_partitions: int = field(default_factory=lambda: int(_env("TRIGGERBUS_KAFKA_PARTITIONS", "8")))
    kafka_session_timeout_s: float = field(
        default_factory=lambda: float(_env("TRIGGERBUS_KAFKA_SESSION_TIMEOUT_S", "10"))
    )
    kafka_fetch_max_wait_ms: int | None = field(
        default_factory=lambda: int(v) if (v := os.environ.get("TRIGGERBUS_KAFKA_FETCH_MAX_WAIT_MS")) else None
    )
    mongo_database: str = field(default_factory=lambda: _env("TRIGGERBUS_MONGO_DATABASE", "triggerbus"))
    # DMS-style KAFKA triggers name an instance; map instance ids to bootstrap servers:
    # TRIGGERBUS_KAFKA_INSTANCES='{"81335d56-...": "broker1:9092,broker2:9092"}'
    kafka_instances: dict[str, str] = field(
        default_factory=lambda: json.loads(_env("TRIGGERBUS_KAFKA_INSTANCES", "{}"))
    )
    # RABBITMQ triggers without connect_address: instance id -> "host:port[,...]" or
    # {"address": "host:port", "user": "name"}, e.g. TRIGGERBUS_RABBITMQ_INSTANCES='{"81335d56-...": "mq1:5672"}'
    rabbitmq_instances: dict[str, str | dict[str, str]] = field(
        default_factory=lambda: json.loads(_env("TRIGGERBUS_RABBITMQ_INSTANCES", "{}"))
    )
    # DDS/GAUSSMONGO triggers without a connection_uri: instance id -> MongoDB URI (no password:
    # triggers give db_user/db_password), e.g.
    # TRIGGERBUS_MONGO_INSTANCES='{"a1b2c3-...": "mongodb://10.0.0.5:8635,10.0.0.6:8635/?replicaSet=replica"}'
    mongo_instances: dict[str, str] = field(
        default_factory=lambda: json.loads(_env("TRIGGERBUS_MONGO_INSTANCES", "{}"))
    )
    # DIS streams and LTS log streams live in Redis Streams (docs/dis.md, docs/lts.md), e.g.
    # TRIGGERBUS_STREAMS_REDIS=redis://127.0.0.1:6379/0; empty: no DIS/LTS APIs, triggers or DIS
    # destinations. Every key lives under TRIGGERBUS_STREAMS_PREFIX.
    streams_redis: str = field(default_factory=lambda: _env("TRIGGERBUS_STREAMS_REDIS", ""))
    streams_prefix: str = field(default_factory=lambda: _env("TRIGGERBUS_STREAMS_PREFIX", "triggerbus"))
    # How long a DIS/LTS trigger stays with a process that stopped renewing its lease.
    streams_lease_ttl_s: float = 10.0
    # IOTDA triggers without a broker_address read from this MQTT broker (host:port).
    mqtt_broker: str = field(default_factory=lambda: _env("TRIGGERBUS_MQTT_BROKER", ""))
    # How long an IOTDA trigger's MQTT session stays with a process that stopped renewing it.
    mqtt_lease_ttl_s: float = 10.0
    # The identity management-API traces name as their user (there is one token).
    audit_user: str = field(default_factory=lambda: _env("TRIGGERBUS_AUDIT_USER", "triggerbus-admin"))
    # How often owed CTS-trigger deliveries are looked for (after a crash between storing a
    # trace and enqueuing its invocations), and how old a trace must be to count as owed.
    cts_replay_interval_s: float = 30.0
    cts_replay_grace_s: float = 10.0
    # Publish MQTT messages to SMN topics, e.g. TRIGGERBUS_SMN_MQTT_BRIDGE=
    # '{"broker": "127.0.0.1:1883", "topics": {"urn:smn:local:proj:orders": "smn/orders"}}'
    smn_mqtt_bridge: dict[str, object] = field(
        default_factory=lambda: json.loads(_env("TRIGGERBUS_SMN_MQTT_BRIDGE", "{}"))
    )

    @property
    def shared_store(self) -> bool:
        """True when several processes may share the state (MongoDB store)."""
        return self.store_url.startswith(("mongodb://", "mongodb+srv://"))

    @property
    def kafka_bus(self) -> bool:
        return self.bus_url.startswith("kafka://")

    def check(self) -> None:
        """Refuse combinations that would break silently."""
        if self.bus_url != "sqlite" and not self.kafka_bus:
            raise ValueError(f"--bus must be 'sqlite' or 'kafka://host:port[,...]', not {self.bus_url!r}")
        if self.store_url != "sqlite" and not self.shared_store:
            raise ValueError(f"--store must be 'sqlite' or 'mongodb://...', not {self.store_url!r}")
        if self.streams_redis and not self.streams_redis.startswith(("redis://", "rediss://", "unix://")):
            # (the value is not echoed: it may hold a password)
            raise ValueError("TRIGGERBUS_STREAMS_REDIS must be a redis://host:port/db, rediss:// or unix:// URL")
        if self.shared_store and not self.kafka_bus:
            raise ValueError("a MongoDB store is for several processes: use it with a Kafka bus (--bus kafka://...)")
        if self.shared_store:
            missing = [n for n in ("TRIGGERBUS_TOKEN", "TRIGGERBUS_SECRET_KEY") if not os.environ.get(n)]
            if missing and not (self.token and os.environ.get("TRIGGERBUS_SECRET_KEY")):
                raise ValueError(
                    f"processes sharing a store must share the API token and the secrets key: set {', '.join(missing)}"
                )

    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def load_token(self) -> str:
        """The management token: TRIGGERBUS_TOKEN, else ``<data_dir>/token`` (created 0600)."""
        if self.token:
            return self.token
        path = self.data_dir / "token"
        if path.exists():
            self.token = path.read_text().strip()
            return self.token
        self.data_dir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        self.token = token
        return token
