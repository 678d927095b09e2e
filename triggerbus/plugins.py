"""The connectors this service runs: one class per source, built from the connector context.

A connector reads its service settings from ``ctx.options`` (see ``Service._options``).
"""

from __future__ import annotations

from connectors.apig import ApigConnector
from connectors.base import Connector
from connectors.cts import CTSConnector
from connectors.dds import DDSConnector
from connectors.dis import DISConnector
from connectors.eventgrid import EventGridConnector
from connectors.iotda import IoTDAConnector
from connectors.kafka import KafkaConnector
from connectors.lts import LTSConnector
from connectors.obs import OBSConnector
from connectors.rabbitmq import RabbitMQConnector
from connectors.smn import SMNConnector
from connectors.timer import TimerConnector

CONNECTOR_CLASSES: list[type[Connector]] = [
    TimerConnector,
    ApigConnector,
    KafkaConnector,
    SMNConnector,
    CTSConnector,
    RabbitMQConnector,
    IoTDAConnector,
    EventGridConnector,
    OBSConnector,
    DISConnector,
    LTSConnector,
    DDSConnector,
]
