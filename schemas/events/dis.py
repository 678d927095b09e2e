"""DIS event (contract §1.5).

Top-level keys are PascalCase (``ShardID``, ``Message``, ``Tag``, ``StreamName``: the Go struct has
no JSON tags), keys inside ``Message`` are snake_case. ``sequence_number`` is a string in every
sample although the doc table says Int, so integers are accepted and emitted as strings.
Record ``data`` is Base64.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from pydantic import Field, field_validator

from schemas.base import FGModel, json_compact


class DISRecord(FGModel):
    partition_key: str
    data: str
    sequence_number: str

    @field_validator("sequence_number", mode="before")
    @classmethod
    def _int_to_str(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    def data_bytes(self) -> bytes:
        return base64.b64decode(self.data)


class DISMessage(FGModel):
    next_partition_cursor: str = ""
    records: list[DISRecord]
    millis_behind_latest: str = ""

    @field_validator("millis_behind_latest", mode="before")
    @classmethod
    def _int_to_str(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value


class DISEvent(FGModel):
    shard_id: str = Field(alias="ShardID")
    message: DISMessage = Field(alias="Message")
    tag: str = Field("latest", alias="Tag")
    stream_name: str = Field(alias="StreamName")

    @staticmethod
    def partition_cursor(
        stream_name: str, shard_id: str, cursor_type: str, starting_sequence_number: str, generated_ms: int
    ) -> str:
        """The ``next_partition_cursor`` DIS returns: unpadded Base64 of compact JSON, as in the template."""
        cursor = {
            "getIteratorParam": {
                "stream-name": stream_name,
                "partition-id": shard_id,
                "cursor-type": cursor_type,
                "starting-sequence-number": starting_sequence_number,
            },
            "generateTimestamp": generated_ms,
        }
        return base64.b64encode(json_compact(cursor).encode()).decode("ascii").rstrip("=")

    @classmethod
    def build(
        cls,
        stream_name: str,
        shard_id: str,
        records: Sequence[tuple[str, bytes, int | str]],
        next_partition_cursor: str = "",
        tag: str = "latest",
        millis_behind_latest: str = "",
    ) -> DISEvent:
        """``records`` are ``(partition_key, payload, sequence_number)``; payloads are Base64-encoded here."""
        return cls(
            shard_id=shard_id,
            message=DISMessage(
                next_partition_cursor=next_partition_cursor,
                records=[
                    DISRecord(
                        partition_key=key,
                        data=base64.b64encode(payload).decode("ascii"),
                        sequence_number=str(seq),
                    )
                    for key, payload, seq in records
                ],
                millis_behind_latest=millis_behind_latest,
            ),
            tag=tag,
            stream_name=stream_name,
        )
