"""A real Triggerbus (HTTP listener, SQLite store and bus, worker processes) per test."""

from __future__ import annotations

import asyncio
import contextlib
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
