"""Max event age: an async event older than ``max_async_event_age_in_seconds`` is discarded.

Age counts from when the request was accepted (``enqueued_at``), across retries and
time spent waiting for a free instance, as FunctionGraph's "message max validity".
"""

from __future__ import annotations

from invoker.envelope import InvocationEnvelope


def age_s(envelope: InvocationEnvelope, now: float) -> float:
    return max(0.0, now - envelope.enqueued_at)


def expired(envelope: InvocationEnvelope, now: float, max_age_s: int) -> bool:
    return age_s(envelope, now) > max_age_s


def expires_before(envelope: InvocationEnvelope, when: float, max_age_s: int) -> bool:
    """True if the event would be too old at ``when`` (e.g. the time of a planned retry)."""
    return when - envelope.enqueued_at > max_age_s
