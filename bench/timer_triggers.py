"""Timer trigger benchmark: N cron TIMER triggers in one service process, against a bare asyncio loop.

Run ``python -m bench.timer_triggers --help``. Nothing here asserts a speed: it measures how late
Triggerbus fires N cron triggers, and, in the same run on the same machine, how late a bare asyncio
loop wakes up for the same fire times (the scheduling floor of this machine), and prints the
ratios. It also measures the service's memory as the triggers grow (10, 100, 1000, ... N).

What runs: ``python -m triggerbus.cli serve`` (embedded SQLite bus and store, fresh data dir,
``TRIGGERBUS_TIMEZONE=UTC``) as a subprocess, with a Python function whose handler returns
``None``. The bench:

1. warms the workers up with a few async invocations, then reads the service's RSS (``VmRSS``
   of the service process; the worker processes are not counted: they do not grow with triggers);
2. creates N TIMER triggers through the API (``POST .../triggers``, ``--concurrency`` at a time),
   in steps (10, 100, 1000, ..., N), reading the RSS after each step: memory per trigger is
   *RSS delta / triggers*. Every trigger has a daily cron schedule ``"s m h * * *"`` chosen so
   that trigger ``i`` fires once, at ``T0 + (i mod --spread)`` s, ``T0`` being ``--lead-s`` after
   the first create: ``--spread 60`` (default) fires N/60 triggers per second for a minute,
   ``--spread 1`` fires all N in the same second (the thundering herd);
3. waits until every fire became a SUCCESS record, then reads the service's own SQLite file
   (read-only): per fire, *fire lateness* = the record's ``created`` (the scheduler claimed the
   instant durably and began the enqueue) minus the scheduled time, and *start lateness* = the
   attempt's ``start_time`` minus the scheduled time (the function began to run).

Why this baseline: **a bare asyncio loop** in a subprocess (``--raw-timers``) that starts one
task per trigger, each sleeping until the same offsets' fire time (relative to a ``T0`` of its
own, 2 s after it got them) and recording ``time.time() - fire time`` when it wakes. It does
nothing else: no store, no bus, no claim. It is the least any asyncio scheduler in one Python
process can be late on this machine, with the same number of timers due in the same seconds;
its RSS delta / N is the memory of a bare sleeping task per timer. It runs after the service's
fires (not concurrently, so the two do not share the CPUs).

CPU seconds of the service (and its workers) during the fire window come from ``/proc``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from bench._common import (
    URN,
    Dist,
    add_output_args,
    add_service_args,
    bench_main,
    bench_parser,
    bench_tmp,
    cpu_mark,
    cpu_split_since,
    fs_type,
    helper_main,
    load_average,
    machine_basics,
    num,
    poll_until,
    print_heading,
    print_section,
    ratio,
    run_results,
    step,
    step_done,
)
from bench._triggers import RawProcess, TriggerService, commands, running_service, say

TRIGGER_TYPE = "TIMER"
WARMUP_INVOCATIONS = 16


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (``VmRSS``); 0 if unknown."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cron_at(ts: float) -> str:
    """A daily cron schedule (FunctionGraph's seconds-first format, UTC) that fires at ``ts``'s time of day."""
    t = datetime.fromtimestamp(ts, UTC)
    return f"{t.second} {t.minute} {t.hour} * * *"


def steps_up_to(n: int) -> list[int]:
    """10, 100, 1000, ... below ``n``, then ``n``."""
    out: list[int] = []
    k = 10
    while k < n:
        out.append(k)
        k *= 10
    return [*out, n]


# -- the bare asyncio baseline (a subprocess: python -m bench.timer_triggers --raw-timers) ----------------


async def raw_timers_main() -> None:
    """Report READY; ``{"op": "fire", "offsets": [...]}`` starts one sleeping task per offset (seconds after a
    T0 2 s from now) and answers with the percentiles of their wake-up lateness (ms) and the RSS before and after."""
    say({"ready": True})
    async for command in commands():
        if command["op"] != "fire":
            return
        offsets = [float(x) for x in command["offsets"]]
        rss_before = rss_kb(os.getpid())
        t0 = math.ceil(time.time()) + 2.0
        lateness: list[float] = []

        tasks = [asyncio.create_task(sleep_until(t0 + off, lateness)) for off in offsets]
        await asyncio.sleep(0)  # every task started and sleeping
        rss_after = rss_kb(os.getpid())
        await asyncio.gather(*tasks)
        say({"lateness_ms": asdict(Dist.of(lateness)), "rss_before_kb": rss_before, "rss_after_kb": rss_after})


async def sleep_until(at: float, lateness: list[float]) -> None:
    """Sleep until epoch time ``at``, then note how late this woke up (ms)."""
    await asyncio.sleep(at - time.time())
    lateness.append((time.time() - at) * 1000)


# -- Triggerbus -------------------------------------------------------------------------------------------


class TimerService(TriggerService):
    """HTTP access to the service for TIMER triggers."""

    trigger_type: ClassVar[str] = TRIGGER_TYPE

    async def create_timer(self, index: int, fire_at: float) -> str:
        event_data = {"name": f"bench_{index}", "schedule_type": "Cron", "schedule": cron_at(fire_at)}
        return await self.add_trigger(event_data)

    async def warm_up(self, n: int) -> None:
        """``n`` async invocations, waited for: the worker processes are started and warm."""
        for _ in range(n):
            await self.call("POST", f"/functions/{URN}/invocations-async", {"warm": True})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            body = await self.call(
                "GET", f"/functions/{URN}/async-invocations", params={"status": "SUCCESS", "limit": "1"}
            )
            if int(body["count"]) >= n:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("the warm-up invocations did not complete; see the service log")


@dataclass
class MemoryStep:
    triggers: int
    rss_kb: int
    delta_kb: int  # since no triggers
    per_trigger_kb: float  # delta / triggers
    step_per_trigger_kb: float  # (this RSS - the previous step's) / triggers added
    create_rate: float  # triggers created per second in this step


@dataclass
class Fires:
    """What the service's own SQLite file says about the fires of the run."""

    fired: int
    succeeded: int
    fire_lateness_ms: Dist  # record created (claimed, enqueue begun) - scheduled time
    start_lateness_ms: Dist  # attempt start - scheduled time
    late_5s: int  # fires more than 5 s late: past the misfire threshold (fired under fire_once, dropped under skip)
    last_fire_after_t0_s: float  # the last record's created - T0


@dataclass
class TimerResult:
    triggers: int
    spread_s: int
    t0: float
    lead_s: float
    created_late: int  # triggers whose create answered after their fire time (they fire tomorrow)
    memory: list[MemoryStep] = field(default_factory=list)
    fires: Fires | None = None
    server_cpu_s: float | None = None  # during the fire window (T0 - 1 s -> all SUCCESS)
    worker_cpu_s: float | None = None
    rss_after_fires_kb: int = 0
    raw_lateness_ms: Dist | None = None
    raw_per_timer_kb: float = math.nan


def read_fires(db: Path, t0: float) -> Fires:
    """Lateness of every TIMER fire, from the service's SQLite file (read-only; the service keeps running)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT f.scheduled, r.created, r.start_time, r.status FROM timer_fires f "
            "JOIN records r ON r.request_id = f.request_id"
        ).fetchall()
    finally:
        conn.close()
    fire = [(created - scheduled) * 1000 for scheduled, created, _, _ in rows]
    start = [(started - scheduled) * 1000 for scheduled, _, started, _ in rows if started is not None]
    return Fires(
        fired=len(rows),
        succeeded=sum(1 for row in rows if row[3] == "SUCCESS"),
        fire_lateness_ms=Dist.of(fire),
        start_lateness_ms=Dist.of(start),
        late_5s=sum(1 for x in fire if x > 5000),
        last_fire_after_t0_s=max((created for _, created, _, _ in rows), default=t0) - t0,
    )


def count_success(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(
            conn.execute(
                "SELECT count(*) FROM records WHERE trigger_type = ? AND status = 'SUCCESS'", (TRIGGER_TYPE,)
            ).fetchone()[0]
        )
    finally:
        conn.close()


async def create_all(
    svc: TimerService, args: argparse.Namespace, t0: float, result: TimerResult, rss0: int
) -> list[float]:
    """Create the triggers in steps, the RSS after each; returns each trigger's fire time."""
    fire_times = [t0 + (i % args.spread) for i in range(args.triggers)]
    gate = asyncio.Semaphore(args.concurrency)
    created = 0
    previous = rss0

    async def one(i: int) -> None:
        async with gate:
            await svc.create_timer(i, fire_times[i])
        if time.time() >= fire_times[i]:
            result.created_late += 1

    for target in steps_up_to(args.triggers):
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(created, target)))
        rate = (target - created) / (time.perf_counter() - started)
        await asyncio.sleep(args.settle_s)
        rss = rss_kb(svc.pid)
        result.memory.append(
            MemoryStep(target, rss, rss - rss0, (rss - rss0) / target, (rss - previous) / (target - created), rate)
        )
        step(f"{target:,} triggers ({rate:,.0f} created/s): RSS {rss / 1024:,.1f} MiB")
        created, previous = target, rss
    return fire_times


