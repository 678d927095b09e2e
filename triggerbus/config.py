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
    retry_base_s: float = field(default_factory=lambda: float(_env("TRIGGERBUS_RETRY_BASE_S", "1")))
    retry_cap_s: float = field(default_factory=lambda: float(_env("TRIGGERBUS_RETRY_CAP_S", "300")))
    records_retention_days: float = 7.0
    timer_misfire_policy: str = field(default_factory=lambda: _env("TRIGGERBUS_TIMER_MISFIRE", "fire_once"))
    timer_catchup_window_s: float = 300.0
    timer_lease_ttl_s: float = 10.0
    obs_endpoint: str = field(default_factory=lambda: _env("TRIGGERBUS_OBS_ENDPOINT", ""))
    obs_access_key: str = field(default_factory=lambda: _env("TRIGGERBUS_OBS_ACCESS_KEY", ""))
    obs_secret_key: str = field(default_factory=lambda: _env("TRIGGERBUS_OBS_SECRET_KEY", ""))
    max_sync_body: int = 6 * 1024 * 1024
    max_async_body: int = 256 * 1024
    max_api_body: int = 60 * 1024 * 1024  # function create: 40 MB zip as base64
    invoker_max_in_flight: int = 4096
    # DMS-style KAFKA triggers name an instance; map instance ids to bootstrap servers:
    # TRIGGERBUS_KAFKA_INSTANCES='{"81335d56-...": "broker1:9092,broker2:9092"}'
    kafka_instances: dict[str, str] = field(
        default_factory=lambda: json.loads(_env("TRIGGERBUS_KAFKA_INSTANCES", "{}"))
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
