"""The real Redis that DIS and LTS streams live in, and a key prefix of each test's own."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from connectors.redis_streams import StreamBackend
from tests.integration.conftest import make_settings

REDIS = os.environ.get("TRIGGERBUS_TEST_REDIS", "redis://127.0.0.1:6379/0")


def redis_prefix_fixture(kind: str) -> Callable[[], AsyncIterator[str]]:
    """A ``prefix`` fixture: a fresh Redis key prefix (``tbtest-<kind>-<hex>``) per test, whose keys
    are all deleted after the test. Assign it in a test module: ``prefix = redis_prefix_fixture("dis")``.
    """

    @pytest.fixture(name="prefix")
    async def prefix() -> AsyncIterator[str]:
        name = f"tbtest-{kind}-{uuid.uuid4().hex[:12]}"
        yield name
        backend = StreamBackend(REDIS, name)
        try:
            await backend.remove_prefix()
        finally:
            await backend.close()

    return prefix


def streams_settings(tmp_path: Path, prefix: str, **extra: Any) -> Any:
    """Test settings (data under ``tmp_path/data``) whose streams live in the test Redis under ``prefix``."""
    return make_settings(tmp_path / "data", streams_redis=REDIS, streams_prefix=prefix, **extra)
