"""A small LTS-compatible API: log groups, log streams, reporting logs and reading them back.

* ``POST /v2/{project_id}/groups`` ``{"log_group_name", "ttl_in_days" (1-365, default 7)}`` -> 201
  ``{"log_group_id"}``; ``GET`` lists them (``{"log_groups": [...]}``); ``DELETE
  /v2/{project_id}/groups/{log_group_id}`` deletes a group with its streams and their logs.
* ``POST /v2/{project_id}/groups/{log_group_id}/streams`` ``{"log_stream_name", "ttl_in_days"?}`` ->
  201 ``{"log_stream_id"}``; ``GET`` lists them; ``DELETE .../streams/{log_stream_id}``.
* Reporting, LTS's ``POST /v2/{project_id}/lts/groups/{log_group_id}/streams/{log_stream_id}/tenant/contents``
  (also without ``/lts``): ``{"log_time_ns", "contents": ["line", ...], "labels": {...}}`` (line i
  gets time ``log_time_ns + i``) or ``{"contents": [{"log_time_ns", "log"}, ...], "labels"}`` (the
  high-accuracy form; also at ``.../tenant/contents/high-accuracy``). Bounds: at most 10,000 lines,
  1 MB per line, 5 MB per request; labels at most 50 of 64-character keys and 1 KB values.
* Reading, ``POST /v2/{project_id}/groups/{log_group_id}/streams/{log_stream_id}/content/query``
  ``{"start_time", "end_time" (epoch ms, inclusive), "limit" (1-5000, default 50)}`` -> ``{"count",
  "logs": [{"content", "line_num", "labels", "time"}]}``, oldest first.

Every request needs the management token (functions that report logs get it, with the URL, in
their user data); errors are FunctionGraph bodies like the rest of the API.
"""

from __future__ import annotations

import re
from typing import Annotated

from aiohttp import web
from pydantic import Field, StringConstraints, field_validator

from connectors.lts import LTSConnector, ReportedLog
from schemas.base import FGModel
from schemas.errors import bad_request, too_large
from schemas.triggers import StrictInt
from triggerbus.api.common import json_response, project_id, read_model, service

GROUPS = "/v2/{project_id}/groups"
GROUP = GROUPS + "/{log_group_id}"
STREAMS = GROUP + "/streams"
STREAM = STREAMS + "/{log_stream_id}"
REPORT_PATHS = (
    "/v2/{project_id}/lts/groups/{log_group_id}/streams/{log_stream_id}/tenant/contents",
    STREAM + "/tenant/contents",
    "/v2/{project_id}/lts/groups/{log_group_id}/streams/{log_stream_id}/tenant/contents/high-accuracy",
)
QUERY = STREAM + "/content/query"
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ID_RE = re.compile(r"^[0-9a-fA-F-]{1,64}$")
MAX_SMALL_BODY = 64 * 1024
MAX_REPORT_BODY = 5 * 1024 * 1024
MAX_LINES = 10000
MAX_LINE_BYTES = 1024 * 1024
MAX_LABELS = 50

Name = Annotated[str, StringConstraints(pattern=NAME_RE.pattern)]
Ttl = Annotated[StrictInt, Field(ge=1, le=365)]
TimeNs = Annotated[int, Field(ge=0, le=2**63 - 1)]


class CreateGroupRequest(FGModel):
    log_group_name: Name
    ttl_in_days: Ttl = 7


class CreateStreamRequest(FGModel):
    log_stream_name: Name
    ttl_in_days: Ttl | None = None


class TimedLine(FGModel):
    log_time_ns: TimeNs
    log: str


class ReportRequest(FGModel):
    log_time_ns: TimeNs | None = None
    contents: Annotated[list[str | TimedLine], Field(min_length=1, max_length=MAX_LINES)]
    labels: dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], str] = Field(default_factory=dict)
    tenant_project_id: str | None = None

    @field_validator("log_time_ns", mode="before")
    @classmethod
    def _digits(cls, value: object) -> object:
        # LTS's own examples send the nanoseconds as a string of digits
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_LABELS:
            raise ValueError(f"at most {MAX_LABELS} labels (got {len(value)})")
        for key, text in value.items():
            if len(text.encode()) > 1024:
                raise ValueError(f"label {key!r}: at most 1024 bytes")
        return value


class QueryRequest(FGModel):
    start_time: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]  # epoch ms: Redis stream ids are 64-bit
    end_time: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]
    limit: Annotated[StrictInt, Field(ge=1, le=5000)] = 50


