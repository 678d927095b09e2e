"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bus.sqlitedb import Database
from tests.support.servers import kafka_from_env_or_start, mongo_from_env_or_start
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


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real Kafka-protocol broker (tansu) for the session: its bootstrap address."""
    server = kafka_from_env_or_start()
    yield server.address
    server.stop()


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    """A real MongoDB-compatible server (SecantusDB) for the session: its connection URI."""
    server = mongo_from_env_or_start()
    yield server.address
    server.stop()
