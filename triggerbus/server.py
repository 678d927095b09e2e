"""Run the service and its HTTP listener until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from triggerbus.api.app import create_app
from triggerbus.config import Settings
from triggerbus.service import Service

log = logging.getLogger(__name__)


class Server:
    """The service plus its aiohttp site; usable in tests as an async context manager."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service = Service(settings)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        await self.service.start()
        app = create_app(self.service, client_max_size=self.settings.max_api_body)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        if self.settings.port == 0:  # tests ask for any free port
            addresses = self._runner.addresses
            self.settings.port = int(addresses[0][1])
            self.service.apig.ctx.public_url = self.settings.base_url()
            self.service.registry.forbidden_code_urls = self.service._own_urls()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.service.close()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve(settings: Settings, announce: Callable[[str], None] = print) -> None:
    server = Server(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    token_hint = (
        "TRIGGERBUS_TOKEN"
        if settings.token and not (settings.data_dir / "token").exists()
        else str(settings.data_dir / "token")
    )
    announce(f"Triggerbus listening on {settings.base_url()}")
    announce(f"  data dir: {settings.data_dir.resolve()}   region: {settings.region}   timezone: {settings.timezone}")
    announce(f"  bus: {settings.bus_url}   store: {_without_password(settings.store_url)}")
    announce(f"  API token: {token_hint}   (send it as X-Auth-Token)")
    announce(f"  APIG ingress: {settings.base_url()}/apig/<path>")
    try:
        await stop.wait()
    finally:
        announce("Triggerbus stopping")
        await server.close()


def _without_password(url: str) -> str:
    """Connection strings may carry a password: never print it."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:******@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
