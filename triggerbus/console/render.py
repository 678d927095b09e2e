"""Templates (jinja2, autoescape on for everything) and the small formatting helpers they use."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web

PREFIX = "/console"
MAX_MARKER = 2**62  # paging offsets beyond it are clamped: SQLite integers are 64-bit
SECURITY_HEADERS = {
    # No inline script or style anywhere: the console's only CSS is /console/static/console.css.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def fmt_time(ts: float | None) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def pretty(data: Any) -> str:
    """JSON text (or bytes) indented when it parses; as it is otherwise."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return data
    return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True)


def path_part(value: str) -> str:
    return quote(value, safe=":")


def function_path(urn: str) -> str:
    return f"{PREFIX}/functions/{path_part(urn)}"


def record_path(urn: str, request_id: str) -> str:
    return f"{function_path(urn)}/records/{path_part(request_id)}"


def query_string(params: dict[str, Any]) -> str:
    return urlencode({k: v for k, v in params.items() if v not in (None, "")})


def short_name(urn: str) -> str:
    """``urn:...:function:<package>:<name>[:latest]`` -> ``<name>``."""
    parts = urn.split(":")
    return parts[-2] if parts[-1] == "latest" and len(parts) > 7 else parts[-1]


ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("triggerbus.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(ts=fmt_time, pretty=pretty, path=path_part, name=short_name)
ENV.globals.update(prefix=PREFIX, function_path=function_path, record_path=record_path, query_string=query_string)


# The session a request proved (set by the console middleware).
SESSION_KEY: Any = web.RequestKey("console_session", object) if hasattr(web, "RequestKey") else "console_session"


def page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    session = request.get(SESSION_KEY)
    text = ENV.get_template(template).render(csrf=session.csrf if session else "", logged_in=bool(session), **context)
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})
