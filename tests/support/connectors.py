"""Connector-level tests: a connector run as if by one service process ("node"), without the service."""

from __future__ import annotations

from typing import Any

from bus.memory import MemoryBus
from connectors.base import ConnectorContext
from invoker.completion import CompletionHub
from invoker.ingest import Ingest

BUS_INGEST: Any = object()  # node_context's default ingest: a real Ingest onto the node's bus


def node_context(
    store: Any,
    node_id: str,
    completion: CompletionHub,
    *,
    bus: Any = None,
    invocations: Any = None,
    ingest: Any = BUS_INGEST,
    **options: Any,
) -> ConnectorContext:
    """The context a connector gets in the service process ``node_id`` (region "local", UTC).

    ``store`` holds trigger state (shared by the nodes of a test); ``bus`` is a fresh MemoryBus unless
    given; ``invocations`` and ``ingest`` are whatever stand-ins the test gives (None where the
    connector does not use them; ``ingest`` defaults to a real :class:`Ingest` onto ``bus``);
    ``options`` are the connector settings of this service.
    """
    bus = bus if bus is not None else MemoryBus()
    if ingest is BUS_INGEST:
        ingest = Ingest(bus, store, completion)
    return ConnectorContext(
        bus=bus,
        state=store,
        invocations=invocations,
        completion=completion,
        ingest=ingest,
        region="local",
        default_tz="UTC",
        node_id=node_id,
        options=options,
    )
