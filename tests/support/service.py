"""``triggerbus serve`` as a real subprocess, for the tests that SIGKILL the service and restart it.

A :class:`ServiceProcess` keeps its port, data directory and log across restarts, so a test can
kill it mid-stream (:meth:`ServiceProcess.kill`), start it again on the same data and check that
nothing accepted was lost. Used as a context manager it is started on entry and stopped on exit
(SIGTERM, then SIGKILL if it does not stop in time).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from types import TracebackType

import aiohttp

from tests.integration.conftest import PROJECT, ROOT, TOKEN, Harness
from tests.support.servers import free_port

TERMINAL = ("SUCCESS", "FAIL", "DISCARD")


class ServiceProcess:
    """One ``triggerbus serve`` process on 127.0.0.1:``port`` with ``data_dir``; stdout and stderr go to ``log``.

    ``args`` are added to the command line (``--bus``, ``--store`` ...), ``env`` to the environment
    (beyond ``PYTHONPATH`` and the test token).
    """

    def __init__(self, data_dir: Path, log: Path, *args: str, port: int | None = None, **env: str) -> None:
        self.data_dir = data_dir
        self.log = log
        self.args = args
        self.port = port or free_port()
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "TRIGGERBUS_TOKEN": TOKEN, **env}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def fgs(self) -> str:
        """The absolute URL of the FunctionGraph API root (``.../v2/<project>/fgs``)."""
        return f"{self.base}/v2/{PROJECT}/fgs"

    def start(self) -> None:
        """Start the process (again, after :meth:`kill`), on the same port and data."""
        command = [sys.executable, "-m", "triggerbus.cli", "serve", "--data-dir", str(self.data_dir)]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*command, "--port", str(self.port), *self.args], stdout=out, stderr=subprocess.STDOUT, env=self.env
            )

    def log_tail(self, chars: int = 5000) -> str:
        return self.log.read_text()[-chars:] if self.log.exists() else ""

    async def wait_healthy(self, timeout: float = 30.0, interval: float = 0.1) -> None:
        """Until ``/health`` answers 200; fails at once (with the log's end) if the process exits."""
        assert self.proc is not None, "not started"
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"the service exited with {self.proc.returncode}:\n{self.log_tail()}"
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(self.base + "/health") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(interval)
        raise AssertionError(f"the service at {self.base} did not come up in {timeout} s:\n{self.log_tail()}")

    async def start_healthy(self, timeout: float = 30.0) -> None:
        """:meth:`start`, then :meth:`wait_healthy`."""
        self.start()
        await self.wait_healthy(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up; waits until the process is gone."""
        assert self.proc is not None, "not started"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM (a clean stop); the exit code once it has stopped."""
        assert self.proc is not None, "not started"
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 20.0) -> None:
        """Clean up whatever happened: SIGTERM if still running, SIGKILL if it does not stop in ``timeout`` s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def session(self) -> aiohttp.ClientSession:
        """An HTTP session to the service, authenticated with the test token."""
        return aiohttp.ClientSession(base_url=self.base, headers={"X-Auth-Token": TOKEN})

    @contextlib.asynccontextmanager
    async def harness(self) -> AsyncIterator[Harness]:
        """A :class:`Harness` over :meth:`session`: its HTTP helpers work (the server is this subprocess,
        so ``Harness.server`` and ``Harness.service`` do not)."""
        async with self.session() as http:
            yield Harness(None, http)  # type: ignore[arg-type]

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


async def wait_all_finished(
    http: aiohttp.ClientSession,
    record_url: Callable[[str], str],
    request_ids: Iterable[str],
    timeout: float,
    interval: float,
) -> tuple[dict[str, str], set[str]]:
    """Poll each invocation record (GET ``record_url(request_id)``) until all are terminal or ``timeout`` passes.

    Returns the terminal status of each finished one, and the request ids still unfinished.
    """
    deadline = time.monotonic() + timeout
    pending = set(request_ids)
    statuses: dict[str, str] = {}
    while pending and time.monotonic() < deadline:
        for rid in list(pending):
            async with http.get(record_url(rid)) as resp:
                if resp.status == 200:
                    record = await resp.json()
                    if record["status"] in TERMINAL:
                        statuses[rid] = record["status"]
                        pending.discard(rid)
        if pending:
            await asyncio.sleep(interval)
    return statuses, pending