async def run_service(args: argparse.Namespace, tmp: Path, result: TimerResult) -> None:
    env = {"TRIGGERBUS_TIMEZONE": "UTC", "TRIGGERBUS_MAX_WORKERS": str(args.workers)}
    async with running_service(TimerService, tmp, **env) as svc:
        step(f"warm-up: {WARMUP_INVOCATIONS} async invocations")
        await svc.warm_up(WARMUP_INVOCATIONS)
        await asyncio.sleep(args.settle_s)
        rss0 = rss_kb(svc.pid)
        result.memory.append(MemoryStep(0, rss0, 0, math.nan, math.nan, math.nan))
        result.t0 = math.ceil(time.time() + result.lead_s)
        step(f"creating {args.triggers:,} triggers; the first fires at {datetime.fromtimestamp(result.t0, UTC)}")
        await create_all(svc, args, result.t0, result, rss0)
        if result.created_late:
            print(f"!! {result.created_late} triggers were created after their fire time: raise --lead-s")
        await asyncio.sleep(max(0.0, result.t0 - 1 - time.time()))
        cpu = cpu_mark(svc.pid)
        step("firing")
        db = tmp / "triggerbus-data" / "triggerbus.db"
        expected = args.triggers - result.created_late

        async def probe() -> tuple[bool, int]:
            done = count_success(db)
            return done >= expected and time.time() > result.t0 + args.spread, done

        await asyncio.sleep(args.spread)
        await poll_until(probe, 0.2)
        result.server_cpu_s, result.worker_cpu_s = cpu_split_since(cpu, svc.pid)
        result.rss_after_fires_kb = rss_kb(svc.pid)
        result.fires = read_fires(db, result.t0)
        if result.fires.succeeded < expected:
            print(f"!! only {result.fires.succeeded} of {expected} fires succeeded within the timeout")


