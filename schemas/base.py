"""Base model and helpers shared by every schema.

Two directions matter for FunctionGraph compatibility:

* **input** is lenient where the public sources disagree (e.g. a DDS ``token`` may
  arrive as a JSON object or as a JSON-encoded string): validators accept both;
* **output** is strict: ``dump()`` yields exactly the documented Huawei JSON, with
  the documented key spelling and nesting, including documented ``null`` values.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict


class FGModel(BaseModel):
    """Base for every FunctionGraph-shaped model.

    ``populate_by_name`` lets code build models with Python names while aliases
    carry the documented JSON keys (``Records``, ``ShardID``, ``PrincipalId`` ...).
    """

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    def dump(self) -> dict[str, Any]:
        """The documented JSON object (aliases applied, ``None`` kept where declared)."""
        return self.model_dump(mode="json", by_alias=True)

    def dump_json(self) -> str:
        return json.dumps(self.dump(), ensure_ascii=False, separators=(",", ":"))


def json_compact(value: Any) -> str:
    """Compact, UTF-8 preserving JSON used wherever the contract embeds JSON in a string."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
