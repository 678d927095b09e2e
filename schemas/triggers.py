"""Trigger configuration: trigger types, statuses and the per-type ``event_data`` models.

``event_data`` is validated when a trigger is created or updated. Every model keeps unknown keys
(``extra="allow"``) because FunctionGraph adds keys over time and clients echo response-only ones,
but the documented keys are type-checked strictly (no ``"100"`` for an int, no ``1`` for a bool)
and range-checked, so :func:`parse_event_data` can answer with a precise FSS.0400 message such as
``event_data.batch_size: Input should be less than or equal to 1000 (got 5000)``.

Sources: contract §2.2/§2.3 (HW SDK and Terraform key sets) and the user guide §1 (ranges, reserved
database names, which triggers start disabled and which cannot be disabled).
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from schemas.base import FGModel
from schemas.errors import bad_request, validation_failed


class TriggerType(StrEnum):
    TIMER = "TIMER"
    APIG = "APIG"
    DEDICATEDGATEWAY = "DEDICATEDGATEWAY"
    APIC = "APIC"
    CTS = "CTS"
    DDS = "DDS"
    GAUSSMONGO = "GAUSSMONGO"
    DMS = "DMS"
    DIS = "DIS"
    LTS = "LTS"
    OBS = "OBS"
    SMN = "SMN"
    KAFKA = "KAFKA"
    OPENSOURCEKAFKA = "OPENSOURCEKAFKA"
    RABBITMQ = "RABBITMQ"
    ROCKETMQ = "ROCKETMQ"
    EVENTGRID = "EVENTGRID"
    IOTDA = "IOTDA"


class TriggerStatus(StrEnum):
    """``ACTIVE`` / ``DISABLED``. The HW Go SDK spells the latter ``DISABLE``; both are accepted
    (case-insensitively) and ``DISABLED`` is emitted."""

    ACTIVE = "ACTIVE"
    DISABLED = "DISABLED"

    @classmethod
    def _missing_(cls, value: object) -> TriggerStatus | None:
        if isinstance(value, str):
            text = value.strip().upper()
            if text == "ACTIVE":
                return cls.ACTIVE
            if text in ("DISABLED", "DISABLE"):
                return cls.DISABLED
        return None


# ---------------------------------------------------------------------------- field types

StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]
NonEmptyStr = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


def _bool_or_bool_string(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value


# Terraform sends ``is_serial`` as the string "true"/"false"; the OTC API documents a Boolean.
BoolOrBoolString = Annotated[bool, BeforeValidator(_bool_or_bool_string), Strict()]


def _normalise_case(choices: tuple[str, ...]) -> BeforeValidator:
    """Case-insensitive match against ``choices``, normalised to the documented spelling."""

    def normalise(value: object) -> object:
        if isinstance(value, str):
            for choice in choices:
                if value.strip().lower() == choice.lower():
                    return choice
        return value

    return BeforeValidator(normalise)


# ---------------------------------------------------------------------------- validators

TIMER_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CJK = "\u3400-\u4dbf\u4e00-\u9fff"
API_NAME_RE = re.compile(rf"^[A-Za-z{_CJK}][A-Za-z0-9_{_CJK}]{{2,63}}$")
CTS_OPERATION_RE = re.compile(r"^[^:;\s]+:[^:;\s]+(?:;[^:;\s]+)*:[^:;\s]+(?:;[^:;\s]+)*$")
SMN_TOPIC_URN_RE = re.compile(r"^urn:smn:[A-Za-z0-9_-]+:[A-Za-z0-9_-]+:[A-Za-z0-9][A-Za-z0-9_-]{0,255}$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
BUCKET_CHARS_RE = re.compile(r"^[a-z0-9.-]+$")
RESERVED_MONGO_DBS = ("admin", "local", "config")


def _check_timer_name(value: str) -> str:
    if not TIMER_NAME_RE.match(value):
        raise ValueError("timer name must be 1-64 characters: letters, digits, '_' or '-'")
    return value


def _check_api_name(value: str) -> str:
    if not API_NAME_RE.match(value):
        raise ValueError(
            "API name must be 3-64 characters, start with a letter or Chinese character and contain "
            "only letters, digits, underscores or Chinese characters"
        )
    return value


def _check_api_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must start with '/'")
    if any(c.isspace() for c in value) or "?" in value or "#" in value:
        raise ValueError("must not contain whitespace, '?' or '#'")
    return value


def _check_cts_operation(value: str) -> str:
    if not CTS_OPERATION_RE.match(value):
        raise ValueError(
            "operation must look like 'Service:resourceA;resourceB:operation1;operation2' "
            "(e.g. 'ECS:ecs;server:restartServer;deleteServer')"
        )
    return value


def _check_db_name(value: str) -> str:
    if value.lower() in RESERVED_MONGO_DBS:
        raise ValueError(f"database {value!r} is reserved (admin, local and config cannot be used)")
    if any(c in value for c in '/\\. "$*<>:|?') or len(value.encode()) > 63:
        raise ValueError('database name must be at most 63 bytes without /\\. "$*<>:|? characters')
    return value


def _check_collection_name(value: str) -> str:
    if "$" in value or value.startswith("system."):
        raise ValueError("collection name must not contain '$' or start with 'system.'")
    return value


def _check_endpoint(text: str, what: str) -> None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{what} {text!r} must be host:port with a port between 1 and 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{what} {text!r} has an invalid IPv6 address") from None
    elif not HOSTNAME_RE.match(host):
        raise ValueError(f"{what} {text!r} has an invalid host {host!r}")


def _check_address_list(value: str) -> str:
    """Comma-separated ``host:port`` list (Kafka brokers, RabbitMQ address); spaces are dropped."""
    parts = [part.strip() for part in value.split(",")]
    if not any(parts):
        raise ValueError("address list must not be empty: expected 'host:port[,host:port...]'")
    for part in parts:
        if not part:
            raise ValueError("address list has an empty entry: expected 'host:port[,host:port...]'")
        _check_endpoint(part, "address")
    return ",".join(parts)


def _check_bucket(value: str) -> str:
    if not 3 <= len(value) <= 63:
        raise ValueError("bucket name must be 3-63 characters")
    if not BUCKET_CHARS_RE.match(value):
        raise ValueError("bucket name may contain only lowercase letters, digits, '.' and '-'")
    if not (value[0].isalnum() and value[-1].isalnum()):
        raise ValueError("bucket name must start and end with a lowercase letter or digit")
    if ".." in value or ".-" in value or "-." in value:
        raise ValueError("bucket name must not contain '..', '.-' or '-.'")
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return value
    raise ValueError("bucket name must not be formatted as an IP address")


CHANNEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _check_channel_name(value: str) -> str:
    if not CHANNEL_NAME_RE.match(value):
        raise ValueError("channel name must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


def _check_topic_urn(value: str) -> str:
    if not SMN_TOPIC_URN_RE.match(value):
        raise ValueError("must be 'urn:smn:<region>:<project_id>:<topic_name>'")
    return value


def _check_mongo_uri(value: str) -> str:
    if not value.startswith(("mongodb://", "mongodb+srv://")):
        raise ValueError("must start with 'mongodb://' or 'mongodb+srv://'")
    return value


OBS_EVENTS = (
    "s3:ObjectCreated:*",
    "s3:ObjectCreated:Put",
    "s3:ObjectCreated:Post",
    "s3:ObjectCreated:Copy",
    "s3:ObjectCreated:CompleteMultipartUpload",
    "s3:ObjectRemoved:*",
    "s3:ObjectRemoved:Delete",
    "s3:ObjectRemoved:DeleteMarkerCreated",
)
# OTC's API doc lists short forms (``ObjectCreated``, ``Put``, ...); forms without ``s3:`` are
# what events carry in ``eventName``. All map to the HW ``s3:`` form, case-insensitively.
_OBS_EVENT_ALIASES: dict[str, str] = {}
for _canonical in OBS_EVENTS:
    _category, _action = _canonical.split(":")[1:]
    _OBS_EVENT_ALIASES[_canonical.lower()] = _canonical
    _OBS_EVENT_ALIASES[f"{_category}:{_action}".lower()] = _canonical
    _OBS_EVENT_ALIASES[(_category if _action == "*" else _action).lower()] = _canonical


def _normalise_obs_event(value: object) -> object:
    if not isinstance(value, str):
        return value
    canonical = _OBS_EVENT_ALIASES.get(value.strip().lower())
    if canonical is None:
        raise ValueError(f"unsupported OBS event: expected one of {', '.join(OBS_EVENTS)}")
    return canonical


def _reject_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    return value


# ---------------------------------------------------------------------------- event_data models


class EventData(FGModel):
    """Base for every ``event_data`` model: unknown keys are kept; ``dump()`` omits unset options."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class TimerEventData(EventData):
    name: Annotated[str, AfterValidator(_check_timer_name)]
    schedule_type: Annotated[Literal["Rate", "Cron"], _normalise_case(("Rate", "Cron"))]
    # Rate/cron syntax is checked by the timer connector; here it only has to be present.
    schedule: NonEmptyStr
    user_event: str | None = Field(None, max_length=4096)


