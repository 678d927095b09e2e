"""FunctionGraph error bodies and the error catalogue Triggerbus answers with.

Every 4xx/5xx body is ``{"error_code": "FSS.xxxx", "error_msg": "..."}`` as the
FunctionGraph API documents. Code raises :class:`FSSError`; the HTTP layer turns
it into the body and status. Messages must name the offending field and value.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from schemas.base import FGModel


class ErrorBody(FGModel):
    error_code: str
    error_msg: str


class FSSError(Exception):
    """An error with a FunctionGraph error code and HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, str]:
        return ErrorBody(error_code=self.code, error_msg=self.message).dump()

    def __repr__(self) -> str:
        return f"FSSError({self.status}, {self.code!r}, {self.message!r})"


def bad_request(message: str) -> FSSError:
    return FSSError(400, "FSS.0400", message)


def unauthorized(message: str = "invalid token") -> FSSError:
    return FSSError(401, "FSS.0401", message)


def forbidden(message: str) -> FSSError:
    return FSSError(403, "FSS.0403", message)


def not_found(message: str) -> FSSError:
    return FSSError(404, "FSS.0404", message)


def method_not_allowed(message: str) -> FSSError:
    return FSSError(405, "FSS.0405", message)


def conflict(message: str) -> FSSError:
    return FSSError(409, "FSS.0409", message)


def too_large(message: str) -> FSSError:
    return FSSError(413, "FSS.0413", message)


def unsupported_media(message: str) -> FSSError:
    return FSSError(415, "FSS.0415", message)


def throttled(
    message: str = "Your request has been controlled by overload sdk, please retry later",
) -> FSSError:
    return FSSError(429, "FSS.0429", message)


def internal(message: str = "internal error") -> FSSError:
    return FSSError(500, "FSS.0500", message)


def unavailable(message: str) -> FSSError:
    return FSSError(503, "FSS.0503", message)


def _loc(loc: tuple[int | str, ...], prefix: str) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "body"


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One precise sentence per problem: ``event_data.batch_size: must be <= 1000 (got 5000)``."""
    messages = []
    for err in exc.errors(include_url=False):
        where = _loc(tuple(err.get("loc", ())), prefix)
        msg = str(err.get("msg", "invalid value"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        got = err.get("input")
        if err.get("type") == "missing":
            messages.append(f"{where}: is required")
        elif isinstance(got, str | int | float | bool) and not isinstance(got, dict):
            shown = repr(got) if len(repr(got)) <= 80 else repr(got)[:77] + "..."
            messages.append(f"{where}: {msg} (got {shown})")
        else:
            messages.append(f"{where}: {msg}")
    return "; ".join(messages)


def validation_failed(exc: ValidationError, prefix: str = "") -> FSSError:
    return bad_request(describe_validation_error(exc, prefix))


def error_body(code: str, message: str) -> dict[str, Any]:
    return ErrorBody(error_code=code, error_msg=message).dump()