def _lts(request: web.Request) -> LTSConnector:
    return next(c for c in service(request).connectors if isinstance(c, LTSConnector))


def _id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not ID_RE.match(value):
        raise bad_request(f"{name}: {value[:80]!r} is not a {name.replace('_', ' ')}")
    return value


def _lines(req: ReportRequest) -> list[ReportedLog]:
    lines: list[ReportedLog] = []
    for index, item in enumerate(req.contents):
        if isinstance(item, TimedLine):
            text, time_ns = item.log, item.log_time_ns
        else:
            if req.log_time_ns is None:
                raise bad_request("log_time_ns: is required when contents are strings (the first line's time, ns)")
            text, time_ns = item, req.log_time_ns + index
        if len(text.encode()) > MAX_LINE_BYTES:
            raise too_large(f"contents[{index}]: a log line is at most {MAX_LINE_BYTES} bytes")
        lines.append(ReportedLog(text, time_ns))
    return lines


# -- handlers ---------------------------------------------------------------------------------------------


async def create_group(request: web.Request) -> web.Response:
    req = await read_model(request, CreateGroupRequest, MAX_SMALL_BODY)
    group = await _lts(request).create_group(project_id(request), req.log_group_name, req.ttl_in_days)
    return json_response({"log_group_id": group.log_group_id}, status=201)


async def list_groups(request: web.Request) -> web.Response:
    groups = await _lts(request).list_groups(project_id(request))
    return json_response(
        {
            "log_groups": [
                {
                    "creation_time": int(g.created * 1000),
                    "log_group_name": g.name,
                    "log_group_id": g.log_group_id,
                    "ttl_in_days": g.ttl_in_days,
                }
                for g in groups
            ]
        }
    )


async def delete_group(request: web.Request) -> web.Response:
    await _lts(request).delete_group(project_id(request), _id(request, "log_group_id"))
    return web.Response(status=204)


async def create_stream(request: web.Request) -> web.Response:
    req = await read_model(request, CreateStreamRequest, MAX_SMALL_BODY)
    stream = await _lts(request).create_stream(
        project_id(request), _id(request, "log_group_id"), req.log_stream_name, req.ttl_in_days
    )
    return json_response({"log_stream_id": stream.log_stream_id}, status=201)


async def list_streams(request: web.Request) -> web.Response:
    streams = await _lts(request).list_streams(project_id(request), _id(request, "log_group_id"))
    return json_response(
        {
            "log_streams": [
                {
                    "creation_time": int(s.created * 1000),
                    "log_stream_name": s.name,
                    "log_stream_id": s.log_stream_id,
                    "ttl_in_days": s.ttl_in_days,
                    "filter_count": 0,
                }
                for s in streams
            ]
        }
    )


async def delete_stream(request: web.Request) -> web.Response:
    await _lts(request).delete_stream(project_id(request), _id(request, "log_group_id"), _id(request, "log_stream_id"))
    return web.Response(status=204)


async def report(request: web.Request) -> web.Response:
    project = project_id(request)
    group_id, stream_id = _id(request, "log_group_id"), _id(request, "log_stream_id")
    req = await read_model(request, ReportRequest, MAX_REPORT_BODY)
    lines = _lines(req)
    lts = _lts(request)
    stream = await lts.existing_stream(project, group_id, stream_id)
    await lts.report(stream, lines, req.labels)
    return json_response({"errorCode": "SVCSTG.ALS.200.200", "errorMessage": "Report success.", "result": None})


async def query(request: web.Request) -> web.Response:
    project = project_id(request)
    group_id, stream_id = _id(request, "log_group_id"), _id(request, "log_stream_id")
    req = await read_model(request, QueryRequest, MAX_SMALL_BODY)
    if req.end_time < req.start_time:
        raise bad_request(f"end_time: {req.end_time} is before start_time {req.start_time}")
    lts = _lts(request)
    stream = await lts.existing_stream(project, group_id, stream_id)
    logs = await lts.query(stream, req.start_time, req.end_time, req.limit)
    return json_response({"count": len(logs), "logs": logs, "isQueryComplete": len(logs) < req.limit})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post(GROUPS, create_group)
    router.add_get(GROUPS, list_groups)
    router.add_delete(GROUP, delete_group)
    router.add_post(STREAMS, create_stream)
    router.add_get(STREAMS, list_streams)
    router.add_delete(STREAM, delete_stream)
    for path in REPORT_PATHS:
        router.add_post(path, report)
    router.add_post(QUERY, query)
