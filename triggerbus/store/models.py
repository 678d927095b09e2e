"""What the store keeps about functions and triggers (internal shapes, not API shapes)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field


class StoredFunction(BaseModel):
    urn: str  # unqualified: urn:fss:<region>:<project>:function:<package>:<name>
    project_id: str
    package: str
    name: str
    runtime: str
    handler: str
    timeout: int
    memory_size: int
    code_type: str = ""
    code_filename: str = ""
    code_url: str = ""
    code_size: int = 0
    digest: str = ""  # sha256 of the code package
    user_data: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    max_instance_num: int = 400
    credentials: dict[str, str] = Field(default_factory=dict)  # values encrypted at rest
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)

    @property
    def qualified_urn(self) -> str:
        return f"{self.urn}:latest"


class StoredTrigger(BaseModel):
    trigger_id: str
    function_urn: str  # qualified
    trigger_type: str
    status: str
    event_type_code: str = ""
    event_data: dict[str, Any] = Field(default_factory=dict)  # secret fields encrypted at rest
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)
    last_error: str = ""
    last_error_at: float | None = None


class StoredTopic(BaseModel):
    """An SMN topic of the built-in SMN-compatible API (subscriptions are the SMN triggers)."""

    topic_urn: str  # urn:smn:<region>:<project_id>:<name>
    project_id: str
    name: str
    display_name: str = ""
    topic_id: str  # 32 hex characters, as SMN's topic_id
    created: float = Field(default_factory=time.time)


class StoredDISStream(BaseModel):
    """A DIS stream of the built-in DIS-compatible API; its records live in Redis, one stream per shard."""

    project_id: str
    stream_name: str  # unique per project
    stream_id: str  # 32 hex characters; names the Redis keys, so a re-created stream starts empty
    partition_count: int
    data_duration: int  # retention in hours
    stream_type: str = "COMMON"
    data_type: str = "BLOB"
    created: float = Field(default_factory=time.time)


class StoredLogGroup(BaseModel):
    """An LTS log group of the built-in LTS-compatible API."""

    log_group_id: str  # a UUID, as LTS's
    project_id: str
    name: str  # unique per project
    ttl_in_days: int
    created: float = Field(default_factory=time.time)


class StoredLogStream(BaseModel):
    """An LTS log stream (``log_topic_id`` in trigger configs); its logs live in one Redis stream."""

    log_stream_id: str  # a UUID, as LTS's
    log_group_id: str
    project_id: str
    name: str  # unique per log group
    ttl_in_days: int  # the group's, unless set on the stream
    created: float = Field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """One function's unfinished async invocations (records WAIT or RUNNING)."""

    function_urn: str
    waiting: int
    running: int
    oldest_wait_created: float | None  # acceptance time of the oldest WAIT record
