"""APIG triggers: an HTTP ingress that turns a request into the APIG event.

Each trigger publishes an API at ``<service>/apig<path>`` (``invoke_url`` in the
trigger's event_data). ``match_mode`` NORMAL matches the path exactly (with
``{name}`` segments filling ``pathParameters``); SWA matches it as a prefix and
puts the rest under ``pathParameters[""]``, as FunctionGraph's prefix APIs do.

Invocation is synchronous by default: the function must return
``{statusCode, headers, body, isBase64Encoded}``, which becomes the HTTP
response; anything else is an HTTP 500, as on FunctionGraph. With
``func_info.invocation_type: async`` the caller gets 202 and a request id. The
backend timeout (``func_info.timeout``, ms) bounds how long the caller waits;
the function itself keeps its own timeout.

Auth: NONE; IAM (the service token in ``X-Auth-Token``); APP (the trigger's
``app_code`` in ``X-Apig-AppCode``).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

from aiohttp import web

from bus.aio import Background
from connectors.base import Connector, TriggerSpec
from invoker import tracing
from invoker.runtime.base import InvocationResult
from invoker.runtime.streams import read_bounded
from schemas.errors import FSSError, bad_request, conflict
from schemas.events.apig import ApigEvent, APIGResponse

log = logging.getLogger(__name__)

INGRESS_PREFIX = "/apig"
MAX_BODY_BYTES = 6 * 1024 * 1024
_PARAM_RE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_-]*)\}$")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "trailer"}


@dataclass(slots=True)
class _Route:
    trigger_id: str
    function_urn: str
    method: str  # GET ... or ANY
    segments: tuple[str, ...]
    prefix: bool
    auth: str
    app_code: str
    timeout_s: float
    asynchronous: bool
    api_id: str
    stage: str

    def match(self, method: str, segments: list[str]) -> dict[str, str] | None:
        if self.method not in ("ANY", method):
            return None
        if self.prefix:
            if len(segments) < len(self.segments):
                return None
        elif len(segments) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for pattern, value in zip(self.segments, segments, strict=False):
            found = _PARAM_RE.match(pattern)
            if found:
                params[found.group(1)] = value
            elif pattern != value:
                return None
        if self.prefix:
            rest = "/".join(segments[len(self.segments) :])
            if rest:
                params[""] = rest
        return params


def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


def _error(status: int, code: str, message: str, request_id: str) -> web.Response:
    return web.json_response(
        {"error_code": code, "error_msg": message, "request_id": request_id},
        status=status,
        headers={"X-Request-Id": request_id},
    )


class ApigConnector(Connector):
    trigger_types: ClassVar[tuple[str, ...]] = ("APIG", "DEDICATEDGATEWAY", "APIC")
    validates_against_existing: ClassVar[bool] = True
    public_prefixes: ClassVar[tuple[str, ...]] = (INGRESS_PREFIX,)  # each API applies its own auth

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._routes: dict[str, _Route] = {}
        self._background = Background()  # sync calls outliving their caller's backend timeout
        self.requests = 0

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_route("*", INGRESS_PREFIX + "{tail:(/.*)?}", self.handle)

    async def close(self) -> None:
        await self._background.stop()

    # -- trigger lifecycle -------------------------------------------------------------------

    async def validate(self, trigger: TriggerSpec, *, existing: list[TriggerSpec]) -> dict[str, Any]:
        data = trigger.event_data
        path = str(data.get("path", ""))
        method = str(data.get("req_method", "ANY")).upper()
        if "//" in path or any(seg in (".", "..") for seg in _segments(path)):
            raise bad_request(f"event_data.path: {path!r} must not contain empty, '.' or '..' segments")
        for other in existing:
            if other.trigger_id == trigger.trigger_id or other.trigger_type not in self.trigger_types:
                continue
            other_method = str(other.event_data.get("req_method", "ANY")).upper()
            same_path = str(other.event_data.get("path", "")).rstrip("/") == path.rstrip("/")
            if same_path and (method == other_method or "ANY" in (method, other_method)):
                raise conflict(f"event_data.path: {method} {path} is already published by trigger {other.trigger_id}")
        if str(data.get("auth", "IAM")).upper() == "APP":
            code = data.get("app_code")
            if not isinstance(code, str) or len(code) < 16:
                raise bad_request(
                    "event_data.app_code: auth APP needs an app_code of at least 16 characters "
                    "(callers send it in X-Apig-AppCode)"
                )
        api_id = str(data.get("api_id") or uuid.uuid4().hex)
        return {
            "api_id": api_id,
            "triggerid": trigger.trigger_id,
            "invoke_url": f"{self.ctx.public_url.rstrip('/')}{INGRESS_PREFIX}{path}",
            "env_name": data.get("env_name") or "RELEASE",
            "auth": str(data.get("auth", "IAM")).upper(),
            "match_mode": str(data.get("match_mode", "SWA")).upper(),
            "req_method": method,
        }

    async def activate(self, trigger: TriggerSpec) -> None:
        data = trigger.event_data
        func_info = data.get("func_info") or {}
        self._routes[trigger.trigger_id] = _Route(
            trigger_id=trigger.trigger_id,
            function_urn=trigger.function_urn,
            method=str(data.get("req_method", "ANY")).upper(),
            segments=tuple(_segments(str(data.get("path", "/")))),
            prefix=str(data.get("match_mode", "SWA")).upper() == "SWA",
            auth=str(data.get("auth", "IAM")).upper(),
            app_code=str(data.get("app_code") or ""),
            timeout_s=float(func_info.get("timeout", 5000)) / 1000,
            asynchronous=str(func_info.get("invocation_type", "sync")).lower() == "async",
            api_id=str(data.get("api_id") or trigger.trigger_id),
            stage=str(data.get("env_name") or "RELEASE"),
        )

    async def deactivate(self, trigger_id: str) -> None:
        self._routes.pop(trigger_id, None)

    def status(self, trigger_id: str) -> dict[str, Any]:
        route = self._routes.get(trigger_id)
        return {"published": route is not None}

    # -- ingress -------------------------------------------------------------------------------

    def _find(self, method: str, path: str) -> tuple[_Route, dict[str, str]] | None:
        segments = _segments(path)
        best: tuple[_Route, dict[str, str]] | None = None
        for route in self._routes.values():
            params = route.match(method, segments)
            if params is None:
                continue
            # Most specific wins: exact over prefix, then the longest path, then a named method.
            rank = (not route.prefix, len(route.segments), route.method != "ANY")
            if best is None or rank > (not best[0].prefix, len(best[0].segments), best[0].method != "ANY"):
                best = (route, params)
        return best

    def _authorized(self, route: _Route, request: web.Request) -> bool:
        if route.auth == "NONE":
            return True
        if route.auth == "APP":
            given = request.headers.get("X-Apig-AppCode", "")
            return bool(route.app_code) and hmac.compare_digest(given, route.app_code)
        given = request.headers.get("X-Auth-Token", "")
        return bool(self.ctx.auth_token) and hmac.compare_digest(given, self.ctx.auth_token)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        request_id = uuid.uuid4().hex
        path = request.path[len(INGRESS_PREFIX) :] or "/"
        found = self._find(request.method.upper(), path)
        if found is None:
            return _error(404, "APIG.0101", f"no API published at {request.method} {path}", request_id)
        route, params = found
        if not self._authorized(route, request):
            return _error(401, "APIG.0301", f"authentication ({route.auth}) required for this API", request_id)
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _error(413, "APIG.0201", f"request body over {MAX_BODY_BYTES} bytes", request_id)
        body, complete = await read_bounded(request.content, MAX_BODY_BYTES)
        if not complete:
            return _error(413, "APIG.0201", f"request body over {MAX_BODY_BYTES} bytes", request_id)
        query: dict[str, str] = {}
        for key, value in request.query.items():
            query[key] = value  # APIG passes one value per name; the last one wins
        event = ApigEvent.build(
            method=request.method.upper(),
            path=path,
            headers=dict(request.headers),
            query=query,
            path_params=params,
            body_bytes=body,
            api_id=route.api_id,
            request_id=request_id,
            stage=route.stage,
            source_ip=request.remote or "",
        )
        payload = event.dump_json()
        trace = tracing.from_headers(request.headers)
        try:
            if route.asynchronous:
                rid = await self.ctx.invocations.enqueue(
                    route.function_urn,
                    payload,
                    trigger_id=route.trigger_id,
                    trigger_type="APIG",
                    source={"api_id": route.api_id, "path": path, "method": request.method.upper()},
                    trace=trace,
                )
                return web.json_response({"request_id": rid}, status=202, headers={"X-Request-Id": request_id})
            invocation = self._background.spawn(
                self.ctx.invocations.invoke_sync(
                    route.function_urn, payload.encode(), request_id=request_id, trace=trace
                )
            )
            try:
                async with asyncio.timeout(route.timeout_s):
                    result = await asyncio.shield(invocation)
            except TimeoutError:
                return _error(504, "APIG.0203", f"backend timeout after {route.timeout_s * 1000:.0f} ms", request_id)
        except FSSError as exc:
            return _error(exc.status, exc.code, exc.message, request_id)
        return self._respond(result, request_id)

    @staticmethod
    def _respond(result: InvocationResult, request_id: str) -> web.Response:
        if result.error is not None:
            return _error(500, "FSS.0500", f"function invocation failed ({result.error.category.value})", request_id)
        try:
            response = APIGResponse.from_function_result(json.loads(result.body))
        except ValueError as exc:
            return _error(500, "FSS.0500", f"function result is not a valid APIG response: {exc}", request_id)
        body: bytes
        if response.isBase64Encoded:
            try:
                body = base64.b64decode(response.body, validate=True)
            except ValueError:
                return _error(500, "FSS.0500", "isBase64Encoded is true but body is not valid base64", request_id)
        else:
            body = response.body.encode("utf-8")
        headers = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["X-Request-Id"] = request_id
        try:
            return web.Response(status=response.statusCode, body=body, headers=headers)
        except ValueError as exc:
            return _error(500, "FSS.0500", f"function returned an unusable HTTP response: {exc}", request_id)
