"""DIS destination: an async invocation's outcome is put as one record into a DIS stream.

``destination: DIS`` with ``param: {"stream_name": ...}`` puts the destination event (the
documented JSON, as UTF-8 bytes) into that stream of the function's project, with the
invocation's request id as partition key (so one function's outcomes spread over the shards,
and every outcome of one request lands on one shard).

The put is deduplicated by request id: when the destination worker delivers the same task again
(it crashed after the put, before acking), the second put finds the first one's record and
returns its sequence number instead of adding a copy. The put goes through the DIS connector
(:meth:`connectors.dis.DISConnector.put_once`), attached once the connectors exist.
"""

from __future__ import annotations

from typing import Protocol

from invoker.envelope import DestinationTask
from schemas.urn import FunctionUrn


class RecordPutter(Protocol):
    async def put_once(
        self, project_id: str, stream_name: str, data: bytes, *, partition_key: str, dedupe_key: str
    ) -> tuple[str, str]: ...


class DISSink:
    """A :class:`invoker.destinations.DestinationSink`; the putter is attached once the
    connectors exist (the sinks are built before them)."""

    def __init__(self) -> None:
        self._putter: RecordPutter | None = None

    def attach(self, putter: RecordPutter) -> None:
        self._putter = putter

    async def deliver(self, task: DestinationTask) -> str:
        if self._putter is None:
            raise RuntimeError("the DIS connector is not running in this service")
        stream_name = str(task.param["stream_name"])
        project_id = FunctionUrn.parse(task.function_urn).project_id
        shard, sequence_number = await self._putter.put_once(
            project_id,
            stream_name,
            task.event.encode("utf-8"),
            partition_key=task.request_id,
            dedupe_key=f"destination/{task.request_id}",
        )
        return f"DIS stream {stream_name} {shard} (sequence number {sequence_number})"
