"""A function that fails while a marker file exists: its failures succeed when redriven later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MARKER_SOURCE = """
import os
MARKER = {marker!r}
def handler(event, context):
    if os.path.exists(MARKER):
        raise RuntimeError("marker present: " + str(event))
    return {{"ok": True, "event": event}}
"""


async def create_marker_function(harness: Any, name: str, marker: Path) -> str:
    """Create the function (no async retries, so a failure is final at once); returns its URN."""
    marker.write_text("fail")
    urn: str = await harness.create_function(name, MARKER_SOURCE.format(marker=str(marker)))
    async with harness.http.put(
        harness.fgs(f"/functions/{urn}/async-invoke-config"), json={"max_async_retry_attempts": 0}
    ) as resp:
        assert resp.status == 200, await resp.text()
    return urn
