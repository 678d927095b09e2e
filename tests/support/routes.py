"""Every route of a running Triggerbus app, with its path filled in, and the checks the hostile-input
and security tests apply to each answer (``tests/integration/test_bad_input.py``, ``test_security.py``).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from yarl import URL

FSS_CODE = re.compile(r"^(FSS|APIG)\.\d{4}$")
PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
METHODS_FOR_ANY = ("GET", "POST", "PUT", "DELETE", "PATCH")
HANG_S = 30.0  # a hang detector, not a performance bound

# Path values no route may choke on: injections, traversal, NUL, RTL overrides, invalid UTF-8, long names.
HOSTILE_SEGMENTS: tuple[str, ...] = (
    "'; DROP TABLE records;--",
    "<script>alert(1)</script>",
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "a\x00b",
    "\u202egnp.exe",
    "%FF%FE%80",  # sent raw (already percent-encoded): invalid UTF-8 once decoded
    "x" * 10_000,
    "urn:fss:local:proj1:function:default:nope:latest",
    "-1",
    "99999999999999999999999999",
    "{}",
    " ",
    "%00",
)


@dataclass(frozen=True)
class Route:
    """One method on one route: ``template`` like ``/v2/{project_id}/fgs/functions/{function_urn}/config``."""

    method: str
    template: str

    @property
    def params(self) -> list[str]:
        return PARAM.findall(self.template)

    @property
    def console(self) -> bool:
        return self.template.startswith("/console")

    def path(self, values: dict[str, str]) -> str:
        """The path with each ``{param}`` replaced by ``values[param]``, percent-encoded (a value that
        already holds ``%XX`` escapes is sent as it is, so invalid UTF-8 reaches the server)."""

        def fill(match: re.Match[str]) -> str:
            value = values[match.group(1)]
            if match.group(1) == "tail":  # /apig{tail}: a path of its own
                return value if value.startswith("/") else "/" + quote(value, safe="")
            return value if re.fullmatch(r"(%[0-9A-Fa-f]{2})+", value) else quote(value, safe="")

        return PARAM.sub(fill, self.template)


def app_routes(app: web.Application) -> list[Route]:
    """Every (method, path template) of ``app`` and of its sub-apps (the console), HEAD left out."""
    found: list[Route] = []
    for resource in app.router.resources():
        info = resource.get_info()
        if "app" in info:  # a sub-app: its routes carry its prefix already
            found += app_routes(info["app"])
            continue
        template = str(info.get("formatter") or info.get("path"))
        for route in resource:
            methods = METHODS_FOR_ANY if route.method == "*" else (route.method,)
            found += [Route(m, template) for m in methods if m != "HEAD"]
    return sorted(set(found), key=lambda r: (r.template, r.method))


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        import json

        return json.loads(self.body)


async def send(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    *,
    data: bytes | None = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = HANG_S,
) -> Answer:
    """One request, answered within ``timeout`` s (else the test fails: the server hung)."""

    async def go() -> Answer:
        url = URL(path, encoded=True)
        if params:
            url = url.update_query(params)
        async with http.request(method, url, data=data, headers=headers, allow_redirects=False) as resp:
            body = await resp.read()
            return Answer(resp.status, resp.content_type, body, dict(resp.headers))

    try:
        return await asyncio.wait_for(go(), timeout)
    except TimeoutError:
        raise AssertionError(f"{method} {path[:200]} did not answer within {timeout} s") from None


def check_answer(route: Route, answer: Answer, what: str) -> None:
    """No 5xx; a 4xx is an FSS error body (``{"error_code": "FSS.xxxx", "error_msg": "..."}``), except
    on the console, whose refusals are HTML pages or redirects (docs/console.md)."""
    where = f"{route.method} {route.template} with {what[:300]}"
    assert answer.status < 500, f"{where}: {answer.status} {answer.body[:500]!r}"
    if answer.status < 400 or route.method == "HEAD":
        return
    if parser_refusal(answer):
        return
    if route.console and answer.content_type == "text/html":
        assert answer.body.strip(), f"{where}: empty {answer.status} page"
        return
    assert_fss_error(answer, where)


def parser_refusal(answer: Answer) -> bool:
    """aiohttp's HTTP parser refused the request before any handler ran (a request line or header field
    over 8190 bytes, too many headers): a plain-text 400, documented in docs/reliability.md."""
    return answer.status == 400 and answer.content_type == "text/plain" and answer.body.startswith(b"Got more than")


def assert_fss_error(answer: Answer, where: str) -> None:
    assert answer.content_type == "application/json", f"{where}: {answer.status} {answer.content_type}"
    body = answer.json()
    assert isinstance(body, dict) and FSS_CODE.match(str(body.get("error_code"))), f"{where}: {body}"
    assert isinstance(body.get("error_msg"), str) and body["error_msg"].strip(), f"{where}: {body}"


def sqlite_integrity(path: Path) -> str:
    """``PRAGMA integrity_check`` of the SQLite file at ``path`` (``"ok"`` when intact)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
