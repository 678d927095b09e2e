"""The connectors this service runs: one class per source, built from the connector context.

A connector reads its service settings from ``ctx.options`` (see ``Service._options``).
"""

from __future__ import annotations

from connectors.apig import ApigConnector
from connectors.base import Connector
from connectors.kafka import KafkaConnector
from connectors.timer import TimerConnector

CONNECTOR_CLASSES: list[type[Connector]] = [
    TimerConnector,
    ApigConnector,
    KafkaConnector,
]
