"""A small DIS-compatible API: streams, putting records, and reading them back by cursor.

* ``POST /v2/{project_id}/streams`` ``{"stream_name", "partition_count" (1-50), "data_duration"
  (retention hours, 24-168, default 24), "stream_type", "data_type"}`` -> 201; a taken name is 409.
* ``GET /v2/{project_id}/streams`` (``offset``, ``limit`` 1-100), ``GET`` / ``DELETE
  /v2/{project_id}/streams/{stream_name}``.
* ``POST /v2/{project_id}/records`` ``{"stream_name", "records": [{"data" (Base64), "partition_key"
  | "partition_id" | "explicit_hash_key"}]}`` -> ``{"failed_record_count": 0, "records":
  [{"partition_id", "sequence_number"}]}``, in request order. A put is atomic: all records are
  stored or none (any invalid record refuses the whole put with the record's index). Bounds, as
  DIS: a record's data at most 1 MB, at most 500 records and 5 MB of data per put.
* ``GET /v2/{project_id}/cursors`` (``stream-name``, ``partition-id``, ``cursor-type``
  TRIM_HORIZON | LATEST | AT_SEQUENCE_NUMBER | AFTER_SEQUENCE_NUMBER | AT_TIMESTAMP,
  ``starting-sequence-number``, ``timestamp``) -> ``{"partition_cursor"}``; ``GET
  /v2/{project_id}/records`` (``partition-cursor``, ``max_fetch_bytes``) -> ``{"records",
  "next_partition_cursor"}``.

Every request needs the management token; errors are FunctionGraph bodies like the rest of the API.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from aiohttp import web
from pydantic import Field, StringConstraints

from connectors.dis import (
    MAX_FETCH_BYTES,
    MAX_PARTITION_KEY,
    MAX_PARTITIONS,
    MAX_PUT_BYTES,
    MAX_PUT_RECORDS,
    MAX_RECORD_BYTES,
    RETENTION_HOURS,
    STREAM_NAME_RE,
    DISConnector,
    PutRecord,
    hash_range,
    shard_id,
)
from schemas.base import FGModel
from schemas.errors import bad_request, too_large
from schemas.triggers import StrictInt
from triggerbus.api.common import json_response, project_id, query_int, read_model, service

STREAMS = "/v2/{project_id}/streams"
STREAM = STREAMS + "/{stream_name}"
RECORDS = "/v2/{project_id}/records"
CURSORS = "/v2/{project_id}/cursors"
MAX_STREAM_BODY = 64 * 1024
MAX_PUT_BODY = MAX_PUT_BYTES * 4 // 3 + MAX_PUT_RECORDS * 1024 + 64 * 1024  # Base64 plus keys and JSON
CURSOR_TYPES = ("TRIM_HORIZON", "LATEST", "AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER", "AT_TIMESTAMP")

StreamName = Annotated[str, StringConstraints(pattern=STREAM_NAME_RE.pattern)]


class CreateStreamRequest(FGModel):
    stream_name: StreamName
    partition_count: Annotated[StrictInt, Field(ge=1, le=MAX_PARTITIONS)]
    data_duration: Annotated[StrictInt, Field(ge=RETENTION_HOURS[0], le=RETENTION_HOURS[1])] = 24
    stream_type: Literal["COMMON", "ADVANCED"] = "COMMON"
    data_type: Literal["BLOB", "JSON", "CSV"] = "BLOB"


class PutRecordEntry(FGModel):
    data: str
    partition_key: Annotated[str, StringConstraints(max_length=MAX_PARTITION_KEY)] | None = None
    partition_id: str | None = None
    explicit_hash_key: str | None = None


class PutRecordsRequest(FGModel):
    stream_name: StreamName
    stream_id: str | None = None  # accepted; streams are found by name
    records: Annotated[list[PutRecordEntry], Field(min_length=1, max_length=MAX_PUT_RECORDS)]


def _dis(request: web.Request) -> DISConnector:
    return next(c for c in service(request).connectors if isinstance(c, DISConnector))


def _ms(ts: float) -> int:
    return int(ts * 1000)


def _stream_name(request: web.Request) -> str:
    name = request.match_info["stream_name"]
    if not STREAM_NAME_RE.match(name):
        raise bad_request(f"stream_name: {name[:80]!r} must be 1-64 letters, digits, '-' or '_'")
    return name


def _decode_records(entries: list[PutRecordEntry]) -> list[PutRecord]:
    records: list[PutRecord] = []
    total = 0
    for index, entry in enumerate(entries):
        try:
            data = base64.b64decode("".join(entry.data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(f"records[{index}].data: must be Base64 (the record's bytes)") from None
        if len(data) > MAX_RECORD_BYTES:
            raise too_large(
                f"records[{index}].data: {len(data)} bytes; a DIS record is at most {MAX_RECORD_BYTES} bytes"
            )
        total += len(data)
        if total > MAX_PUT_BYTES:
            raise too_large(f"records: more than {MAX_PUT_BYTES} bytes of data in one put (at records[{index}])")
        explicit: int | None = None
        if entry.explicit_hash_key is not None:
            text = entry.explicit_hash_key.strip()
            if not text.isdigit() or int(text) >= 2**63:
                raise bad_request(
                    f"records[{index}].explicit_hash_key: must be an integer 0-{2**63 - 1} (got {text[:40]!r})"
                )
            explicit = int(text)
        records.append(
            PutRecord(
                data=data,
                partition_key=entry.partition_key,
                partition_id=entry.partition_id,
                explicit_hash_key=explicit,
            )
        )
    return records


# -- handlers ---------------------------------------------------------------------------------------------


async def create_stream(request: web.Request) -> web.Response:
    project = project_id(request)
    req = await read_model(request, CreateStreamRequest, MAX_STREAM_BODY)
    stream = await _dis(request).create_stream(project, req.stream_name, req.partition_count, req.data_duration)
    return json_response({"stream_name": stream.stream_name, "stream_id": stream.stream_id}, status=201)


async def list_streams(request: web.Request) -> web.Response:
    project = project_id(request)
    offset = query_int(request, "offset", 0, low=0, high=10**9)
    limit = query_int(request, "limit", 10, low=1, high=100)
    streams, total = await _dis(request).list_streams(project, offset, limit)
    return json_response(
        {
            "total_number": total,
            "stream_names": [s.stream_name for s in streams],
            "has_more_streams": offset + len(streams) < total,
            "stream_info_list": [
                {
                    "stream_name": s.stream_name,
                    "stream_id": s.stream_id,
                    "create_time": _ms(s.created),
                    "retention_period": s.data_duration,
                    "status": "RUNNING",
                    "stream_type": s.stream_type,
                    "data_type": s.data_type,
                    "partition_count": s.partition_count,
                }
                for s in streams
            ],
        }
    )


async def describe_stream(request: web.Request) -> web.Response:
    project = project_id(request)
    dis = _dis(request)
    stream = await dis.existing_stream(project, _stream_name(request))
    ranges = await dis.shard_ranges(stream)
    partitions = []
    for index, (first, last) in enumerate(ranges):
        partitions.append(
            {
                "status": "ACTIVE",
                "partition_id": shard_id(index),
                "hash_range": hash_range(index, stream.partition_count),
                "sequence_number_range": f"[{first} : {last}]" if first is not None else "[ : ]",
            }
        )
    return json_response(
        {
            "stream_name": stream.stream_name,
            "stream_id": stream.stream_id,
            "create_time": _ms(stream.created),
            "last_modified_time": _ms(stream.created),
            "retention_period": stream.data_duration,
            "status": "RUNNING",
            "stream_type": stream.stream_type,
            "data_type": stream.data_type,
            "writable_partition_count": stream.partition_count,
            "readable_partition_count": stream.partition_count,
            "partitions": partitions,
            "has_more_partitions": False,
            "update_partition_counts": [],
        }
    )


async def delete_stream(request: web.Request) -> web.Response:
    await _dis(request).delete_stream(project_id(request), _stream_name(request))
    return web.Response(status=204)


async def put_records(request: web.Request) -> web.Response:
    project = project_id(request)
    req = await read_model(request, PutRecordsRequest, MAX_PUT_BODY)
    records = _decode_records(req.records)
    dis = _dis(request)
    stream = await dis.existing_stream(project, req.stream_name)
    placed = await dis.put_records(stream, records)
    return json_response(
        {
            "failed_record_count": 0,
            "records": [{"partition_id": shard, "sequence_number": number} for shard, number in placed],
        }
    )


async def get_cursor(request: web.Request) -> web.Response:
    project = project_id(request)
    query = request.query
    name = query.get("stream-name", "")
    if not STREAM_NAME_RE.match(name):
        raise bad_request(f"stream-name: {name[:80]!r} must be 1-64 letters, digits, '-' or '_'")
    partition = query.get("partition-id", "")
    if not partition:
        raise bad_request("partition-id: is required (e.g. shardId-0000000000)")
    cursor_type = query.get("cursor-type", "AT_SEQUENCE_NUMBER")
    if cursor_type not in CURSOR_TYPES:
        raise bad_request(f"cursor-type: must be one of {', '.join(CURSOR_TYPES)} (got {cursor_type!r})")
    timestamp: int | None = None
    if "timestamp" in query:
        timestamp = query_int(request, "timestamp", 0, low=0, high=10**15)
    dis = _dis(request)
    stream = await dis.existing_stream(project, name)
    cursor = await dis.cursor(stream, partition, cursor_type, query.get("starting-sequence-number"), timestamp)
    return json_response({"partition_cursor": cursor})


async def get_records(request: web.Request) -> web.Response:
    project = project_id(request)
    cursor = request.query.get("partition-cursor", "")
    if not cursor:
        raise bad_request("partition-cursor: is required (from GET /v2/{project_id}/cursors)")
    max_bytes = query_int(request, "max_fetch_bytes", MAX_FETCH_BYTES, low=1, high=MAX_FETCH_BYTES)
    records, next_cursor = await _dis(request).get_records(project, cursor, max_bytes)
    return json_response({"records": records, "next_partition_cursor": next_cursor})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post(STREAMS, create_stream)
    router.add_get(STREAMS, list_streams)
    router.add_get(STREAM, describe_stream)
    router.add_delete(STREAM, delete_stream)
    router.add_post(RECORDS, put_records)
    router.add_get(RECORDS, get_records)
    router.add_get(CURSORS, get_cursor)
