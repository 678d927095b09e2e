"""TIMER triggers: Rate, Cron and ``@every`` schedules that fire once, on time, and survive restarts.

Guarantees and policies (see docs/timer.md):

* **One fire per scheduled time, cluster-wide.** Only the holder of the
  ``timer-scheduler`` lease fires; and every fire is first *claimed* in the store
  under the primary key (trigger, scheduled time), so even two processes that
  both think they lead cannot fire the same instant twice. The request id is
  derived from (trigger, scheduled time), so the invoker also sees a replay as
  the same request.
* **Restarts do not lose due fires.** ``last_fire``/``next_fire`` are persisted.
  A fire more than ``max(5 s, lease TTL)`` past its time counts as *missed*
  (nobody was leading). On-time fires always fire; missed ones within
  ``catchup_window`` follow the *misfire policy*: ``fire_once`` (default: one fire,
  for the newest missed time), ``fire_all`` (each missed time, at most 100), or
  ``skip``. Misses older than the window are skipped. Every skipped fire is
  counted and logged. A fire that was claimed but never reached the bus (crash in
  between) is re-enqueued on takeover.
* **Disabling** forgets the schedule position: re-enabling fires from now on,
  it does not replay the disabled period.
* DST handling is the schedule engine's (:mod:`connectors.schedule`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from bus.aio import stop_tasks
from connectors.base import UNKNOWN_LAG, Connector, ConnectorContext, Lag, TriggerSpec
from connectors.schedule import Schedule, ScheduleError, format_fire_time, parse_schedule
from schemas.errors import bad_request
from schemas.events.timer import TimerEvent

log = logging.getLogger(__name__)

LEASE_NAME = "timer-scheduler"
MISFIRE_POLICIES = ("fire_once", "fire_all", "skip")
_FIRE_NAMESPACE = uuid.UUID("6f1c2f4e-6b1e-4d7b-9a51-2f0e6c2b1a77")
_MAX_FIRE_ALL = 100
_FIRE_CONCURRENCY = 64  # due timers fired at once (they share group commits)


def fire_request_id(trigger_id: str, scheduled: float) -> str:
    """Deterministic: the same (trigger, scheduled time) is always the same request."""
    return str(uuid.uuid5(_FIRE_NAMESPACE, f"{trigger_id}@{scheduled:.3f}"))


@dataclass(slots=True)
class _Timer:
    spec: TriggerSpec
    schedule: Schedule
    next_fire: datetime | None = None
    generation: int = 0
    fired: int = 0
    missed: int = 0
    last_fire: float | None = None
    last_lateness_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class TimerConnector(Connector):
    trigger_types: ClassVar[tuple[str, ...]] = ("TIMER",)

    def __init__(
        self,
        ctx: ConnectorContext,
        *,
        lease_ttl: float | None = None,
        misfire_policy: str | None = None,
        catchup_window: float | None = None,
    ) -> None:
        super().__init__(ctx)
        options = ctx.options
        lease_ttl = lease_ttl if lease_ttl is not None else float(options.get("timer_lease_ttl_s", 10.0))
        misfire_policy = misfire_policy or str(options.get("timer_misfire_policy", "fire_once"))
        if catchup_window is None:
            catchup_window = float(options.get("timer_catchup_window_s", 300.0))
        if misfire_policy not in MISFIRE_POLICIES:
            raise ValueError(f"misfire_policy must be one of {MISFIRE_POLICIES}, not {misfire_policy!r}")
        self.lease_ttl = lease_ttl
        self.misfire_policy = misfire_policy
        self.catchup_window = catchup_window
        self.misfire_threshold = max(5.0, lease_ttl)  # later than this, a fire counts as missed
        self._timers: dict[str, _Timer] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._leader = False
        self._lease_checked = 0.0
        self.fires = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="timer-scheduler")

    async def close(self) -> None:
        await stop_tasks(self._task)
        self._task = None
        if self._leader:
            with contextlib.suppress(Exception):
                await self.ctx.state.release_lease(LEASE_NAME, self.ctx.node_id)
            self._leader = False

    @property
    def is_leader(self) -> bool:
        return self._leader

    def _schedule_of(self, trigger: TriggerSpec) -> Schedule:
        data = trigger.event_data
        # Whole seconds: "3m" and "@every 10s" fire on second boundaries, as cron users expect.
        anchor = datetime.fromtimestamp(int(trigger.created), UTC)
        return parse_schedule(
            str(data.get("schedule_type", "")),
            str(data.get("schedule", "")),
            default_tz=self.ctx.default_tz,
            anchor=anchor,
        )

    async def validate(self, trigger: TriggerSpec, *, existing: list[TriggerSpec]) -> dict[str, Any]:
        try:
            self._schedule_of(trigger)
        except ScheduleError as exc:
            raise bad_request(f"event_data.schedule: {exc}") from None
        return {}

    async def activate(self, trigger: TriggerSpec) -> None:
        timer = _Timer(trigger, self._schedule_of(trigger))
        old = self._timers.get(trigger.trigger_id)
        if old is not None:
            timer.generation = old.generation + 1
        self._timers[trigger.trigger_id] = timer
        last_fire, next_fire = await self.ctx.state.get_timer_state(trigger.trigger_id)
        timer.last_fire = last_fire
        if next_fire is None:
            timer.next_fire = timer.schedule.next_after(datetime.now(UTC))
            await self.ctx.state.set_timer_next(trigger.trigger_id, timer.next_fire.timestamp())
        else:
            timer.next_fire = datetime.fromtimestamp(next_fire, timer.schedule.tz)
        self._push(timer)

    async def deactivate(self, trigger_id: str) -> None:
        timer = self._timers.pop(trigger_id, None)
        if timer is not None:
            timer.generation += 1  # invalidates its heap entries
        with contextlib.suppress(Exception):
            await self.ctx.state.set_timer_next(trigger_id, None)
        self._wakeup.set()

    def status(self, trigger_id: str) -> dict[str, Any]:
        timer = self._timers.get(trigger_id)
        if timer is None:
            return {}
        return {
            "next_fire_time": format_fire_time(timer.next_fire) if timer.next_fire else None,
            "last_fire_time": (
                format_fire_time(datetime.fromtimestamp(timer.last_fire, timer.schedule.tz))
                if timer.last_fire
                else None
            ),
            "fires": timer.fired,
            "missed": timer.missed,
            "last_lateness_ms": None if timer.last_lateness_s is None else round(timer.last_lateness_s * 1000, 1),
            "leader": self._leader,
        }

    async def lag(self, trigger_id: str) -> Lag:
        """Lateness: an overdue fire is one record behind by its delay, else the last fire's lateness.
        Unknown in a process that does not hold the scheduler lease (another one fires)."""
        timer = self._timers.get(trigger_id)
        if timer is None or not self._leader:
            return UNKNOWN_LAG
        overdue = 0.0 if timer.next_fire is None else time.time() - timer.next_fire.timestamp()
        if overdue > 0:
            return Lag(1, overdue, overdue)
        return Lag(0, timer.last_lateness_s or 0.0, 0.0)

    def _push(self, timer: _Timer) -> None:
        if timer.next_fire is None:
            return
        heapq.heappush(self._heap, (timer.next_fire.timestamp(), timer.generation, timer.spec.trigger_id))
        self._wakeup.set()

    # -- the scheduler loop --------------------------------------------------------------------

    async def _run(self) -> None:
        renew_every = self.lease_ttl / 3
        while True:
            try:
                await self._ensure_lease()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("timer lease check failed")
                self._leader = False
            if not self._leader:
                await self._sleep(renew_every)
                continue
            try:
                await self._fire_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("firing timers failed; retrying shortly")
                await asyncio.sleep(0.5)
                continue
            until_renew = self._lease_checked + renew_every - time.monotonic()
            until_next = self._heap[0][0] - time.time() if self._heap else renew_every
            await self._sleep(max(0.0, min(until_renew, until_next)))

    async def _sleep(self, seconds: float) -> None:
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wakeup.wait()

    async def _ensure_lease(self) -> None:
        renew_every = self.lease_ttl / 3
        if self._leader and time.monotonic() - self._lease_checked < renew_every:
            return
        was_leader = self._leader
        self._leader = await self.ctx.state.acquire_lease(LEASE_NAME, self.ctx.node_id, self.lease_ttl)
        self._lease_checked = time.monotonic()
        if self._leader and not was_leader:
            log.info("timer scheduler %s took the lease; catching up", self.ctx.node_id)
            await self._take_over()
        elif was_leader and not self._leader:
            log.warning("timer scheduler %s lost the lease", self.ctx.node_id)

    async def _take_over(self) -> None:
        """Reload persisted positions (another leader moved them) and resend unsent fires."""
        for timer in list(self._timers.values()):
            last_fire, next_fire = await self.ctx.state.get_timer_state(timer.spec.trigger_id)
            timer.last_fire = last_fire
            if next_fire is not None:
                timer.next_fire = datetime.fromtimestamp(next_fire, timer.schedule.tz)
                timer.generation += 1
                self._push(timer)
        since = time.time() - max(self.catchup_window, 3600)
        for trigger_id, scheduled, request_id in await self.ctx.state.unsent_timer_fires(since):
            lost = self._timers.get(trigger_id)
            if lost is not None:
                log.warning("re-enqueuing timer fire %s of %s lost in a crash", scheduled, trigger_id)
                await self._enqueue(lost, datetime.fromtimestamp(scheduled, lost.schedule.tz), request_id)

    async def _fire_due(self) -> None:
        """Fire every due timer, up to ``_FIRE_CONCURRENCY`` at once.

        Timers due together are fired concurrently so that their claims and enqueues share the
        store's and the bus's group commits: one at a time, 10,000 cron triggers spread over a
        minute fired up to 1.4 s late (bench/timer_triggers.py). A trigger fires once per batch.
        """
        now = time.time()
        while self._heap and self._heap[0][0] <= now and self._leader:
            batch: dict[str, _Timer] = {}
            while self._heap and self._heap[0][0] <= now and len(batch) < _FIRE_CONCURRENCY:
                _, generation, trigger_id = heapq.heappop(self._heap)
                timer = self._timers.get(trigger_id)
                if timer is None or timer.generation != generation or timer.next_fire is None:
                    continue
                batch.setdefault(trigger_id, timer)
            results = await asyncio.gather(*(self._fire_timer(t, now) for t in batch.values()), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            if time.monotonic() - self._lease_checked > self.lease_ttl / 3:
                return  # renew the lease before going on

    def _due_times(self, timer: _Timer, now: float) -> tuple[list[datetime], datetime, int]:
        """Scheduled times <= now within the catch-up window, the next future time, and
        how many fell before the window (counted up to a bound, then skipped over)."""
        assert timer.next_fire is not None
        schedule = timer.schedule
        window_start = now - self.catchup_window
        cursor = timer.next_fire
        skipped = 0
        while cursor.timestamp() < window_start and skipped < 10_000:
            skipped += 1
            cursor = schedule.next_after(cursor)
        if cursor.timestamp() < window_start:  # a long outage of a fast schedule: jump
            cursor = schedule.next_after(datetime.fromtimestamp(window_start, UTC))
        due: list[datetime] = []
        while cursor.timestamp() <= now and len(due) < 10_000:
            due.append(cursor)
            cursor = schedule.next_after(cursor)
        if cursor.timestamp() <= now:
            cursor = schedule.next_after(datetime.fromtimestamp(now, UTC))
        return due, cursor, skipped

    async def _fire_timer(self, timer: _Timer, now: float) -> None:
        due, nxt, skipped = self._due_times(timer, now)
        to_fire = self._apply_misfire_policy(timer, due, now, skipped)
        for index, scheduled in enumerate(to_fire):
            following = nxt if index == len(to_fire) - 1 else to_fire[index + 1]
            request_id = fire_request_id(timer.spec.trigger_id, scheduled.timestamp())
            claimed = await self.ctx.state.claim_timer_fire(
                timer.spec.trigger_id,
                scheduled.timestamp(),
                request_id,
                self.ctx.node_id,
                following.timestamp(),
            )
            if claimed:
                await self._enqueue(timer, scheduled, request_id)
                timer.last_lateness_s = now - scheduled.timestamp()
        if not to_fire:
            await self.ctx.state.set_timer_next(timer.spec.trigger_id, nxt.timestamp())
        timer.next_fire = nxt
        self._push(timer)

    def _apply_misfire_policy(self, timer: _Timer, due: list[datetime], now: float, skipped: int) -> list[datetime]:
        """Choose what to fire from ``due`` (scheduled times in the catch-up window, <= now).

        A fire is *late* when it is more than ``misfire_threshold`` past its time (nobody was
        leading then). On-time fires always fire; late ones follow the policy.
        """
        late = [d for d in due if now - d.timestamp() > self.misfire_threshold]
        on_time = [d for d in due if now - d.timestamp() <= self.misfire_threshold]
        if self.misfire_policy == "fire_all":
            chosen_late = late[-_MAX_FIRE_ALL:]
        elif self.misfire_policy == "fire_once":
            chosen_late = late[-1:]  # the newest missed time stands for all of them
        else:
            chosen_late = []
        lost = skipped + len(late) - len(chosen_late)
        if lost:
            timer.missed += lost
            log.warning(
                "timer %s: %d scheduled fire(s) missed while no scheduler ran (policy %s)",
                timer.spec.trigger_id,
                lost,
                self.misfire_policy,
            )
        return chosen_late + on_time

    async def _enqueue(self, timer: _Timer, scheduled: datetime, request_id: str) -> None:
        data = timer.spec.event_data
        event = TimerEvent.build(
            trigger_name=str(data.get("name", "")),
            fire_time_iso=format_fire_time(scheduled),
            user_event=str(data.get("user_event", "") or ""),
        )
        await self.ctx.invocations.enqueue(
            timer.spec.function_urn,
            event.dump_json(),
            trigger_id=timer.spec.trigger_id,
            trigger_type="TIMER",
            source={"scheduled_time": format_fire_time(scheduled)},
            request_id=request_id,
            enqueued_at=time.time(),
        )
        timer.fired += 1
        timer.last_fire = scheduled.timestamp()
        self.fires += 1
