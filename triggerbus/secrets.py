"""Encryption at rest for secrets in configs (broker passwords, function credentials).

A Fernet key lives in ``<data_dir>/secret.key`` (mode 0600), or comes from
``TRIGGERBUS_SECRET_KEY``. Encrypted values are stored as ``enc:v1:<token>`` so a
reader can tell them apart from clear text, and the API only ever shows ``******``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

PREFIX = "enc:v1:"
MASK = "******"


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def load(cls, data_dir: Path) -> SecretBox:
        env = os.environ.get("TRIGGERBUS_SECRET_KEY")
        if env:
            return cls(env.encode())
        path = data_dir / "secret.key"
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
        return cls(path.read_bytes().strip())

    def encrypt(self, value: str) -> str:
        if value.startswith(PREFIX):
            return value
        return PREFIX + self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, value: str) -> str:
        if not value.startswith(PREFIX):
            return value
        try:
            return self._fernet.decrypt(value[len(PREFIX) :].encode()).decode()
        except InvalidToken as exc:
            raise ValueError("a stored secret cannot be decrypted with this key") from exc

    def encrypt_fields(self, data: dict[str, Any], fields: frozenset[str] | set[str]) -> dict[str, Any]:
        out = dict(data)
        for name in fields:
            value = out.get(name)
            if isinstance(value, str) and value and value != MASK:
                out[name] = self.encrypt(value)
        return out

    def decrypt_fields(self, data: dict[str, Any], fields: frozenset[str] | set[str]) -> dict[str, Any]:
        out = dict(data)
        for name in fields:
            value = out.get(name)
            if isinstance(value, str):
                out[name] = self.decrypt(value)
        return out


def mask_fields(data: dict[str, Any], fields: frozenset[str] | set[str]) -> dict[str, Any]:
    return {k: (MASK if k in fields and v not in (None, "") else v) for k, v in data.items()}
