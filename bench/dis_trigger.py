"""DIS trigger benchmark: DIS put -> DIS trigger -> no-op function, against a raw Redis XREAD consumer.

Run ``python -m bench.dis_trigger --help``. A default run takes about a minute on 2 cores.
Nothing here asserts a speed: it measures Triggerbus and, in the same run, on the same Redis
stream and machine, with the same producer, a raw consumer, and prints the ratios.

What runs: ``python -m triggerbus.cli serve`` (embedded SQLite bus and store, fresh data dir,
``TRIGGERBUS_STREAMS_REDIS`` pointing at the machine's Redis with a key prefix of its own, deleted
afterwards) as a subprocess, with a Python function whose handler returns ``None``, and a DIS
stream of P partitions (default 1). The producer is the service's own put API
(``POST /v2/{project}/records``): puts of up to 500 records as fast as one client sends them
(burst) or one record per put at a steady rate (paced). Every record's data is ``"<seq> <epoch
s>"`` padded to ``--size`` bytes, so the function computes nothing: the async record of each batch
holds the event (the records, so their send times) and the attempt's end time.

* **Triggerbus**: a DIS trigger (TRIM_HORIZON, ``batch_size`` B, ``polling_interval``
  ``--polling-ms`` ms, serial or ``--concurrent``). Records/s is N divided by the time from the
  first put to the moment the trigger's committed position reaches the last record of every
  shard (polled every 50 ms): committed means the batches' invocations finished. Per-record
  latency is *attempt end - send time*, read back through the records API (at most ``--sample``
  records per phase, evenly spread).
* **Raw**: a subprocess that reads the same shards' Redis streams with ``XREAD BLOCK`` (count B),
  builds the same DIS event per shard batch and calls the same no-op handler in-process. That is
  the least a Redis-stream-to-function pipeline does: the physical limit here. It reads its *own*
  records, put with the same producer after the Triggerbus phases (the trigger is disabled by
  then), so both measure put-to-processed. It keeps no position and no records: everything
  Triggerbus adds (a durable hop over its bus, records, process isolation of the function,
  positions committed after terminal states, polling every ``--polling-ms``) is the gap.

The warm-up (100 records through the trigger) is not measured. CPU seconds of the service, its
worker processes and the raw consumer are read from ``/proc``. What this shares with
``bench/lts_trigger.py`` is in ``bench/_stream_trigger.py``.
"""

from __future__ import annotations

import argparse
import base64
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from bench import _stream_trigger as streams
from bench._common import PROJECT, bench_parser, step
from bench._triggers import sent_at
from connectors.redis_streams import sequence_number

TRIGGER_TYPE = "DIS"
PUT_RECORDS = 500
KIND = streams.Kind("dis", "DIS", "bench.dis_trigger", "record", "put/s", "records/batch")


class DISService(streams.StreamService):
    """The shared stream-bench service access, plus the DIS API and DIS triggers."""

    trigger_type: ClassVar[str] = TRIGGER_TYPE

    async def create_stream(self, name: str, partitions: int) -> str:
        body = await self.api("POST", f"/v2/{PROJECT}/streams", {"stream_name": name, "partition_count": partitions})
        return str(body["stream_id"])

    async def put(self, stream: str, values: Sequence[bytes]) -> list[dict[str, str]]:
        records = [{"data": base64.b64encode(v).decode(), "partition_key": str(i)} for i, v in enumerate(values)]
        body = await self.api("POST", f"/v2/{PROJECT}/records", {"stream_name": stream, "records": records})
        return list(body["records"])

    async def create_dis_trigger(self, stream: str, args: argparse.Namespace, batch: int) -> str:
        event_data = {
            "stream_name": stream,
            "sharditerator_type": "TRIM_HORIZON",
            "polling_interval": args.polling_ms,
            "polling_unit": "ms",
            "batch_size": batch,
            "is_serial": not args.concurrent,
            **({"concurrency": args.concurrency} if args.concurrent else {}),
        }
        return await self.add_trigger(event_data)

    def sent_times(self, payload: Any) -> list[float]:
        return [sent_at(base64.b64decode(r["data"]).decode()) for r in payload["Message"]["records"]]


