"""The web console under ``/console``: server-rendered HTML, no JavaScript, same token as the API.

One aiohttp sub-application. Its middleware does what every page needs: a session (else a
redirect to the login page), a CSRF token on every POST, HTML error pages, and the security
headers (a strict Content-Security-Policy: ``default-src 'self'``, no inline script or style).
Pages live in modules per page group; templates and the stylesheet are package data.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from schemas.errors import FSSError
from triggerbus.api.common import SERVICE_KEY
from triggerbus.console import charts_pages, functions, records, triggers
from triggerbus.console.auth import COOKIE, SESSION_TTL_S, SessionKeeper
from triggerbus.console.lag import SAMPLER_KEY, LagSampler
from triggerbus.console.render import PREFIX, SECURITY_HEADERS, SESSION_KEY, page, redirect

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSIONS_KEY: web.AppKey[SessionKeeper] = web.AppKey("console_sessions", SessionKeeper)
PUBLIC = (PREFIX + "/login", PREFIX + "/static/console.css")
MAX_FORM = 64 * 1024


def _sessions(request: web.Request) -> SessionKeeper:
    return request.app[SESSIONS_KEY]


async def _handle(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in PUBLIC:
        session = _sessions(request).session(request.cookies.get(COOKIE))
        if session is None:
            if request.method == "GET":
                return redirect(f"{PREFIX}/login?{_next_query(request.path_qs)}")
            return page(request, "error.html", status=401, title="Not logged in", message="Log in first.")
        request[SESSION_KEY] = session
        if request.method == "POST":
            form = await request.post()
            if not SessionKeeper.csrf_ok(session, _field(form, "csrf")):
                return page(request, "error.html", status=403, title="Refused", message="Invalid CSRF token.")
    try:
        return await handler(request)
    except FSSError as exc:
        return page(request, "error.html", status=exc.status, title=exc.code, message=exc.message)
    except web.HTTPException as exc:
        if 300 <= exc.status < 400:
            raise
        return page(request, "error.html", status=exc.status, title=str(exc.status), message=exc.reason)


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await _handle(request, handler)
    except web.HTTPException:
        raise
    except Exception:
        incident = uuid.uuid4().hex[:12]
        log.exception("console error on %s %s (incident %s)", request.method, request.path, incident)
        response = page(
            request, "error.html", status=500, title="Internal error", message=f"Incident {incident} is in the log."
        )
    response.headers.update(SECURITY_HEADERS)
    return response


def _next_query(path: str) -> str:
    return urlencode({"next": path})


def _safe_next(value: str) -> str:
    """Only a path inside the console (no scheme, no host, no ``//``)."""
    if value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return PREFIX + "/functions"


def _field(form: Any, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


async def login_form(request: web.Request) -> web.Response:
    return page(request, "login.html", title="Log in", next=_safe_next(request.query.get("next", "")), error="")


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    target = _safe_next(_field(form, "next"))
    keeper = _sessions(request)
    if not keeper.check_token(_field(form, "token")):
        return page(request, "login.html", status=403, title="Log in", next=target, error="Invalid token.")
    value, _ = keeper.new_session()
    response = redirect(target)
    response.set_cookie(
        COOKIE, value, max_age=SESSION_TTL_S, path=PREFIX, httponly=True, samesite="Strict", secure=request.secure
    )
    return response


async def logout(request: web.Request) -> web.Response:
    _sessions(request).revoke(request[SESSION_KEY])
    response = redirect(f"{PREFIX}/login")
    response.del_cookie(COOKIE, path=PREFIX)
    return response


async def stylesheet(request: web.Request) -> web.Response:
    css = resources.files("triggerbus.console").joinpath("static/console.css").read_bytes()
    response = web.Response(body=css, content_type="text/css", charset="utf-8")
    response.headers["Cache-Control"] = "max-age=3600"
    return response


async def home(request: web.Request) -> web.Response:
    return redirect(f"{PREFIX}/functions")


def create_console(service: Any) -> web.Application:
    console = web.Application(middlewares=[console_middleware], client_max_size=MAX_FORM)
    console[SERVICE_KEY] = service
    console[SESSIONS_KEY] = SessionKeeper(service.token)
    console[SAMPLER_KEY] = LagSampler(service)

    async def run_sampler(app: web.Application) -> AsyncIterator[None]:
        app[SAMPLER_KEY].start()
        yield
        await app[SAMPLER_KEY].stop()

    console.cleanup_ctx.append(run_sampler)
    router = console.router
    router.add_get("", home)
    router.add_get("/", home)
    router.add_get("/login", login_form)
    router.add_post("/login", login)
    router.add_post("/logout", logout)
    router.add_get("/static/console.css", stylesheet)
    for module in (functions, triggers, records, charts_pages):
        module.add_routes(router)
    return console


def setup(app: web.Application, service: Any) -> None:
    """Mount the console at ``/console`` (its paths are exempt from the API's token header)."""
    app.add_subapp(PREFIX, create_console(service))
