"""Console pages: the functions list, one function (config, async config, triggers), trigger on/off."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from schemas.errors import bad_request
from schemas.urn import PROJECT_RE
from triggerbus.api.common import service
from triggerbus.console.render import MAX_MARKER, function_path, page, redirect
from triggerbus.store.models import StoredFunction
from triggerbus.trigger_view import lag_text, position_parts, trigger_detail, trigger_state

PROJECT_COOKIE = "tb_console_project"
PAGE_SIZE = 100


def current_project(request: web.Request) -> str:
    """The project the console shows: ``?project=``, else the last one chosen, else ``default``."""
    for value in (request.query.get("project"), request.cookies.get(PROJECT_COOKIE)):
        if value and PROJECT_RE.match(value):
            return value
    return "default"


def remember_project(request: web.Request, response: web.Response) -> web.Response:
    project = request.query.get("project")
    if project and PROJECT_RE.match(project):
        response.set_cookie(PROJECT_COOKIE, project, path="/console", httponly=True, samesite="Strict")
    return response


async def function_of(request: web.Request) -> StoredFunction:
    fn: StoredFunction = await service(request).registry.require(request.match_info["urn"])
    return fn


def trigger_row(trigger: dict[str, Any], function_urn: str) -> dict[str, Any]:
    """What the console shows of a trigger document (``TriggerManager.to_api``)."""
    state = trigger.get("state") or {}
    return {
        "doc": trigger,
        "function_urn": function_urn,
        "view": trigger_state(trigger),
        "lag": lag_text(state),
        "position": position_parts(state),
        "detail": trigger_detail(trigger),
    }


async def functions_page(request: web.Request) -> web.Response:
    svc = service(request)
    project = current_project(request)
    try:
        marker = min(max(0, int(request.query.get("marker", "0"))), MAX_MARKER)
    except ValueError:
        raise bad_request("marker: must be an integer") from None
    fns, count = await svc.store.list_functions(project, marker, PAGE_SIZE)
    rows = [{"fn": fn, "triggers": len(await svc.store.list_triggers(function_urn=fn.qualified_urn))} for fn in fns]
    response = page(
        request,
        "functions.html",
        title="Functions",
        project=project,
        rows=rows,
        count=count,
        marker=marker,
        next_marker=marker + len(fns) if marker + len(fns) < count else 0,
        prev_marker=max(0, marker - PAGE_SIZE) if marker else None,
    )
    return remember_project(request, response)


async def function_page(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await function_of(request)
    config = svc.registry.to_config(fn).dump()
    async_config = await svc.registry.get_async_config(fn)
    triggers = [trigger_row(svc.triggers.to_api(t), fn.qualified_urn) for t in await svc.triggers.list(fn)]
    return page(
        request,
        "function.html",
        title=fn.name,
        fn=fn,
        config=config,
        async_config=async_config.dump() if async_config else None,
        triggers=triggers,
    )


async def set_trigger_status(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await function_of(request)
    form = await request.post()
    status = form.get("status")
    if status not in ("ACTIVE", "DISABLED"):
        raise bad_request("status: must be ACTIVE or DISABLED")
    await svc.triggers.update(
        fn, request.match_info["type"], request.match_info["trigger_id"], {"trigger_status": status}
    )
    back = form.get("back")
    return redirect(back if isinstance(back, str) and back.startswith("/console/") else function_path(fn.qualified_urn))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/functions", functions_page)
    router.add_get("/functions/{urn}", function_page)
    router.add_post("/functions/{urn}/triggers/{type}/{trigger_id}/status", set_trigger_status)
