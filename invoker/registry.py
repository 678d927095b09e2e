"""How the invoker finds a function: its runtime spec plus its async policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from invoker.runtime.base import FunctionSpec
from schemas.async_config import AsyncInvokeConfig


@dataclass(frozen=True, slots=True)
class ResolvedFunction:
    spec: FunctionSpec
    async_config: AsyncInvokeConfig


class FunctionDirectory(Protocol):
    async def resolve(self, urn: str) -> ResolvedFunction | None:
        """The function a (qualified or unqualified) URN names, or None if it does not exist."""
        ...
