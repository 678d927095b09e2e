"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bus.sqlitedb import Database
from triggerbus.store.sqlite import SQLiteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """The real embedded store on a temporary SQLite file."""
    db = Database(tmp_path / "store.db")
    await db.open()
    store = SQLiteStore(db)
    await store.start()
    yield store
    await db.close()
