"""Event lag per trigger over time: an in-memory, bounded sampler of the connectors' ``lag``.

Every ``interval_s`` (15 s) it asks each trigger's connector for its status and keeps the
``lag`` report (``{"records", "seconds", "oldest_age_s"}``, values may be None) of the last
``keep`` samples per trigger. Nothing is persisted: a restart starts the charts empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 15.0
KEEP_SAMPLES = 240  # one hour at 15 s
MAX_TRIGGERS = 5000


@dataclass(frozen=True, slots=True)
class LagSample:
    ts: float
    records: float | None
    seconds: float | None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class LagSampler:
    def __init__(self, service: Any, interval_s: float = SAMPLE_INTERVAL_S, keep: int = KEEP_SAMPLES) -> None:
        self.service = service
        self.interval_s = interval_s
        self.keep = keep
        self.samples: dict[str, deque[LagSample]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="console-lag-sampler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.sample_once()
            except Exception:
                log.exception("sampling trigger lag failed")
            await asyncio.sleep(self.interval_s)

    async def sample_once(self, now: float | None = None) -> None:
        manager = self.service.triggers
        triggers = await self.service.store.list_triggers()
        now = time.time() if now is None else now
        present = set()
        for trigger in triggers[:MAX_TRIGGERS]:
            present.add(trigger.trigger_id)
            connector = manager.connectors.get(trigger.trigger_type)
            status = connector.state(trigger.trigger_id) if connector is not None else {}
            self.add(trigger.trigger_id, status.get("lag"), now)
        for gone in [t for t in self.samples if t not in present]:
            del self.samples[gone]

    def add(self, trigger_id: str, lag: Any, now: float) -> None:
        lag = lag if isinstance(lag, dict) else {}
        series = self.samples.setdefault(trigger_id, deque(maxlen=self.keep))
        series.append(LagSample(now, _number(lag.get("records")), _number(lag.get("seconds"))))

    def series(self, trigger_id: str) -> list[LagSample]:
        return list(self.samples.get(trigger_id, ()))


SAMPLER_KEY: web.AppKey[LagSampler] = web.AppKey("console_lag_sampler", LagSampler)
