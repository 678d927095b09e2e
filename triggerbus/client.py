"""A small blocking REST client for the CLI (standard library only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Client:
    def __init__(self, endpoint: str, token: str, project: str, timeout: float = 330.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.token = token
        self.project = project
        self.timeout = timeout
        self._region: str | None = None

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        raw: bytes | None = None,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        url = self.endpoint + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("X-Auth-Token", self.token)
        req.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return Response(resp.status, dict(resp.headers), resp.read())
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                doc = json.loads(payload)
                raise ApiError(exc.code, doc.get("error_code", ""), doc.get("error_msg", payload.decode())) from None
            except (ValueError, AttributeError):
                raise ApiError(exc.code, "", payload.decode(errors="replace")) from None
        except urllib.error.URLError as exc:
            raise ApiError(0, "CONNECT", f"cannot reach {self.endpoint}: {exc.reason}") from None

    @property
    def region(self) -> str:
        if self._region is None:
            self._region = str(self.request("GET", "/health").json().get("region", "local"))
        return self._region

    def urn(self, name_or_urn: str, package: str = "default") -> str:
        if name_or_urn.startswith("urn:"):
            return name_or_urn
        return f"urn:fss:{self.region}:{self.project}:function:{package}:{name_or_urn}:latest"

    def fgs(self, suffix: str) -> str:
        return f"/v2/{self.project}/fgs{suffix}"
