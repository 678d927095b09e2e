"""MongoDB change-stream plumbing shared by the DDS and GAUSSMONGO triggers (``connectors/dds.py``).

Pure helpers, kept apart from the connector so they can be unit-tested without a server:

* where a trigger's database is (``connection_uri`` or the service's instance map) and how to
  keep its password out of URIs, logs and error messages;
* the persisted position of a trigger (resume token, its cluster time, how to reopen there);
* which server errors mean "the position is gone" (history lost) and what the trigger's
  ``on_history_lost`` policy does then;
* change documents -> :class:`schemas.events.dds.MongoChange` in canonical Extended JSON v2.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import bson
from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure

from schemas.errors import bad_request
from schemas.events.dds import MongoChange

REDACTED = "******"

# -- where the database is -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MongoTarget:
    """How to reach one trigger's collection. ``uri`` never carries a password."""

    uri: str
    db: str
    coll: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    source: str = "connection_uri"  # or "instance_id": which event_data field named the server

    @property
    def address(self) -> str:
        """The hosts, for messages and status (no credentials, no options)."""
        return hosts_of(self.uri)

    @property
    def namespace(self) -> str:
        return f"{self.db}.{self.coll}"

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.username:
            kwargs["username"] = self.username
        if self.password:
            kwargs["password"] = self.password
        return kwargs

    def scrub(self, text: str) -> str:
        """``text`` with this target's password (if any) replaced: errors must never leak it."""
        return scrub_secret(text, self.password)


