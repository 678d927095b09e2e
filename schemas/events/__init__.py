"""FunctionGraph trigger event payloads, one model tree per trigger type.

Every model parses leniently (the forms the public sources disagree on) and ``dump()``s the
Huawei form exactly. ``EVENT_MODELS`` maps a ``trigger_type_code`` to the event class it delivers.
"""

from __future__ import annotations

from schemas.base import FGModel
from schemas.events.apig import ApigEvent, ApigRequestContext, APIGResponse
from schemas.events.cts import CTSDomain, CTSEvent, CTSTrace, CTSUser
from schemas.events.dds import DDSBody, DDSEvent, DDSRecord, MongoChange, MongoNamespace
from schemas.events.dis import DISEvent, DISMessage, DISRecord
from schemas.events.eventgrid import CloudEvent, EventGridEvent
from schemas.events.gaussmongo import GaussMongoBody, GaussMongoEvent, GaussMongoRecord
from schemas.events.iotda import IoTDAEvent, IoTDAHeader, IoTDANotifyData, IoTDATag
from schemas.events.kafka import KafkaEvent, KafkaRecord, RocketMQEvent, RocketMQRecord
from schemas.events.lts import LTSData, LTSEvent, LTSPayload
from schemas.events.obs import (
    OBSS3,
    OBSBucket,
    OBSCloudEvent,
    OBSEvent,
    OBSObject,
    OBSRecord,
    OBSv3Record,
    encode_object_key,
)
from schemas.events.rabbitmq import RabbitMQEvent, RabbitMQRecord
from schemas.events.smn import SMNEvent, SMNMessage, SMNRecord
from schemas.events.timer import TimerEvent

EVENT_MODELS: dict[str, type[FGModel]] = {
    "TIMER": TimerEvent,
    "APIG": ApigEvent,
    "DEDICATEDGATEWAY": ApigEvent,
    "APIC": ApigEvent,
    "OBS": OBSEvent,
    "SMN": SMNEvent,
    "DIS": DISEvent,
    "KAFKA": KafkaEvent,
    "OPENSOURCEKAFKA": KafkaEvent,
    "RABBITMQ": RabbitMQEvent,
    "ROCKETMQ": RocketMQEvent,
    "DDS": DDSEvent,
    "GAUSSMONGO": GaussMongoEvent,
    "LTS": LTSEvent,
    "CTS": CTSEvent,
    "EVENTGRID": EventGridEvent,
    "IOTDA": IoTDAEvent,
}

__all__ = [
    "EVENT_MODELS",
    "OBSS3",
    "APIGResponse",
    "ApigEvent",
    "ApigRequestContext",
    "CTSDomain",
    "CTSEvent",
    "CTSTrace",
    "CTSUser",
    "CloudEvent",
    "DDSBody",
    "DDSEvent",
    "DDSRecord",
    "DISEvent",
    "DISMessage",
    "DISRecord",
    "EventGridEvent",
    "GaussMongoBody",
    "GaussMongoEvent",
    "GaussMongoRecord",
    "IoTDAEvent",
    "IoTDAHeader",
    "IoTDANotifyData",
    "IoTDATag",
    "KafkaEvent",
    "KafkaRecord",
    "LTSData",
    "LTSEvent",
    "LTSPayload",
    "MongoChange",
    "MongoNamespace",
    "OBSBucket",
    "OBSCloudEvent",
    "OBSEvent",
    "OBSObject",
    "OBSRecord",
    "OBSv3Record",
    "RabbitMQEvent",
    "RabbitMQRecord",
    "RocketMQEvent",
    "RocketMQRecord",
    "SMNEvent",
    "SMNMessage",
    "SMNRecord",
    "TimerEvent",
    "encode_object_key",
]
