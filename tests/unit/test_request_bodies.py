"""Request bodies: JSON that parses but would break a function's runtime gets a clear 400."""

from __future__ import annotations

import pytest

from schemas.errors import FSSError
from triggerbus.api.common import MAX_JSON_DEPTH, parse_json


def test_request_bodies_nested_past_the_limit_get_a_clear_400() -> None:
    def nested(depth: int) -> bytes:
        return b'{"a":[' * depth + b"0" + b"]}" * depth

    assert parse_json(nested(MAX_JSON_DEPTH // 2))  # two levels per step: exactly at the limit
    with pytest.raises(FSSError) as caught:
        parse_json(nested(MAX_JSON_DEPTH // 2 + 1))
    assert caught.value.status == 400 and f"deeper than {MAX_JSON_DEPTH} levels" in caught.value.message
    assert parse_json(b'"' + b"[" * 1000 + b'"') == "[" * 1000  # brackets inside a string are not nesting
