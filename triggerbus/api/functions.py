"""Functions: create, list, show config, update config, delete; async invoke config."""

from __future__ import annotations

from aiohttp import web

from schemas.async_config import AsyncInvokeConfigRequest
from schemas.errors import not_found
from schemas.functions import CreateFunctionRequest, UpdateFunctionConfigRequest
from triggerbus.api.common import json_response, project_id, query_int, read_model, service

BASE = "/v2/{project_id}/fgs/functions"


async def create_function(request: web.Request) -> web.Response:
    svc = service(request)
    project = project_id(request)
    req = await read_model(request, CreateFunctionRequest, svc.settings.max_api_body)
    fn = await svc.registry.create(project, req)
    return json_response(svc.registry.to_config(fn).dump())


async def list_functions(request: web.Request) -> web.Response:
    svc = service(request)
    marker = query_int(request, "marker", 0, low=0, high=10**9)
    limit = query_int(request, "maxitems", 400, low=1, high=400)
    fns, count = await svc.store.list_functions(project_id(request), marker, limit)
    next_marker = marker + len(fns) if marker + len(fns) < count else count
    return json_response(
        {
            "functions": [svc.registry.to_config(f).dump() for f in fns],
            "next_marker": next_marker,
            "count": count,
        }
    )


async def get_config(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    return json_response(svc.registry.to_config(fn).dump())


async def update_config(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    req = await read_model(request, UpdateFunctionConfigRequest, 1024 * 1024)
    updated = await svc.registry.update_config(fn, req)
    await svc.dispatcher.retire(fn.qualified_urn)
    return json_response(svc.registry.to_config(updated).dump())


async def delete_function(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    await svc.triggers.delete_all(fn)
    await svc.registry.delete(fn)
    await svc.dispatcher.retire(fn.qualified_urn)
    return web.Response(status=204)


async def put_async_config(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    req = await read_model(request, AsyncInvokeConfigRequest, 64 * 1024)
    config = await svc.registry.put_async_config(fn, req)
    return json_response(config.dump())


async def get_async_config(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    config = await svc.registry.get_async_config(fn)
    if config is None:
        raise not_found(f"function {fn.name} has no async invoke config")
    return json_response(config.dump())


async def delete_async_config(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    if not await svc.registry.delete_async_config(fn):
        raise not_found(f"function {fn.name} has no async invoke config")
    return web.Response(status=204)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post(BASE, create_function)
    router.add_get(BASE, list_functions)
    router.add_get(BASE + "/{function_urn}/config", get_config)
    router.add_put(BASE + "/{function_urn}/config", update_config)
    router.add_delete(BASE + "/{function_urn}", delete_function)
    router.add_put(BASE + "/{function_urn}/async-invoke-config", put_async_config)
    router.add_get(BASE + "/{function_urn}/async-invoke-config", get_async_config)
    router.add_delete(BASE + "/{function_urn}/async-invoke-config", delete_async_config)