async def run_raw(args: argparse.Namespace, tmp: Path, result: TimerResult) -> None:
    offsets = [float(i % args.spread) for i in range(args.triggers)]
    async with RawProcess.running(
        ["bench.timer_triggers", "--raw-timers"], tmp / "raw.log", "bare asyncio loop"
    ) as raw:
        await raw.send({"op": "fire", "offsets": offsets})
        answer = await raw.answer(args.spread + 120)
    result.raw_lateness_ms = Dist(**answer["lateness_ms"])
    result.raw_per_timer_kb = (answer["rss_after_kb"] - answer["rss_before_kb"]) / args.triggers


# -- report ---------------------------------------------------------------------------------------------


def report(r: TimerResult) -> dict[str, list[list[str]]]:
    memory = [
        [
            f"{m.triggers:,}",
            num(m.rss_kb / 1024, 1),
            num(m.delta_kb / 1024, 1),
            num(m.per_trigger_kb, 2),
            num(m.step_per_trigger_kb, 2),
            num(m.create_rate),
        ]
        for m in r.memory
    ]
    print_section(
        "Memory of the service process as TIMER triggers grow (before any fire)",
        ["triggers", "RSS MiB", "delta MiB", "KiB per trigger", "KiB per trigger, this step", "created/s"],
        memory,
    )
    lateness: list[list[str]] = []
    raw = r.raw_lateness_ms
    f = r.fires
    if f is not None:
        for name, d in (
            ("Triggerbus fire (claimed, enqueue begun)", f.fire_lateness_ms),
            ("Triggerbus function start", f.start_lateness_ms),
        ):
            lateness.append(
                [
                    name,
                    f"{d.n:,}",
                    num(d.p50, 1),
                    num(d.p99, 1),
                    num(d.max, 1),
                    ratio(d.p50, raw.p50 if raw else None),
                    ratio(d.p99, raw.p99 if raw else None),
                    ratio(d.max, raw.max if raw else None),
                ]
            )
    if raw is not None:
        lateness.append(
            [
                "bare asyncio loop (baseline)",
                f"{raw.n:,}",
                num(raw.p50, 1),
                num(raw.p99, 1),
                num(raw.max, 1),
                "1x",
                "1x",
                "1x",
            ]
        )
    print_section(
        f"Fire lateness, {r.triggers:,} cron triggers due over {r.spread_s} s, ms (ratio = Triggerbus / bare loop)",
        ["what", "fires", "p50 ms", "p99 ms", "max ms", "p50 ratio", "p99 ratio", "max ratio"],
        lateness,
    )
    last = r.memory[-1]
    summary = [
        [
            "memory per trigger (RSS delta / triggers)",
            num(last.per_trigger_kb, 2) + " KiB",
            num(r.raw_per_timer_kb, 2) + " KiB",
            ratio(last.per_trigger_kb, r.raw_per_timer_kb),
        ],
    ]
    if f is not None:
        summary += [
            ["fires recorded / SUCCESS", f"{f.fired:,} / {f.succeeded:,}", "-", "-"],
            ["fires > 5 s late (past the misfire threshold)", f"{f.late_5s:,}", "-", "-"],
            ["last fire claimed, s after T0", num(f.last_fire_after_t0_s, 2), num(float(r.spread_s - 1), 0), "-"],
            [
                "service CPU s in the fire window (server / workers)",
                f"{num(r.server_cpu_s, 1)} / {num(r.worker_cpu_s, 1)}",
                "-",
                "-",
            ],
            ["RSS MiB after the fires", num(r.rss_after_fires_kb / 1024, 1), "-", "-"],
        ]
    print_section("Summary", ["metric", "Triggerbus", "bare asyncio loop", "ratio"], summary)
    return {"memory_table": memory, "lateness_table": lateness, "summary_table": summary}


