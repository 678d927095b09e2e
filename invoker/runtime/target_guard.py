"""Where an HTTP function may live: never this service's own listener.

An HTTP function is a URL the invoker POSTs events to, with the function's credentials in the
headers. Pointed at Triggerbus itself it would let anyone who can create a function make the
service call its own management API (server-side request forgery), so a target is refused when any
address its host resolves to is a loopback, unspecified or local address of this machine *and* its
port is the service's port. Other local targets (loopback, or any address of this machine) are
refused too unless ``TRIGGERBUS_HTTP_ALLOW_LOOPBACK=1`` (function servers on the same machine, as
in the tests). The check runs when the function is created or updated and again before every call,
and the HTTP runtime's resolver applies it to every address it connects to, so a DNS name that
later resolves to the service (rebinding) is refused at call time too. Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

ALLOW_LOOPBACK_SETTING = "TRIGGERBUS_HTTP_ALLOW_LOOPBACK"


class TargetRefused(ValueError):
    """The URL names a target HTTP functions may not have; the message says why."""


@functools.lru_cache(maxsize=1024)
def is_local_address(ip: str) -> bool:
    """True for loopback and unspecified addresses and for any address of this machine's interfaces
    (one a socket can bind to)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback or addr.is_unspecified:
        return True
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(addr), 0))
    except OSError:
        return False
    return True


class TargetGuard:
    """Checks HTTP function targets against the service's own port (read when checking: a test
    server learns its port after binding)."""

    def __init__(self, own_port: Callable[[], int], *, allow_loopback: bool = False) -> None:
        self.own_port = own_port
        self.allow_loopback = allow_loopback

    def check_address(self, ip: str, port: int, what: str) -> None:
        """Refuse connecting to ``ip``:``port`` (``what`` names the target in the message)."""
        if not is_local_address(ip):
            return
        if port == self.own_port():
            raise TargetRefused(f"{what} points at this service's own API ({ip} port {port}), which is not allowed")
        if not self.allow_loopback:
            raise TargetRefused(
                f"{what} is an address of this machine ({ip}); local function servers need {ALLOW_LOOPBACK_SETTING}=1"
            )

    @staticmethod
    def split(url: str) -> tuple[str, int]:
        """``(host, port)`` of an http(s) URL; TargetRefused when it has none."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise TargetRefused(f"{url[:200]} is not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TargetRefused(f"{url[:200]} is not an http(s) URL with a host")
        return parts.hostname, port or (443 if parts.scheme == "https" else 80)

    async def check(self, url: str, *, resolve: bool = True, unresolvable_ok: bool = True) -> None:
        """Refuse ``url`` if any address its host resolves to is refused. A name that does not resolve
        passes when ``unresolvable_ok`` (at create time: it is checked again at each call); names are
        not looked up at all unless ``resolve`` (the HTTP runtime's resolver checks them as it connects)."""
        host, port = self.split(url)
        what = url[:200]
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
            addresses = [host]
        except ValueError:
            if not resolve:
                return
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                if unresolvable_ok:
                    return
                raise TargetRefused(f"{what}: host {host[:100]} does not resolve ({exc})") from None
            addresses = [str(info[4][0]) for info in infos]
        for ip in addresses:
            self.check_address(ip, port, what)


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing (as a connection error) the addresses the guard refuses."""

    def __init__(self, guard: TargetGuard, inner: AbstractResolver | None = None) -> None:
        self.guard = guard
        self.inner = inner or DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        for result in results:
            try:
                self.guard.check_address(result["host"], result["port"] or port, f"host {host}")
            except TargetRefused as exc:  # aiohttp reports it as "Cannot connect to host ... [<this>]"
                raise OSError(errno.EACCES, str(exc)) from None
        return results

    async def close(self) -> None:
        await self.inner.close()
