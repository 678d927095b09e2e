"""OBS events (contract §1.3).

Two shapes reach functions:

* :class:`OBSEvent`: the classic OBS trigger, an S3-compatible notification
  ``{"Records": [{"eventVersion": "2.0", "eventSource": "aws:s3", ..., "s3": {...}}]}``;
* :class:`OBSCloudEvent`: OBS through EventGrid (source ``HC.OBS.DWR``), a CloudEvents envelope
  whose ``data`` is a *single* OBS v3.0 record with an ``obs`` object instead of ``s3``.

Huawei's own EG example handler reads either ``record["s3"]`` or ``record["obs"]``, so both models
accept both record shapes on input and convert to their own output shape.

Object keys are URL-encoded the way OBS does it: ``urllib.parse.quote_plus`` with nothing safe, so
a space becomes ``+`` and ``/`` becomes ``%2F`` (a real capture shows
``trace-cloud-source%2Fcts-trace-map-…png``); handlers decode with ``unquote_plus``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

from pydantic import Field, model_validator

from schemas.base import FGModel
from schemas.events.eventgrid import CloudEvent


def _absent(value: object) -> bool:
    return value is None


def encode_object_key(key: str) -> str:
    """OBS/S3 notification key encoding (``quote_plus``, ``/`` encoded too)."""
    return quote_plus(key, safe="")


def obs_event_time(moment: datetime) -> str:
    """``2018-01-09T07:50:50.028Z``: UTC, millisecond precision."""
    if moment.tzinfo is None:
        raise ValueError("event time must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# ---------------------------------------------------------------- classic (S3-compatible) shape


class OBSUserIdentity(FGModel):
    principal_id: str = Field("", alias="principalId")


class OBSRequestParameters(FGModel):
    source_ip_address: str = Field("", alias="sourceIPAddress")


class OBSResponseElements(FGModel):
    request_id: str = Field("", alias="x-amz-request-id")
    id_2: str = Field("", alias="x-amz-id-2")


class OBSOwnerIdentity(FGModel):
    # Capital ``P`` here (``principalId`` in userIdentity): both spellings are what OBS sends.
    principal_id: str = Field("", alias="PrincipalId")


class OBSBucket(FGModel):
    name: str
    owner_identity: OBSOwnerIdentity = Field(default_factory=OBSOwnerIdentity, alias="ownerIdentity")
    arn: str = ""


class OBSObject(FGModel):
    key: str
    # Delete events carry neither eTag nor size; they are emitted only when known.
    e_tag: str | None = Field(None, alias="eTag", exclude_if=_absent)
    size: int | None = Field(None, exclude_if=_absent)
    # ``"null"`` (a string) on unversioned buckets in real events; absent in the console template.
    version_id: str | None = Field(None, alias="versionId", exclude_if=_absent)
    sequencer: str = ""


class OBSS3(FGModel):
    s3_schema_version: str = Field("1.0", alias="s3SchemaVersion")
    configuration_id: str = Field("", alias="configurationId")
    bucket: OBSBucket
    object_: OBSObject = Field(alias="object")


class OBSRecord(FGModel):
    event_version: str = Field("2.0", alias="eventVersion")
    event_source: str = Field("aws:s3", alias="eventSource")
    aws_region: str = Field("", alias="awsRegion")
    event_time: str = Field(alias="eventTime")
    event_name: str = Field(alias="eventName")
    user_identity: OBSUserIdentity = Field(default_factory=OBSUserIdentity, alias="userIdentity")
    request_parameters: OBSRequestParameters = Field(default_factory=OBSRequestParameters, alias="requestParameters")
    response_elements: OBSResponseElements = Field(default_factory=OBSResponseElements, alias="responseElements")
    s3: OBSS3

    @model_validator(mode="before")
    @classmethod
    def _accept_obs_shape(cls, data: Any) -> Any:
        if isinstance(data, dict) and "s3" not in data and isinstance(data.get("obs"), dict):
            return _obs_record_to_s3(data)
        return data


class OBSEvent(FGModel):
    """The classic OBS trigger event: ``{"Records": [OBSRecord, ...]}``."""

    records: list[OBSRecord] = Field(alias="Records")

    @classmethod
    def build(
        cls,
        *,
        region: str,
        bucket: str,
        key: str,
        event_name: str,
        event_time: datetime,
        size: int | None = None,
        etag: str | None = None,
        version_id: str | None = "null",
        sequencer: str | None = None,
        configuration_id: str = "",
        principal_id: str = "",
        owner_id: str = "",
        source_ip: str = "",
        request_id: str = "",
        id_2: str = "",
    ) -> OBSEvent:
        """One-record event for ``key`` (raw, encoded here) in ``bucket``.

        ``event_name`` may be given as ``s3:ObjectCreated:Put`` (trigger-config form) or
        ``ObjectCreated:Put`` (event form); the event carries the latter. ``sequencer`` defaults to
        the event time in milliseconds as 32 upper-case hex digits, which orders events per key.
        """
        name = event_name.removeprefix("s3:")
        return cls(
            records=[
                OBSRecord(
                    aws_region=region,
                    event_time=obs_event_time(event_time),
                    event_name=name,
                    user_identity=OBSUserIdentity(principal_id=principal_id),
                    request_parameters=OBSRequestParameters(source_ip_address=source_ip),
                    response_elements=OBSResponseElements(request_id=request_id, id_2=id_2),
                    s3=OBSS3(
                        configuration_id=configuration_id,
                        bucket=OBSBucket(
                            name=bucket,
                            owner_identity=OBSOwnerIdentity(principal_id=owner_id),
                            arn=f"arn:aws:s3:::{bucket}",
                        ),
                        object_=OBSObject(
                            key=encode_object_key(key),
                            e_tag=etag,
                            size=size,
                            version_id=version_id,
                            sequencer=sequencer or f"{int(event_time.timestamp() * 1000):032X}",
                        ),
                    ),
                )
            ]
        )


# ---------------------------------------------------------------- EventGrid (OBS v3.0) shape


class OBSv3Identity(FGModel):
    id: str = Field("", alias="ID")


class OBSv3Bucket(FGModel):
    bucket: str = ""
    name: str
    arn: str = ""
    owner_identity: OBSv3Identity = Field(default_factory=OBSv3Identity, alias="ownerIdentity")


class OBSv3Object(FGModel):
    version_id: str | None = Field(None, alias="versionId", exclude_if=_absent)
    oldpsxpth: str | None = Field(None, exclude_if=_absent)
    size: int | None = Field(None, exclude_if=_absent)
    e_tag: str | None = Field(None, alias="eTag", exclude_if=_absent)
    key: str
    sequencer: str = ""


class OBSv3Info(FGModel):
    bucket: OBSv3Bucket
    version: str = Field("1.0", alias="Version")
    configuration_id: str = Field("", alias="configurationId")
    object_: OBSv3Object = Field(alias="object")


class OBSv3ResponseElements(FGModel):
    obs_id_2: str = Field("", alias="x-obs-id-2")
    obs_request_id: str = Field("", alias="x-obs-request-id")
    amz_request_id: str = Field("", alias="x-amz-request-id")
    amz_id_2: str = Field("", alias="x-amz-id-2")


class OBSv3Record(FGModel):
    """``event.data`` of an OBS EventGrid event (one record, not a ``Records`` array)."""

    obs: OBSv3Info
    event_version: str = Field("3.0", alias="eventVersion")
    response_elements: OBSv3ResponseElements = Field(default_factory=OBSv3ResponseElements, alias="responseElements")
    event_source: str = Field("OBS", alias="eventSource")
    event_time: str = Field(alias="eventTime")
    request_parameters: OBSRequestParameters = Field(default_factory=OBSRequestParameters, alias="requestParameters")
    event_name: str = Field(alias="eventName")
    event_region: str = Field("", alias="eventRegion")
    user_identity: OBSv3Identity = Field(default_factory=OBSv3Identity, alias="userIdentity")

    @model_validator(mode="before")
    @classmethod
    def _accept_s3_shape(cls, data: Any) -> Any:
        if isinstance(data, dict) and "obs" not in data and isinstance(data.get("s3"), dict):
            return _s3_record_to_obs(data)
        return data


class OBSCloudEvent(CloudEvent):
    """OBS object event delivered through an EventGrid trigger (``source`` ``HC.OBS.DWR``)."""

    data: OBSv3Record


# ---------------------------------------------------------------- shape conversion (input leniency)


def _obs_record_to_s3(rec: dict[str, Any]) -> dict[str, Any]:
    obs = rec["obs"]
    bucket = obs.get("bucket") or {}
    obj = obs.get("object") or {}
    resp = rec.get("responseElements") or {}
    return {
        "eventVersion": "2.0",
        "eventSource": "aws:s3",
        "awsRegion": rec.get("eventRegion", rec.get("awsRegion", "")),
        "eventTime": rec.get("eventTime"),
        "eventName": rec.get("eventName"),
        "userIdentity": {"principalId": (rec.get("userIdentity") or {}).get("ID", "")},
        "requestParameters": rec.get("requestParameters") or {},
        "responseElements": {
            "x-amz-request-id": resp.get("x-amz-request-id") or resp.get("x-obs-request-id", ""),
            "x-amz-id-2": resp.get("x-amz-id-2") or resp.get("x-obs-id-2", ""),
        },
        "s3": {
            "s3SchemaVersion": obs.get("Version", "1.0"),
            "configurationId": obs.get("configurationId", ""),
            "bucket": {
                "name": bucket.get("name") or bucket.get("bucket"),
                "ownerIdentity": {"PrincipalId": (bucket.get("ownerIdentity") or {}).get("ID", "")},
                "arn": bucket.get("arn", ""),
            },
            "object": {k: obj[k] for k in ("key", "eTag", "size", "versionId", "sequencer") if k in obj},
        },
    }


def _s3_record_to_obs(rec: dict[str, Any]) -> dict[str, Any]:
    s3 = rec["s3"]
    bucket = s3.get("bucket") or {}
    obj = s3.get("object") or {}
    resp = rec.get("responseElements") or {}
    return {
        "obs": {
            "bucket": {
                "bucket": bucket.get("name"),
                "name": bucket.get("name"),
                "arn": bucket.get("arn", ""),
                "ownerIdentity": {"ID": (bucket.get("ownerIdentity") or {}).get("PrincipalId", "")},
            },
            "Version": s3.get("s3SchemaVersion", "1.0"),
            "configurationId": s3.get("configurationId", ""),
            "object": obj,
        },
        "eventVersion": "3.0",
        "responseElements": {
            "x-obs-id-2": resp.get("x-amz-id-2", ""),
            "x-obs-request-id": resp.get("x-amz-request-id", ""),
            "x-amz-request-id": resp.get("x-amz-request-id", ""),
            "x-amz-id-2": resp.get("x-amz-id-2", ""),
        },
        "eventSource": "OBS",
        "eventTime": rec.get("eventTime"),
        "requestParameters": rec.get("requestParameters") or {},
        "eventName": rec.get("eventName"),
        "eventRegion": rec.get("awsRegion", ""),
        "userIdentity": {"ID": (rec.get("userIdentity") or {}).get("principalId", "")},
    }
