"""Tells connectors when their events reached a terminal state.

A stream connector may commit a source position (Kafka offset, resume token ...)
only once every event up to it is finished: succeeded, delivered to a destination
or discarded by policy. The invoker reports each finished invocation here with the
stream item ids it covered; connectors listen by trigger id.

With several service processes, the invocation may finish in another process than
the one whose connector read the source records. A *relay* then broadcasts each
completion (a bus topic every process reads in full) and ``receive`` hands the
ones from other processes to the local listeners.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from schemas.records import AsyncStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Completion:
    request_id: str
    trigger_id: str
    item_ids: tuple[str, ...]
    status: AsyncStatus

    def to_json(self, origin: str) -> bytes:
        return json.dumps(
            {
                "request_id": self.request_id,
                "trigger_id": self.trigger_id,
                "item_ids": list(self.item_ids),
                "status": self.status.value,
                "origin": origin,
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> tuple[Completion, str]:
        doc = json.loads(data)
        completion = cls(doc["request_id"], doc["trigger_id"], tuple(doc["item_ids"]), AsyncStatus(doc["status"]))
        return completion, str(doc.get("origin", ""))


Listener = Callable[[Completion], None]
Relay = Callable[[Completion], Awaitable[None]]


class CompletionHub:
    def __init__(self, relay: Relay | None = None) -> None:
        self._listeners: dict[str, list[Listener]] = {}
        self.relay = relay

    def listen(self, trigger_id: str, listener: Listener) -> Callable[[], None]:
        self._listeners.setdefault(trigger_id, []).append(listener)

        def stop() -> None:
            listeners = self._listeners.get(trigger_id, [])
            if listener in listeners:
                listeners.remove(listener)
            if not listeners:
                self._listeners.pop(trigger_id, None)

        return stop

    async def done(self, completion: Completion) -> None:
        """A trigger's invocation finished here: tell local listeners, and relay it durably.

        Awaited before the invocation's bus message is acked: if the process dies first,
        the message comes back and the completion is announced again (listeners ignore
        what they already know), so no connector waits forever for a lost one.
        """
        self.receive(completion)
        if self.relay is not None:
            await self._relay(completion)

    async def _relay(self, completion: Completion) -> None:
        assert self.relay is not None
        for attempt in range(5):
            try:
                await self.relay(completion)
                return
            except Exception:
                if attempt == 4:
                    raise
                log.exception("relaying completion %s failed (attempt %d)", completion.request_id, attempt + 1)
                await asyncio.sleep(0.5 * 2**attempt)

    def receive(self, completion: Completion) -> None:
        """Deliver to this process's listeners only."""
        for listener in list(self._listeners.get(completion.trigger_id, ())):
            try:
                listener(completion)
            except Exception:
                log.exception("completion listener for trigger %s failed", completion.trigger_id)
