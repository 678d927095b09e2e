"""A real Triggerbus (HTTP listener, SQLite store and bus, worker processes) per test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.zips import python_function
from triggerbus.config import Settings
from triggerbus.server import Server

TOKEN = "integration-test-token-0123456789"
PROJECT = "proj1"
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    settings = Settings()
    settings.data_dir = data_dir
    settings.port = 0
    settings.token = TOKEN
    settings.retry_base_s = 0.05
    settings.retry_cap_s = 0.2
    settings.max_workers = 4
    settings.timer_lease_ttl_s = 2.0
    settings.kafka_session_timeout_s = 6.0  # tansu: slow group joins; short timeouts keep tests quick
    settings.kafka_fetch_max_wait_ms = 50
    settings.http_allow_loopback = True  # HTTP functions served on 127.0.0.1 (never the service's own port)
    for name, value in overrides.items():
        setattr(settings, name, value)
    return settings


@dataclass
class Harness:
    server: Server
    http: aiohttp.ClientSession

    @property
    def service(self) -> Any:
        return self.server.service

    @property
    def base_url(self) -> str:
        return self.server.settings.base_url()

    def urn(self, name: str) -> str:
        return f"urn:fss:local:{PROJECT}:function:default:{name}:latest"

    def fgs(self, suffix: str) -> str:
        return f"/v2/{PROJECT}/fgs{suffix}"

    async def create_function(self, name: str, source: str, **extra: Any) -> str:
        async with self.http.post(self.fgs("/functions"), json=python_function(name, source, **extra)) as resp:
            body = await resp.json()
            assert resp.status == 200, body
        return str(body["func_urn"])

    async def invoke_async(self, urn: str, event: Any) -> str:
        async with self.http.post(self.fgs(f"/functions/{urn}/invocations-async"), json=event) as resp:
            body = await resp.json()
            assert resp.status == 202, body
        return str(body["request_id"])

    async def record(self, urn: str, request_id: str) -> dict[str, Any]:
        async with self.http.get(self.fgs(f"/functions/{urn}/async-invocations/{request_id}")) as resp:
            assert resp.status == 200, await resp.text()
            return dict(await resp.json())

    async def wait_terminal(self, urn: str, request_id: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            async with self.http.get(self.fgs(f"/functions/{urn}/async-invocations/{request_id}")) as resp:
                if resp.status == 200:
                    record = await resp.json()
                    if record["status"] in ("SUCCESS", "FAIL", "DISCARD"):
                        return dict(record)
            if time.monotonic() > deadline:
                raise AssertionError(f"{request_id} did not finish in {timeout} s")
            await asyncio.sleep(0.05)

    # -- recording functions and triggers (shared by the connector tests) ---------------------------------

    async def create_recorder(
        self, name: str, source: str, directory: Path, *files: str, **extra: Any
    ) -> tuple[str, Path]:
        """Create the recording function ``name`` from ``source``; its URN and the JSON-lines file it writes.

        Its user data names ``out`` (``directory/<name>.jsonl``, see tests/support/recording.py) and one
        ``directory/<name>.<file>`` per entry of ``files`` (``"gate"``, ``"started"`` ...), plus any
        ``user_data`` given; ``extra`` goes into the CreateFunction body.
        """
        out = directory / f"{name}.jsonl"
        user_data = {
            "out": str(out),
            **{f: str(directory / f"{name}.{f}") for f in files},
            **extra.pop("user_data", {}),
        }
        return await self.create_function(name, source, user_data=user_data, **extra), out

    def trigger_path(self, urn: str, code: str, trigger_id: str, suffix: str = "") -> str:
        """The API path of one trigger (``suffix``: ``"/checkpoint"``)."""
        return self.fgs(f"/triggers/{urn}/{code}/{trigger_id}{suffix}")

    async def create_trigger(
        self, urn: str, code: str, event_data: dict[str, Any], **extra: Any
    ) -> tuple[int, dict[str, Any]]:
        """POST a ``code`` trigger for ``urn``; the status and body as answered (for tests of refusals)."""
        body = {"trigger_type_code": code, "event_data": event_data, **extra}
        async with self.http.post(self.fgs(f"/triggers/{urn}"), json=body) as resp:
            return resp.status, await resp.json()

    async def add_trigger(self, urn: str, code: str, event_data: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """:meth:`create_trigger`, asserting it was created (201); the created trigger."""
        status, body = await self.create_trigger(urn, code, event_data, **extra)
        assert status == 201, body
        return dict(body)

    async def add_active_trigger(self, urn: str, code: str, event_data: dict[str, Any], **extra: Any) -> str:
        """:meth:`add_trigger`, then set it ACTIVE (some types start DISABLED), asserting each answer; its id."""
        trigger_id = str((await self.add_trigger(urn, code, event_data, **extra))["trigger_id"])
        await self.set_trigger_status(urn, code, trigger_id, "ACTIVE")
        return trigger_id

    async def get_trigger(self, urn: str, code: str, trigger_id: str) -> dict[str, Any]:
        """GET one trigger, asserting 200."""
        async with self.http.get(self.trigger_path(urn, code, trigger_id)) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            return dict(body)

    async def trigger_state(self, urn: str, code: str, trigger_id: str) -> dict[str, Any]:
        """The runtime ``state`` a trigger reports ({} when it has none, e.g. disabled)."""
        return dict((await self.get_trigger(urn, code, trigger_id)).get("state") or {})

    async def update_trigger(
        self, urn: str, code: str, trigger_id: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """PUT a trigger update; the status and body as answered."""
        async with self.http.put(self.trigger_path(urn, code, trigger_id), json=body) as resp:
            return resp.status, await resp.json()

    async def set_trigger_status(self, urn: str, code: str, trigger_id: str, status: str) -> dict[str, Any]:
        """Set ``trigger_status`` (``ACTIVE`` / ``DISABLED``), asserting 200; the updated trigger."""
        answer, body = await self.update_trigger(urn, code, trigger_id, {"trigger_status": status})
        assert answer == 200, body
        return dict(body)

    async def get_checkpoint(self, urn: str, code: str, trigger_id: str) -> dict[str, Any]:
        """GET a trigger's checkpoint, asserting 200."""
        async with self.http.get(self.trigger_path(urn, code, trigger_id, "/checkpoint")) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            return dict(body)

    async def put_checkpoint(
        self, urn: str, code: str, trigger_id: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """PUT a trigger's checkpoint; the status and body as answered."""
        async with self.http.put(self.trigger_path(urn, code, trigger_id, "/checkpoint"), json=body) as resp:
            return resp.status, await resp.json()

    async def set_async_config(self, urn: str, config: dict[str, Any]) -> None:
        """PUT ``urn``'s async invoke config (retries, destinations), asserting 200."""
        async with self.http.put(self.fgs(f"/functions/{urn}/async-invoke-config"), json=config) as resp:
            assert resp.status == 200, await resp.text()

    async def invocations(self, urn: str, **query: str) -> list[dict[str, Any]]:
        """The async invocation records of ``urn`` (up to 500 unless ``limit`` is given), asserting 200."""
        params = {"limit": "500", **query}
        async with self.http.get(self.fgs(f"/functions/{urn}/async-invocations"), params=params) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            return list(body["invocations"])


def failures_to_function(sink_urn: str, retries: int) -> dict[str, Any]:
    """An async invoke config: ``retries`` retries, then each failure goes to the function ``sink_urn``."""
    return {
        "max_async_retry_attempts": retries,
        "destination_config": {
            "on_failure": {"destination": "FunctionGraph", "param": json.dumps({"func_urn": sink_urn})}
        },
    }


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Harness]:
    """A started server and an authenticated HTTP session to it."""
    async with (
        Server(settings) as server,
        aiohttp.ClientSession(base_url=settings.base_url(), headers={"X-Auth-Token": TOKEN}) as http,
    ):
        yield Harness(server, http)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(make_settings(tmp_path / "data")) as h:
        yield h


@dataclass
class S3Server:
    endpoint: str
    access_key: str = "testkey"
    secret_key: str = "testsecret"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (moto_server from PyPI) on a free loopback port."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError(f"moto_server did not start: {log.read_text()}")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    yield S3Server(f"http://127.0.0.1:{port}")
    proc.terminate()
    proc.wait(timeout=10)