class ApigFuncInfo(EventData):
    function_urn: str | None = None
    invocation_type: Annotated[Literal["sync", "async"], _normalise_case(("sync", "async"))] = "sync"
    timeout: Annotated[StrictInt, Field(ge=1, le=60000)]
    version: str | None = None


HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "ANY")


class ApigEventData(EventData):
    """APIG (shared), DEDICATEDGATEWAY (dedicated, ``instance_id`` = gateway) and APIC (ROMA)."""

    name: Annotated[str, AfterValidator(_check_api_name)]
    path: Annotated[str, AfterValidator(_check_api_path)]
    req_method: (
        Annotated[
            Literal["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "ANY"],
            _normalise_case(HTTP_METHODS),
        ]
        | None
    ) = None
    protocol: Annotated[Literal["HTTP", "HTTPS"], _normalise_case(("HTTP", "HTTPS"))] | None = None
    auth: Annotated[Literal["IAM", "APP", "NONE"], _normalise_case(("IAM", "APP", "NONE"))] | None = None
    match_mode: Annotated[Literal["SWA", "NORMAL"], _normalise_case(("SWA", "NORMAL"))] | None = None
    type: Annotated[Literal[1, 2], BeforeValidator(_reject_bool)] | None = None
    env_name: str = "RELEASE"
    env_id: str | None = None
    group_id: str | None = None
    group_name: str | None = None
    sl_domain: str | None = None
    backend_type: str | None = None
    instance_id: str | None = None
    func_info: ApigFuncInfo
    # Response-only keys (FunctionGraph fills them in; clients may echo them back).
    triggerid: str | None = None
    api_id: str | None = None
    api_name: str | None = None
    invoke_url: str | None = None
    roma_app_id: str | None = None


CTSOperation = Annotated[str, AfterValidator(_check_cts_operation)]


class CTSEventData(EventData):
    name: str | None = None
    operations: list[CTSOperation]

    @field_validator("operations")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must list at least one 'Service:resourceType:operation' entry")
        return value


class MongoEventData(EventData):
    """DDS and GAUSSMONGO (GeminiDB Mongo) change-stream triggers."""

    instance_id: NonEmptyStr
    db_name: Annotated[NonEmptyStr, AfterValidator(_check_db_name)]
    collection_name: Annotated[NonEmptyStr, AfterValidator(_check_collection_name)]
    db_user: str | None = None
    db_password: str | None = None
    batch_size: Annotated[StrictInt, Field(ge=1, le=10000)] = 100
    # Self-hosted addition: how the Mongo connector reaches the instance.
    connection_uri: Annotated[str, AfterValidator(_check_mongo_uri)] | None = None
    # Triggerbus extensions (docs/dds.md): how long a batch may wait to fill, and what to do when
    # the resume token is no longer in the oplog.
    batch_window_ms: Annotated[StrictInt, Field(ge=0, le=300000)] | None = None
    on_history_lost: (
        Annotated[
            Literal["fail", "resume_from_time", "resume_latest"],
            _normalise_case(("fail", "resume_from_time", "resume_latest")),
        ]
        | None
    ) = None
    # Response-only: Sharding / ReplicaSet / Single.
    mode: str | None = None


class DDSEventData(MongoEventData):
    pass


class GaussMongoEventData(MongoEventData):
    pass


class DISEventData(EventData):
    stream_name: NonEmptyStr
    sharditerator_type: Annotated[Literal["TRIM_HORIZON", "LATEST"], _normalise_case(("TRIM_HORIZON", "LATEST"))]
    polling_interval: Annotated[StrictInt, Field(gt=0)]
    polling_unit: Annotated[Literal["s", "ms"], _normalise_case(("s", "ms"))] = "s"
    max_fetch_bytes: Annotated[StrictInt, Field(ge=0, le=4194304)] | None = None
    batch_size: Annotated[StrictInt, Field(ge=1, le=10000)] | None = None
    is_serial: BoolOrBoolString | None = None
    # Triggerbus extension (docs/dis.md): unfinished batches per trigger when is_serial is false
    # (the console's 1-80 "concurrency"; it has no documented API key).
    concurrency: Annotated[StrictInt, Field(ge=1, le=80)] | None = None


class DMSEventData(EventData):
    """Legacy DMS queue trigger."""

    queue_id: NonEmptyStr
    consumer_group_id: NonEmptyStr
    polling_interval: Annotated[StrictInt, Field(gt=0)] = 30


AddressList = Annotated[str, AfterValidator(_check_address_list)]


class KafkaEventData(EventData):
    """DMS for Kafka. With ``kafka_ssl_enable`` the instance needs SASL credentials."""

    instance_id: NonEmptyStr
    topic_ids: list[NonEmptyStr]
    batch_size: Annotated[StrictInt, Field(ge=1, le=1000)] = 100
    kafka_user: str | None = None
    kafka_password: str | None = None
    kafka_ssl_enable: StrictBool | None = None
    kafka_connect_address: AddressList | None = None

    @field_validator("topic_ids")
    @classmethod
    def _topics(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must list at least one topic")
        return value

    @model_validator(mode="after")
    def _ssl_credentials(self) -> KafkaEventData:
        if self.kafka_ssl_enable and not (self.kafka_user and self.kafka_password):
            raise ValueError("kafka_user and kafka_password are required when kafka_ssl_enable is true")
        return self


class OpenSourceKafkaEventData(KafkaEventData):
    """Self-built Kafka: no DMS instance (``instance_id`` optional), broker list required."""

    instance_id: NonEmptyStr | None = None  # type: ignore[assignment]
    kafka_connect_address: AddressList


class RabbitMQEventData(EventData):
    instance_id: NonEmptyStr
    exchange_name: NonEmptyStr
    access_password: Annotated[str, StringConstraints(min_length=1)]
    access_user: str | None = None
    connect_address: AddressList | None = None
    vhost: str | None = None
    ssl_enable: StrictBool | None = None
    batch_size: Annotated[StrictInt, Field(ge=1, le=1000)] = 100


class RocketMQEventData(EventData):
    instance_id: NonEmptyStr
    topic: NonEmptyStr
    consumer_group: NonEmptyStr
    batch_size: Annotated[StrictInt, Field(ge=1, le=1000)] = 100
    enable_acl: StrictBool | None = None
    access_key: str | None = None
    secret_key: str | None = None

    @model_validator(mode="after")
    def _acl_credentials(self) -> RocketMQEventData:
        if self.enable_acl and not (self.access_key and self.secret_key):
            raise ValueError("access_key and secret_key are required when enable_acl is true")
        return self


class LTSEventData(EventData):
    log_group_id: NonEmptyStr
    log_topic_id: NonEmptyStr
    log_group_name: str | None = None
    log_topic_name: str | None = None
    # Triggerbus extension (docs/lts.md): the "accumulated time" threshold of a batch.
    batch_window_ms: Annotated[StrictInt, Field(ge=0, le=300000)] | None = None


ObsEventName = Annotated[str, BeforeValidator(_normalise_obs_event)]


class OBSEventData(EventData):
    bucket: Annotated[str, AfterValidator(_check_bucket)]
    events: list[ObsEventName]
    name: str | None = None
    prefix: str | None = Field(None, max_length=1024)
    suffix: str | None = Field(None, max_length=1024)

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"must list at least one event: {', '.join(OBS_EVENTS)}")
        return list(dict.fromkeys(value))


class SMNEventData(EventData):
    topic_urn: Annotated[str, AfterValidator(_check_topic_urn)]
    subscription_status: str | None = None  # response-only: Unconfirmed / Confirmed


class EventGridEventData(EventData):
    """EVENTGRID (contract §2.3): which channel, source and event types reach the function.

    Every key is optional (an unset filter matches everything); what is set is checked. ``bucket``,
    ``prefix`` and ``suffix`` filter OBS events (source ``HC.OBS.DWR``) on their bucket and object key.
    """

    channel_id: str | None = None
    channel_name: Annotated[str, AfterValidator(_check_channel_name)] | None = None
    source_name: NonEmptyStr | None = None
    trigger_name: str | None = None
    agency: str | None = None
    bucket: Annotated[str, AfterValidator(_check_bucket)] | None = None
    prefix: str | None = Field(None, max_length=1024)
    suffix: str | None = Field(None, max_length=1024)
    event_types: list[NonEmptyStr] | None = None
    key_encode: StrictBool | None = Field(None, alias="Key_encode")
    created_time: str | None = None
    status: str | None = None

    @field_validator("event_types")
    @classmethod
    def _event_types(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("must list at least one event type, or be left out to match every type")
        return None if value is None else list(dict.fromkeys(value))


def _check_mqtt_topic_filter(value: str) -> str:
    """MQTT topic filter rules (MQTT 3.1.1 §4.7, 5.0 §4.7): ``+`` and ``#`` fill whole levels."""
    if not value:
        raise ValueError("topic filter must not be empty")
    if "\x00" in value:
        raise ValueError("topic filter must not contain the NUL character")
    if len(value.encode()) > 65535:
        raise ValueError("topic filter must be at most 65535 bytes")
    if value.startswith(("$share/", "$queue/")):
        raise ValueError("shared subscriptions ($share/...) are not supported: a trigger is already one consumer")
    levels = value.split("/")
    for number, level in enumerate(levels, start=1):
        if "#" in level and (level != "#" or number != len(levels)):
            raise ValueError(f"'#' must be a whole level and the last one (level {number} is {level!r})")
        if "+" in level and level != "+":
            raise ValueError(f"'+' must be a whole level (level {number} is {level!r})")
    return value


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


def _mqtt_qos(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be the integer 0 or 1")
    return value


def _mqtt_version(value: object) -> object:
    text = str(value).strip().lower().removeprefix("v") if isinstance(value, str | int) else value
    return {"5": "5", "5.0": "5", "3.1.1": "3.1.1", "311": "3.1.1", "4": "3.1.1"}.get(str(text), value)


def _check_broker_address(value: str) -> str:
    value = value.strip()
    _check_endpoint(value, "broker address")
    return value


MqttTopicFilter = Annotated[str, AfterValidator(_check_mqtt_topic_filter)]


class IoTDAEventData(EventData):
    """IOTDA: device messages read from an MQTT broker (no FunctionGraph key set is public, §2.3).

    The keys are Triggerbus's: where the broker is, which topic filters to subscribe and how, and
    the ``product_id``/``app_id`` the events' ``notify_data.header`` carries. ``password`` is a
    secret (stored encrypted, returned as ``******``). ``client_id`` is response-only: the
    connector derives it from the trigger id, so a trigger keeps its MQTT session across restarts.
    """

    broker_address: Annotated[str, AfterValidator(_check_broker_address)] | None = None
    topics: Annotated[list[MqttTopicFilter], BeforeValidator(_one_or_many), Field(max_length=32)]
    qos: Annotated[Literal[0, 1], BeforeValidator(_mqtt_qos)] = 1
    mqtt_version: Annotated[Literal["3.1.1", "5"], BeforeValidator(_mqtt_version)] = "5"
    password: str | None = None  # before username, which is checked against it
    username: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = Field(
        None, validate_default=True
    )
    product_id: NonEmptyStr | None = None
    app_id: NonEmptyStr | None = None
    session_expiry_s: Annotated[StrictInt, Field(ge=60, le=4294967295)] = 86400
    client_id: str | None = None  # response-only

    @field_validator("topics")
    @classmethod
    def _distinct_topics(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must list at least one topic filter, e.g. '$oc/devices/+/sys/messages/up'")
        return list(dict.fromkeys(value))

    @field_validator("username")
    @classmethod
    def _user_for_password(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Checked on username, not password: a validation error never echoes the password.
        if not value and info.data.get("password") and info.data.get("mqtt_version") == "3.1.1":
            raise ValueError("is required with a password over MQTT 3.1.1")
        return value


EVENT_DATA_MODELS: dict[TriggerType, type[EventData]] = {
    TriggerType.TIMER: TimerEventData,
    TriggerType.APIG: ApigEventData,
    TriggerType.DEDICATEDGATEWAY: ApigEventData,
    TriggerType.APIC: ApigEventData,
    TriggerType.CTS: CTSEventData,
    TriggerType.DDS: DDSEventData,
    TriggerType.GAUSSMONGO: GaussMongoEventData,
    TriggerType.DMS: DMSEventData,
    TriggerType.DIS: DISEventData,
    TriggerType.LTS: LTSEventData,
    TriggerType.OBS: OBSEventData,
    TriggerType.SMN: SMNEventData,
    TriggerType.KAFKA: KafkaEventData,
    TriggerType.OPENSOURCEKAFKA: OpenSourceKafkaEventData,
    TriggerType.RABBITMQ: RabbitMQEventData,
    TriggerType.ROCKETMQ: RocketMQEventData,
    TriggerType.EVENTGRID: EventGridEventData,
    TriggerType.IOTDA: IoTDAEventData,
}


def parse_trigger_type(trigger_type: object) -> TriggerType:
    """``TriggerType`` for a ``trigger_type_code`` (case-insensitive), or FSS.0400 listing the valid ones."""
    if isinstance(trigger_type, str):
        try:
            return TriggerType(trigger_type.strip().upper())
        except ValueError:
            pass
    raise bad_request(f"unsupported trigger_type_code {trigger_type!r}: expected one of {', '.join(TriggerType)}")


def parse_event_data(trigger_type: str, data: object) -> EventData:
    """Validate ``event_data`` for ``trigger_type``; FSS.0400 with a precise message otherwise."""
    kind = parse_trigger_type(trigger_type)
    if data is None:
        raise bad_request("event_data: is required")
    if not isinstance(data, dict):
        raise bad_request(f"event_data: must be a JSON object (got {_json_type(data)})")
    try:
        return EVENT_DATA_MODELS[kind].model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc, "event_data") from None


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


# ---------------------------------------------------------------------------- status rules

# User guide: "SMN and APIG triggers cannot be disabled after creation, only deleted"; the other
# gateway types and OBS (a bucket notification) follow the same rule.
CANNOT_DISABLE: frozenset[TriggerType] = frozenset(
    {TriggerType.SMN, TriggerType.APIG, TriggerType.DEDICATEDGATEWAY, TriggerType.APIC, TriggerType.OBS}
)

# Contract §2.2 (OTC create-trigger doc): "By default, DDS and Kafka triggers are in the DISABLED
# state"; the user guide adds that open-source Kafka triggers are created disabled.
DISABLED_BY_DEFAULT: frozenset[TriggerType] = frozenset(
    {TriggerType.DDS, TriggerType.KAFKA, TriggerType.OPENSOURCEKAFKA}
)


def parse_status(requested: object) -> TriggerStatus:
    """``ACTIVE``/``DISABLED`` (``DISABLE`` and any case accepted), or FSS.0400."""
    if isinstance(requested, str):
        try:
            return TriggerStatus(requested)
        except ValueError:
            pass
    raise bad_request(f"trigger_status: must be ACTIVE or DISABLED (got {requested!r})")


def check_status(trigger_type: str | TriggerType, requested: object) -> TriggerStatus:
    """The status ``requested`` for a create or update, refusing to disable a cannot-disable type."""
    kind = parse_trigger_type(trigger_type)
    status = parse_status(requested)
    if status is TriggerStatus.DISABLED and kind in CANNOT_DISABLE:
        raise bad_request(f"trigger_status: {kind} triggers cannot be disabled, only deleted (got {requested!r})")
    return status


def initial_status(trigger_type: str | TriggerType, requested: str | None) -> TriggerStatus:
    """Status of a new trigger: the requested one (checked), else DISABLED for DDS, KAFKA and
    OPENSOURCEKAFKA, else ACTIVE. An empty string counts as not requested."""
    if requested is None or (isinstance(requested, str) and not requested.strip()):
        kind = parse_trigger_type(trigger_type)
        return TriggerStatus.DISABLED if kind in DISABLED_BY_DEFAULT else TriggerStatus.ACTIVE
    return check_status(trigger_type, requested)


# ---------------------------------------------------------------------------- secrets

REDACTED = "******"

SECRET_FIELDS: dict[TriggerType, frozenset[str]] = {kind: frozenset() for kind in TriggerType} | {
    TriggerType.DDS: frozenset({"db_password"}),
    TriggerType.GAUSSMONGO: frozenset({"db_password"}),
    TriggerType.KAFKA: frozenset({"kafka_password"}),
    TriggerType.OPENSOURCEKAFKA: frozenset({"kafka_password"}),
    TriggerType.RABBITMQ: frozenset({"access_password"}),
    TriggerType.ROCKETMQ: frozenset({"secret_key"}),
    TriggerType.IOTDA: frozenset({"password"}),
    # The APP-auth code callers send in X-Apig-AppCode (docs/api.md: encrypted at rest, shown as ******).
    TriggerType.APIG: frozenset({"app_code"}),
    TriggerType.DEDICATEDGATEWAY: frozenset({"app_code"}),
    TriggerType.APIC: frozenset({"app_code"}),
    # The S3 secret key of the trigger's endpoint; the webhook token is never stored (only its
    # hash) but named here so the one response that shows it is masked in CTS traces.
    TriggerType.OBS: frozenset({"secret_key", "webhook_token"}),
}

# Any secret name is masked whatever the type (event_data keeps unknown keys, so a password may
# sit under a type that does not document it), as is the password inside URI-valued fields.
ALL_SECRET_NAMES: frozenset[str] = frozenset().union(*SECRET_FIELDS.values()) | {"password"}
URI_FIELDS: frozenset[str] = frozenset({"connection_uri"})


def _mask_uri_password(uri: str) -> str:
    try:
        parts = urlsplit(uri)
        if parts.password is None:
            return uri
    except ValueError:
        return uri
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{hostinfo}"))


def _redact(value: Any, secrets: frozenset[str]) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in secrets and item not in (None, ""):
                out[key] = REDACTED
            elif key in URI_FIELDS and isinstance(item, str):
                out[key] = _mask_uri_password(item)
            else:
                out[key] = _redact(item, secrets)
        return out
    if isinstance(value, list):
        return [_redact(item, secrets) for item in value]
    return value


def redact_event_data(trigger_type: str | TriggerType, data: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` safe to return or log: secret values become ``"******"``.

    Empty or null secrets stay as they are (they reveal nothing and show "not set").
    """
    try:
        kind_secrets = SECRET_FIELDS[TriggerType(str(trigger_type).strip().upper())]
    except ValueError:
        kind_secrets = frozenset()
    result: dict[str, Any] = _redact(data, kind_secrets | ALL_SECRET_NAMES)
    return result


__all__ = [
    "CANNOT_DISABLE",
    "DISABLED_BY_DEFAULT",
    "EVENT_DATA_MODELS",
    "OBS_EVENTS",
    "REDACTED",
    "SECRET_FIELDS",
    "ApigEventData",
    "ApigFuncInfo",
    "CTSEventData",
    "DDSEventData",
    "DISEventData",
    "DMSEventData",
    "EventData",
    "EventGridEventData",
    "GaussMongoEventData",
    "IoTDAEventData",
    "KafkaEventData",
    "LTSEventData",
    "MongoEventData",
    "OBSEventData",
    "OpenSourceKafkaEventData",
    "RabbitMQEventData",
    "RocketMQEventData",
    "SMNEventData",
    "TimerEventData",
    "TriggerStatus",
    "TriggerType",
    "check_status",
    "initial_status",
    "parse_event_data",
    "parse_status",
    "parse_trigger_type",
    "redact_event_data",
]
