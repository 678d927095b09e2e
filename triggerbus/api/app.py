"""The FunctionGraph-compatible REST API (``/v2/{project_id}/fgs/...``) and the connectors' endpoints.

Every request needs ``X-Auth-Token`` except ``/health`` and the connectors' public
ingress paths (the APIG ingress applies each API's own auth). Every error is a FunctionGraph body
``{"error_code": "FSS.xxxx", "error_msg": "..."}``; nothing escapes as a bare 500.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from schemas.errors import FSSError, forbidden, internal, method_not_allowed, not_found, unauthorized
from triggerbus import console
from triggerbus.api import dis, functions, invocation_logs, invocations, lts, metrics, records, smn, traces, triggers
from triggerbus.api.common import SERVICE_KEY, fss_response, json_response
from triggerbus.health import report as health_report

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_PATHS = ("/health",)
PUBLIC_PREFIXES: web.AppKey[tuple[str, ...]] = web.AppKey("public_prefixes", tuple)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except FSSError as exc:
        return fss_response(exc)
    except web.HTTPNotFound:
        return fss_response(not_found(f"no such API: {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return fss_response(
            method_not_allowed(f"{request.method} is not allowed on {request.path} (allowed: {allowed})")
        )
    except web.HTTPRequestEntityTooLarge:
        return fss_response(FSSError(413, "FSS.0413", "request body too large"))
    except web.HTTPException:
        raise
    except Exception:
        incident = uuid.uuid4().hex[:12]
        log.exception("unhandled error on %s %s (incident %s)", request.method, request.path, incident)
        return fss_response(internal(f"internal error; incident {incident} is in the service log"))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path in PUBLIC_PATHS or any(
        path == prefix or path.startswith(prefix + "/") for prefix in request.app[PUBLIC_PREFIXES]
    ):
        return await handler(request)
    token = request.headers.get("X-Auth-Token") or _bearer(request.headers.get("Authorization", ""))
    if not token:
        raise unauthorized("X-Auth-Token header (or Authorization: Bearer <token>) is required")
    expected: str = request.app[SERVICE_KEY].token
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise forbidden("invalid token")
    return await handler(request)


def _bearer(value: str) -> str:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def health(request: web.Request) -> web.Response:
    """200 with ``"status": "ok"`` or ``"degraded"`` (a trigger cannot reach its source; see
    triggerbus/health.py); ``?strict=1`` answers 503 when degraded. The errors' text is shown only
    to a caller with the API token (it names hosts); anyone sees which triggers are affected."""
    svc = request.app[SERVICE_KEY]
    body = await health_report(svc)
    token = request.headers.get("X-Auth-Token") or _bearer(request.headers.get("Authorization", ""))
    if not (token and hmac.compare_digest(token.encode(), svc.token.encode())):
        body["triggers"] = {tid: {k: v for k, v in p.items() if k != "error"} for tid, p in body["triggers"].items()}
    strict = request.query.get("strict", "") not in ("", "0", "false")
    return json_response(body, status=503 if strict and body["status"] != "ok" else 200)


def create_app(service: object, *, client_max_size: int) -> web.Application:
    # Innermost, the audit: it sees only authenticated requests and the handler's own errors.
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware, traces.trace_middleware], client_max_size=client_max_size
    )
    app[SERVICE_KEY] = service
    app.router.add_get("/health", health)
    functions.add_routes(app.router)
    invocations.add_routes(app.router)
    records.add_routes(app.router)
    invocation_logs.add_routes(app.router)
    triggers.add_routes(app.router)
    smn.add_routes(app.router)
    dis.add_routes(app.router)
    lts.add_routes(app.router)
    traces.add_routes(app.router)
    metrics.add_routes(app.router)
    connectors = service.connectors  # type: ignore[attr-defined]
    # The console has its own session login (triggerbus/console), not the token header.
    app[PUBLIC_PREFIXES] = (*(prefix for c in connectors for prefix in c.public_prefixes), console.PREFIX)
    if service.settings.metrics_public:  # type: ignore[attr-defined]  # TRIGGERBUS_METRICS_PUBLIC=1
        app[PUBLIC_PREFIXES] = (*app[PUBLIC_PREFIXES], metrics.PATH)
    console.setup(app, service)
    for connector in connectors:
        connector.add_routes(app.router)
    return app
