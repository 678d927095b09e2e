"""The FunctionGraph-compatible REST API (``/v2/{project_id}/fgs/...``) and the APIG ingress.

Every request needs ``X-Auth-Token`` except ``/health`` and the APIG ingress (which
applies each API's own auth). Every error is a FunctionGraph body
``{"error_code": "FSS.xxxx", "error_msg": "..."}``; nothing escapes as a bare 500.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from connectors.apig import INGRESS_PREFIX
from schemas.errors import FSSError, forbidden, internal, method_not_allowed, not_found, unauthorized
from triggerbus.api import functions, invocations, records, triggers
from triggerbus.api.common import SERVICE_KEY, fss_response, json_response

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_PATHS = ("/health",)


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
    if path in PUBLIC_PATHS or path == INGRESS_PREFIX or path.startswith(INGRESS_PREFIX + "/"):
        return await handler(request)
    token = request.headers.get("X-Auth-Token")
    if not token:
        raise unauthorized("X-Auth-Token header is required")
    expected: str = request.app[SERVICE_KEY].token
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise forbidden("invalid token")
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    svc = request.app[SERVICE_KEY]
    return json_response({"status": "ok", "region": svc.settings.region, "timezone": svc.settings.timezone})


def create_app(service: object, *, client_max_size: int) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, auth_middleware], client_max_size=client_max_size)
    app[SERVICE_KEY] = service
    app.router.add_get("/health", health)
    functions.add_routes(app.router)
    invocations.add_routes(app.router)
    records.add_routes(app.router)
    triggers.add_routes(app.router)
    apig = service.apig  # type: ignore[attr-defined]
    app.router.add_route("*", INGRESS_PREFIX + "{tail:(/.*)?}", apig.handle)
    return app
