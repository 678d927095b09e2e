"""Triggers: ``/v2/{project_id}/fgs/triggers/{function_urn}[/{trigger_type_code}/{trigger_id}]``."""

from __future__ import annotations

from aiohttp import web

from triggerbus.api.common import json_response, read_json, service

BASE = "/v2/{project_id}/fgs/triggers/{function_urn}"
ONE = BASE + "/{trigger_type_code}/{trigger_id}"
MAX_TRIGGER_BODY = 256 * 1024


async def create_trigger(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    body = await read_json(request, MAX_TRIGGER_BODY)
    trigger = await svc.triggers.create(fn, body)
    return json_response(svc.triggers.to_api(trigger), status=201)


async def list_triggers(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    return json_response([svc.triggers.to_api(t) for t in await svc.triggers.list(fn)])


async def delete_all(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    await svc.triggers.delete_all(fn)
    return web.Response(status=204)


async def get_trigger(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    trigger = await svc.triggers.get(fn, request.match_info["trigger_type_code"], request.match_info["trigger_id"])
    return json_response(svc.triggers.to_api(trigger))


async def update_trigger(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    body = await read_json(request, MAX_TRIGGER_BODY)
    trigger = await svc.triggers.update(
        fn, request.match_info["trigger_type_code"], request.match_info["trigger_id"], body
    )
    return json_response(svc.triggers.to_api(trigger))


async def delete_trigger(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    trigger = await svc.triggers.get(fn, request.match_info["trigger_type_code"], request.match_info["trigger_id"])
    await svc.triggers.delete(trigger)
    return web.Response(status=204)


async def get_checkpoint(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    checkpoint = await svc.triggers.get_checkpoint(
        fn, request.match_info["trigger_type_code"], request.match_info["trigger_id"]
    )
    return json_response(checkpoint)


async def put_checkpoint(request: web.Request) -> web.Response:
    svc = service(request)
    fn = await svc.registry.require(request.match_info["function_urn"], request.match_info["project_id"])
    body = await read_json(request, MAX_TRIGGER_BODY)
    checkpoint = await svc.triggers.set_checkpoint(
        fn, request.match_info["trigger_type_code"], request.match_info["trigger_id"], body
    )
    return json_response(checkpoint)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post(BASE, create_trigger)
    router.add_get(BASE, list_triggers)
    router.add_delete(BASE, delete_all)
    router.add_get(ONE, get_trigger)
    router.add_put(ONE, update_trigger)
    router.add_delete(ONE, delete_trigger)
    router.add_get(ONE + "/checkpoint", get_checkpoint)
    router.add_put(ONE + "/checkpoint", put_checkpoint)
