"""Tells connectors when their events reached a terminal state.

A stream connector may commit a source position (Kafka offset, resume token ...)
only once every event up to it is finished: succeeded, delivered to a destination
or discarded by policy. The invoker reports each finished invocation here with the
stream item ids it covered; connectors listen by trigger id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from schemas.records import AsyncStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Completion:
    request_id: str
    trigger_id: str
    item_ids: tuple[str, ...]
    status: AsyncStatus


Listener = Callable[[Completion], None]


class CompletionHub:
    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}

    def listen(self, trigger_id: str, listener: Listener) -> Callable[[], None]:
        self._listeners.setdefault(trigger_id, []).append(listener)

        def stop() -> None:
            listeners = self._listeners.get(trigger_id, [])
            if listener in listeners:
                listeners.remove(listener)
            if not listeners:
                self._listeners.pop(trigger_id, None)

        return stop

    def done(self, completion: Completion) -> None:
        for listener in list(self._listeners.get(completion.trigger_id, ())):
            try:
                listener(completion)
            except Exception:
                log.exception("completion listener for trigger %s failed", completion.trigger_id)
