"""What the store keeps about functions and triggers (internal shapes, not API shapes)."""

from __future__ import annotations

import time
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
