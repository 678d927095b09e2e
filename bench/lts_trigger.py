"""LTS trigger benchmark: LTS log reports -> LTS trigger -> no-op function, against a raw Redis XREAD consumer.

Run ``python -m bench.lts_trigger --help``. Nothing here asserts a speed: it measures Triggerbus
and, in the same run, on the same Redis stream and machine, with the same producer, a raw
consumer, and prints the ratios. The machinery is shared with ``bench/dis_trigger.py``
(``bench/_stream_trigger.py``).

What runs: ``python -m triggerbus.cli serve`` (embedded SQLite bus and store, fresh data dir,
``TRIGGERBUS_STREAMS_REDIS`` pointing at the machine's Redis with a key prefix of its own, deleted
afterwards) as a subprocess, with a Python function whose handler returns ``None``, one log group
and one log stream. The producer is the service's own report API (``POST
/v2/{project}/lts/groups/{gid}/streams/{sid}/tenant/contents``, with ``hostName``/``hostIP``/
``pathFile`` labels): reports of ``--report-lines`` lines as fast as one client sends them
(burst) or one line per report at a steady rate (paced). Every line is ``"<seq> <epoch s>"``
padded to ``--size`` bytes (at most 64 KB, so no log is split), so the function computes nothing:
the async record of each invocation holds the event (the logs, so their send times) and the
attempt's end time. The report API does not answer positions: after each phase the producer reads
the log stream's newest Redis entry, the position the trigger must commit.

* **Triggerbus**: an LTS trigger (``batch_window_ms`` ``--batch-window-ms``; events up to the
  connector's 75 KB raw message). Logs/s is N divided by the time from the first report to the
  moment the trigger's committed position reaches the last log reported (polled every 50 ms):
  committed means the events' invocations finished. Per-log latency is *attempt end - send
  time*, read back through the records API (at most ``--sample`` records per phase, evenly
  spread).
* **Raw**: a subprocess that reads the same log stream's Redis stream with ``XREAD BLOCK``
  (``COUNT`` = the connector's ``READ_COUNT``), packs each read into LTS events with the
  connector's own :class:`connectors.lts.Packer` and :func:`connectors.lts.build_event` (the same
  75 KB limit, no time window: an event is closed at the end of each read) and calls the same no-op
  handler in-process. That is the least a Redis-stream-to-function pipeline does: the physical
  limit here. It reads its *own* logs, reported with the same producer after the Triggerbus phases
  (the trigger is disabled by then), so both measure report-to-processed. It keeps no position and
  no records: everything Triggerbus adds (a durable hop over its bus, records, process isolation
  of the function, positions committed after terminal states, the batch window) is the gap.

The default ``--batch-window-ms`` is 20 ms, like the DIS bench's polling interval, not the
connector's default of 1000 ms (which would mostly measure the window). The warm-up (100 logs,
one per report, window 0, through a trigger on a log stream of its own) is not measured. CPU
seconds of the service, its worker processes and the raw consumer are read from ``/proc``; the
service's include the reports in every phase.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import redis.asyncio as aioredis

from bench import _stream_trigger as streams
from bench._common import PROJECT, bench_parser, step
from bench._triggers import sent_at
from connectors.lts import MAX_WINDOW_MS, READ_COUNT, Packed, Packer, build_event, payload_base
from connectors.redis_streams import ZERO_ID, sequence_number
from schemas.events.lts import LTSEvent

TRIGGER_TYPE = "LTS"
REPORT_LINES = 500
MAX_REPORT_LINES = 10_000  # the report API's bound
MAX_REPORT_BYTES = 5 * 1024 * 1024  # the report API's bound, per request
MAX_SIZE = 64 * 1024  # a log's raw message stays under the 75 KB event limit: never split
LABELS = {"hostName": "bench-host", "hostIP": "127.0.0.1", "pathFile": "/var/log/bench.log"}
KIND = streams.Kind("lts", "LTS", "bench.lts_trigger", "log", "reported/s", "logs/event")


class LTSService(streams.StreamService):
    """The shared stream-bench service access, plus the LTS API and LTS triggers."""

    trigger_type: ClassVar[str] = TRIGGER_TYPE

    async def create_group(self, name: str) -> str:
        body = await self.api("POST", f"/v2/{PROJECT}/groups", {"log_group_name": name})
        return str(body["log_group_id"])

    async def create_log_stream(self, group_id: str, name: str) -> str:
        body = await self.api("POST", f"/v2/{PROJECT}/groups/{group_id}/streams", {"log_stream_name": name})
        return str(body["log_stream_id"])

    async def report(self, group_id: str, stream_id: str, lines: Sequence[str]) -> None:
        body = {"log_time_ns": time.time_ns(), "contents": list(lines), "labels": LABELS}
        path = f"/v2/{PROJECT}/lts/groups/{group_id}/streams/{stream_id}/tenant/contents"
        answer = await self.api("POST", path, body)
        if answer.get("errorCode") != "SVCSTG.ALS.200.200":
            raise RuntimeError(f"POST {path}: {answer}")

    async def create_lts_trigger(self, group_id: str, stream_id: str, window_ms: int) -> str:
        return await self.add_trigger(
            {"log_group_id": group_id, "log_topic_id": stream_id, "batch_window_ms": window_ms}
        )

    def sent_times(self, payload: Any) -> list[float]:
        return [sent_at(log["message"]) for log in LTSEvent.model_validate(payload).decoded().logs]


class Reporter(streams.StreamProducer):
    """Reports log lines through the service's LTS API, as an agent would; reads where they went from Redis."""

    def __init__(
        self, svc: LTSService, client: aioredis.Redis, prefix: str, group_id: str, stream_id: str, size: int, lines: int
    ) -> None:
        super().__init__(size, lines)
        self.svc, self.client, self.group_id, self.stream_id = svc, client, group_id, stream_id
        self.key = f"{prefix}:lts:{stream_id}"

    async def send(self, values: list[bytes]) -> dict[str, str]:
        await self.svc.report(self.group_id, self.stream_id, [v.decode() for v in values])
        return {}

    async def tips(self) -> dict[str, str]:
        newest: Any = await self.client.xrevrange(self.key, count=1)
        return {self.stream_id: sequence_number(newest[0][0].decode())} if newest else {}