class Producer(streams.StreamProducer):
    """Puts records through the service's DIS API, as every DIS producer would."""

    def __init__(self, svc: DISService, stream: str, size: int) -> None:
        super().__init__(size, PUT_RECORDS)
        self.svc, self.stream = svc, stream

    async def send(self, values: list[bytes]) -> dict[str, str]:
        return {p["partition_id"]: p["sequence_number"] for p in await self.svc.put(self.stream, values)}


def dis_events(key: str, entries: streams.RawEntries) -> Iterator[tuple[Any, list[float]]]:
    """The raw consumer's event: one DIS event per shard batch."""
    event = {
        "ShardID": key.rsplit(":", 1)[1],
        "Message": {
            "next_partition_cursor": "",
            "records": [
                {
                    "partition_key": fields[b"k"].decode(),
                    "data": base64.b64encode(fields[b"d"]).decode(),
                    "sequence_number": sequence_number(entry_id.decode()),
                }
                for entry_id, fields in entries
            ],
            "millis_behind_latest": "",
        },
        "Tag": "latest",
        "StreamName": "raw",
    }
    yield event, [sent_at(fields[b"d"].decode()) for _, fields in entries]


# -- main ---------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    details = {
        "partitions": args.partitions,
        "record_bytes": args.size,
        "batch_size": args.batch,
        "polling": f"{args.polling_ms} ms",
        "mode": f"concurrent ({args.concurrency})" if args.concurrent else "serial",
    }

    async def measure_all(svc: DISService, prefix: str, tmp: Path) -> list[streams.Phase]:
        seen: set[str] = set()
        step("warm-up")
        await svc.create_stream("bench-warmup", 1)
        warm_id = await svc.create_dis_trigger("bench-warmup", args, 1)
        await streams.warm_up(svc, warm_id, Producer(svc, "bench-warmup", args.size), seen)

        stream = "bench"
        stream_id = await svc.create_stream(stream, args.partitions)
        producer = Producer(svc, stream, args.size)
        trigger_id = await svc.create_dis_trigger(stream, args, args.batch)
        keys = [f"{prefix}:dis:{stream_id}:{i}" for i in range(args.partitions)]
        raw_options = ["--batch", str(args.batch)]
        return await streams.compare(args, KIND, svc, trigger_id, producer, args.records, keys, raw_options, tmp, seen)

    return await streams.run_bench(args, KIND, details, DISService, measure_all)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(
        "bench.dis_trigger", "Measure DIS put -> DIS trigger -> no-op function against a raw Redis XREAD consumer."
    )
    parser.add_argument("--records", "-n", type=int, default=20_000, help="burst size (default 20000)")
    parser.add_argument(
        "--batch", type=int, default=100, help="the trigger's batch_size, and the raw COUNT (default 100)"
    )
    parser.add_argument("--polling-ms", type=int, default=20, help="the trigger's polling_interval in ms (default 20)")
    parser.add_argument("--concurrent", action="store_true", help="is_serial false (default: serial)")
    parser.add_argument("--concurrency", type=int, default=10, help="batches in flight when --concurrent (default 10)")
    parser.add_argument("--partitions", "-p", type=int, default=1, help="partitions of the stream (default 1)")
    streams.add_common_args(parser, "record")
    args = parser.parse_args(argv)
    if min(args.records, args.batch, args.polling_ms, args.partitions, args.size, args.sample, args.workers) < 1:
        parser.error("--records, --batch, --polling-ms, --partitions, --size, --sample and --workers must be >= 1")
    if not 1 <= args.batch <= 10000 or not 1 <= args.concurrency <= 80 or args.paced_rate <= 0:
        parser.error("--batch must be 1-10000, --concurrency 1-80, --paced-rate > 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    streams.stream_main(args, lambda: streams.raw_consumer_main(args.redis, args.batch, dis_events), lambda: run(args))


if __name__ == "__main__":
    main()