def machine_info(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    return {
        **machine_basics(),
        "data_dir_fs": fs_type(tmp),
        "workers": args.workers,
        "triggers": args.triggers,
        "spread_s": args.spread,
        "create_concurrency": args.concurrency,
        "triggers_created_through": "API",
        "loadavg_at_start": load_average(),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with bench_tmp("tb-bench-timer-", args.tmp_dir) as tmp:
        info = machine_info(args, tmp)
        print_heading("TIMER trigger", info)
        started = time.perf_counter()
        lead = args.lead_s if args.lead_s else 10 + args.triggers / 300
        result = TimerResult(args.triggers, args.spread, 0.0, lead, 0)
        await run_service(args, tmp, result)
        step(f"bare asyncio loop: {args.triggers:,} timers over {args.spread} s")
        await run_raw(args, tmp, result)
        step_done(started)
        tables = report(result)
        return run_results("bench.timer_triggers", info, started, result=asdict(result), **tables)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(
        "bench.timer_triggers", "Measure N cron TIMER triggers (fire lateness, memory) against a bare asyncio loop."
    )
    parser.add_argument("--triggers", "-n", type=int, default=10_000, help="TIMER triggers (default 10000)")
    parser.add_argument(
        "--spread", type=int, default=60, help="fire times spread over this many seconds (default 60; 1 = all at once)"
    )
    parser.add_argument(
        "--lead-s", type=float, default=0.0, help="first fire this long after the creates start (default 10 + N/300)"
    )
    parser.add_argument("--concurrency", "-c", type=int, default=16, help="concurrent create requests (default 16)")
    parser.add_argument("--settle-s", type=float, default=1.0, help="pause before each RSS reading (default 1 s)")
    add_service_args(parser, sync=False)
    add_output_args(parser)
    parser.add_argument("--raw-timers", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.triggers, args.spread, args.concurrency, args.workers) < 1 or args.spread > 3600:
        parser.error("--triggers, --concurrency, --workers must be >= 1, --spread in 1..3600")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.raw_timers:
        helper_main(raw_timers_main())
        return
    bench_main(lambda: run(args), args.json_out)


if __name__ == "__main__":
    main()