def scrub_secret(text: str, secret: str | None) -> str:
    if secret and len(secret) >= 3:
        text = text.replace(secret, REDACTED)
    return text


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``uri`` without its ``user:password@`` part, plus the (URL-decoded) user and password."""
    parts = urlsplit(uri)
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    if not at:
        return uri, None, None
    user, colon, password = userinfo.partition(":")
    clean = urlunsplit(parts._replace(netloc=hostinfo))
    return clean, unquote(user) or None, unquote(password) if colon else None


def hosts_of(uri: str) -> str:
    netloc = urlsplit(uri).netloc
    return netloc.rpartition("@")[2] or uri


def resolve_target(event_data: Mapping[str, Any], instances: Mapping[str, str]) -> MongoTarget:
    """The server of a trigger: ``connection_uri`` if given, else ``instance_id`` in the instance map.

    Credentials: ``db_user``/``db_password`` win over a user or password inside the URI (create
    moves a URI password into ``db_password``, so stored URIs have none).
    """
    db, coll = str(event_data["db_name"]), str(event_data["collection_name"])
    raw = event_data.get("connection_uri")
    source = "connection_uri"
    if not raw:
        instance_id = str(event_data.get("instance_id") or "")
        raw = instances.get(instance_id)
        source = "instance_id"
        if not raw:
            known = ", ".join(sorted(instances)) or "none configured"
            raise bad_request(
                f"event_data.instance_id: unknown MongoDB instance {instance_id!r} and no connection_uri given "
                f"(instances this service knows, from TRIGGERBUS_MONGO_INSTANCES: {known})"
            )
        if not str(raw).startswith(("mongodb://", "mongodb+srv://")):
            raise bad_request(
                f"event_data.instance_id: TRIGGERBUS_MONGO_INSTANCES maps {instance_id!r} to a value that is not a "
                "mongodb:// URI; fix the service setting"
            )
    uri, uri_user, uri_password = split_credentials(str(raw))
    user = event_data.get("db_user") or uri_user
    password = event_data.get("db_password") or uri_password
    if password and not user:
        raise bad_request("event_data.db_user: is required when a db_password is given")
    return MongoTarget(uri=uri, db=db, coll=coll, username=user or None, password=password or None, source=source)


# -- the persisted position ------------------------------------------------------------------------


class OpenMode(StrEnum):
    RESUME_AFTER = "resume_after"  # the usual case: after a change (or a post-batch token)
    START_AFTER = "start_after"  # after an invalidate event (the collection was dropped/renamed)
    START_AT_TIME = "start_at_operation_time"  # no token: a cluster time (checkpoint API, policy)


@dataclass(slots=True)
class Position:
    """Where a trigger reads its change stream from. Persisted as its checkpoint (JSON).

    ``kind`` says where the token came from: ``start`` (the trigger's first activation),
    ``change`` (the last change of a finished batch), ``idle`` (a post-batch token while nothing
    changed), ``time`` (a cluster time set through the checkpoint API or a policy, no token).
    """

    token: dict[str, Any] | None
    cluster_time: Timestamp | None
    kind: str
    mode: OpenMode = OpenMode.RESUME_AFTER
    updated: float = field(default_factory=time.time)

    def open_kwargs(self) -> dict[str, Any]:
        """The ``watch()`` arguments that reopen the stream exactly here."""
        if self.token is None:
            if self.cluster_time is None:
                return {}
            return {"start_at_operation_time": self.cluster_time}
        if self.mode is OpenMode.START_AFTER:
            return {"start_after": self.token}
        return {"resume_after": self.token}

    def to_json(self) -> dict[str, Any]:
        return {
            "resume_token": None if self.token is None else json.loads(json_util.dumps(self.token)),
            "cluster_time": None if self.cluster_time is None else timestamp_json(self.cluster_time),
            "kind": self.kind,
            "mode": self.mode.value,
            "updated": self.updated,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Position:
        token = value.get("resume_token")
        clock = value.get("cluster_time")
        return cls(
            token=None if token is None else dict(json_util.loads(json.dumps(token))),
            cluster_time=None if clock is None else Timestamp(int(clock["t"]), int(clock["i"])),
            kind=str(value.get("kind", "change")),
            mode=OpenMode(value.get("mode", OpenMode.RESUME_AFTER.value)),
            updated=float(value.get("updated", 0.0)),
        )

    def same_place(self, other: Position | None) -> bool:
        return other is not None and self.token == other.token and self.cluster_time == other.cluster_time


def timestamp_json(ts: Timestamp) -> dict[str, Any]:
    return {"t": ts.time, "i": ts.inc, "iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts.time))}


def token_cluster_time(token: Mapping[str, Any] | None) -> Timestamp | None:
    """The cluster time inside a resume token, if it can be read; None otherwise.

    mongod tokens are KeyString-encoded hex whose first value is the cluster time (type byte
    ``0x82``, then the timestamp as a big-endian uint64: seconds, increment). SecantusDB tokens
    are hex-encoded BSON documents with the time under ``t``. Anything else is opaque.
    """
    if not token:
        return None
    data = token.get("_data")
    if not isinstance(data, str):
        return None
    try:
        raw = bytes.fromhex(data)
    except ValueError:
        return None
    if len(raw) >= 5 and int.from_bytes(raw[:4], "little") == len(raw):
        try:
            decoded = bson.decode(raw)
        except Exception:
            decoded = {}
        clock = decoded.get("t")
        if isinstance(clock, Timestamp):
            return clock
    if len(raw) >= 9 and raw[0] == 0x82:
        return Timestamp(int.from_bytes(raw[1:5], "big"), int.from_bytes(raw[5:9], "big"))
    return None


# -- history lost ----------------------------------------------------------------------------------

HISTORY_LOST = 286  # ChangeStreamHistoryLost: the token is older than the oldest oplog entry
INVALID_RESUME_TOKEN = 260  # InvalidResumeToken
CHANGE_STREAM_FATAL = 280  # ChangeStreamFatalError: "the resume token was not found"
FAILED_TO_PARSE = 9  # SecantusDB answers a token it cannot decode with FailedToParse
POSITION_LOST_CODES = frozenset({HISTORY_LOST, INVALID_RESUME_TOKEN, CHANGE_STREAM_FATAL})


def is_position_lost(exc: BaseException, *, resuming: bool) -> bool:
    """True if the server says the stream cannot continue from the given position.

    Retrying the same position can never succeed then: the trigger's ``on_history_lost``
    policy decides. ``resuming`` is False when the stream was opened without a token or time
    (then no such error can be about our position).
    """
    if not resuming or not isinstance(exc, OperationFailure):
        return False
    if exc.code in POSITION_LOST_CODES:
        return True
    return exc.code == FAILED_TO_PARSE and "resume token" in str(exc).lower()


class HistoryLostPolicy(StrEnum):
    FAIL = "fail"
    RESUME_FROM_TIME = "resume_from_time"
    RESUME_LATEST = "resume_latest"


DEFAULT_HISTORY_LOST_POLICY = HistoryLostPolicy.FAIL


@dataclass(frozen=True, slots=True)
class RecoveryStep:
    """One way to reopen a stream whose position was lost, tried in order."""

    how: str  # "time" (start_at_operation_time), "oldest" (oldest oplog entry), "latest"
    cluster_time: Timestamp | None = None


def recovery_plan(policy: HistoryLostPolicy, lost_time: Timestamp | None) -> list[RecoveryStep]:
    """What to try, in order, after the position was lost; empty = stop (``fail``).

    ``resume_from_time`` first reopens at the lost token's cluster time: a server that still
    has history from there (SecantusDB, a sharded cluster) delivers everything it has. mongod
    refuses a time older than its oplog (286 again), so the next step starts at the oldest
    entry still in the oplog (needs read access to ``local.oplog.rs``), and the last one at
    the current end, so the trigger always keeps running. ``resume_latest`` goes straight to
    the end.
    """
    if policy is HistoryLostPolicy.FAIL:
        return []
    if policy is HistoryLostPolicy.RESUME_LATEST:
        return [RecoveryStep("latest")]
    steps = [RecoveryStep("time", lost_time)] if lost_time is not None else []
    return [*steps, RecoveryStep("oldest"), RecoveryStep("latest")]


# -- change documents -> event records ---------------------------------------------------------------


def extended_json(value: Any) -> Any:
    """``value`` as canonical Extended JSON v2 (``{"$numberDouble": "52.0"}``, ``{"$oid": ...}``),
    the form of the FunctionGraph DDS template."""
    return json.loads(json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS))


def change_size(change: Mapping[str, Any]) -> int:
    """``size_bytes``: the BSON size of the change document as the server sent it."""
    raw = getattr(change, "raw", None)
    if isinstance(raw, bytes):
        return len(raw)
    return len(bson.encode(change))


def to_mongo_change(change: Mapping[str, Any], default_coll: str) -> MongoChange:
    """One change-stream document as the event builders want it (canonical Extended JSON)."""
    ns = dict(change.get("ns") or {})
    ns.setdefault("coll", default_coll)
    full = change.get("fullDocument")
    return MongoChange(
        event_name=str(change["operationType"]),
        token=extended_json(change["_id"]),
        full_document=None if full is None else extended_json(full),
        ns=extended_json(ns),
        size_bytes=change_size(change),
    )