def lts_events(owner: str, group_id: str) -> streams.RawEvents:
    """The raw consumer's events: each read packed into 75 KB LTS events by the connector's own code."""

    def events(key: str, entries: streams.RawEntries) -> Iterator[tuple[Any, list[float]]]:
        topic = key.rsplit(":", 1)[1]
        packer = Packer(payload_base(owner, group_id, topic), ZERO_ID)
        packed: list[Packed] = []
        for entry_id, fields in entries:
            packed += packer.add(entry_id.decode(), json.loads(fields[b"log"]), 0.0)
        packed += packer.close()
        for one in packed:
            yield build_event(one, owner, group_id, topic).dump(), [sent_at(log["message"]) for log in one.logs]

    return events


# -- main ---------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    details = {
        "log_bytes": args.size,
        "report_lines": args.report_lines,
        "batch_window": f"{args.batch_window_ms} ms",
        "raw_read_count": READ_COUNT,
    }

    async def measure_all(svc: LTSService, prefix: str, tmp: Path) -> list[streams.Phase]:
        seen: set[str] = set()
        client = aioredis.Redis.from_url(args.redis)
        try:
            group_id = await svc.create_group("bench")
            step("warm-up")
            warm_stream = await svc.create_log_stream(group_id, "bench-warmup")
            warm_id = await svc.create_lts_trigger(group_id, warm_stream, 0)
            await streams.warm_up(
                svc, warm_id, Reporter(svc, client, prefix, group_id, warm_stream, args.size, 1), seen
            )

            stream_id = await svc.create_log_stream(group_id, "bench")
            trigger_id = await svc.create_lts_trigger(group_id, stream_id, args.batch_window_ms)
            producer = Reporter(svc, client, prefix, group_id, stream_id, args.size, args.report_lines)
            keys = [producer.key]
            raw_options = ["--group-id", group_id]
            return await streams.compare(args, KIND, svc, trigger_id, producer, args.logs, keys, raw_options, tmp, seen)
        finally:
            await client.aclose()

    return await streams.run_bench(args, KIND, details, LTSService, measure_all)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(
        "bench.lts_trigger",
        "Measure LTS log reports -> LTS trigger -> no-op function against a raw Redis XREAD consumer.",
    )
    parser.add_argument("--logs", "-n", type=int, default=20_000, help="burst size in logs (default 20000)")
    parser.add_argument(
        "--report-lines",
        type=int,
        default=REPORT_LINES,
        help=f"log lines per report in bursts, 1-{MAX_REPORT_LINES} (default {REPORT_LINES}; paced: 1)",
    )
    parser.add_argument(
        "--batch-window-ms",
        type=int,
        default=20,
        help=f"the trigger's batch_window_ms, 0-{MAX_WINDOW_MS} (default 20; the connector's own default is 1000)",
    )
    streams.add_common_args(parser, "log")
    parser.add_argument("--group-id", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.logs, args.size, args.sample, args.workers) < 1:
        parser.error("--logs, --size, --sample and --workers must be >= 1")
    if not 1 <= args.report_lines <= MAX_REPORT_LINES or not 0 <= args.batch_window_ms <= MAX_WINDOW_MS:
        parser.error(f"--report-lines must be 1-{MAX_REPORT_LINES}, --batch-window-ms 0-{MAX_WINDOW_MS}")
    if args.size > MAX_SIZE or args.report_lines * (args.size + 4) > MAX_REPORT_BYTES or args.paced_rate <= 0:
        parser.error(f"--size must be at most {MAX_SIZE}, a report at most 5 MB, --paced-rate > 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    streams.stream_main(
        args,
        lambda: streams.raw_consumer_main(args.redis, READ_COUNT, lts_events(PROJECT, args.group_id)),
        lambda: run(args),
    )


if __name__ == "__main__":
    main()
