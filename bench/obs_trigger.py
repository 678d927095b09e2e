"""OBS trigger benchmark: S3 notifications -> webhook -> OBS trigger -> no-op function, against raw receivers.

Run ``python -m bench.obs_trigger --help``. A default run takes about a minute on 2 cores. Nothing
here asserts a speed: it measures Triggerbus and, in the same run, on the same machine and with the
same load generator, two raw webhook receivers, and prints the ratios.

What runs: ``python -m triggerbus.cli serve`` (embedded SQLite bus and store, fresh data dir) as a
subprocess with a no-op Python function and an OBS trigger; the bench POSTs N distinct S3 event
notifications (Ceph RGW's format, one record each, as RGW and MinIO send them) to the trigger's
webhook URL from C keep-alive clients, each sending its next one when the last was answered.

* **accept** -- notifications/s answered 200. Triggerbus answers only when the invocation is durable
  (bus append + record), so this is the rate an S3 server can push at.
* **end-to-end** -- notifications/s from the first POST until all N invocations are SUCCESS (records
  API, polled every 50 ms): webhook, normalization, dedup lookup, bus, invoker, worker.

The baselines, each a subprocess on the same aiohttp stack (the service's HTTP server):

* **(a) raw receiver** -- parses the JSON and reads bucket/key of each record, answers 200: the
  least any webhook receiver does, and nothing durable.
* **(b) durable raw receiver** -- (a) plus one SQLite INSERT + COMMIT per notification (WAL,
  ``synchronous=FULL``, as the service), on one writer thread: the least an at-least-once receiver
  must do before answering.

With ``--rgw http://host:port`` (a radosgw, e.g. ``python -m tests.support.rgw``) a second part
measures real uploads: P ``put_object`` calls from T threads into a bucket whose notification topic
pushes to (a) and then to the Triggerbus webhook. RGW pushes non-persistent topics synchronously
with the PUT, so the PUT rate includes the webhook's answer time: ``puts/s`` with Triggerbus
against puts/s with the raw receiver is what a real pipeline loses.

CPU seconds of the service and its workers come from ``/proc``; the load generator shares the CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import io
import json
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench._common import (
    FGS,
    TOKEN,
    URN,
    SqliteWriter,
    child_env,
    cpu_delta,
    cpu_snapshot,
    create_function,
    free_port,
    num,
    print_table,
    ratio,
    serve_until_stopped,
    server_process,
    triggerbus_server,
)
from bench.async_invoke import Load, Progress, drive, wait_for_success, warm_up

BUCKET = "bench-input"


def notification(i: int) -> bytes:
    """One RGW-format notification for object ``bench/<i>.jpg`` (distinct ETag: distinct event)."""
    etag = hashlib.md5(str(i).encode()).hexdigest()
    record = {
        "eventVersion": "2.2",
        "eventSource": "ceph:s3",
        "awsRegion": "",
        "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "bench"},
        "requestParameters": {"sourceIPAddress": ""},
        "responseElements": {"x-amz-request-id": f"bench.{i}", "x-amz-id-2": "bench"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "bench",
            "bucket": {"name": BUCKET, "ownerIdentity": {"principalId": "bench"}, "arn": f"arn:aws:s3:::{BUCKET}"},
            "object": {
                "key": f"bench/{i:08d}.jpg",
                "size": 4096,
                "eTag": etag,
                "versionId": "",
                "sequencer": f"{i:016X}",
            },
        },
        "eventId": f"{i}.{etag}",
        "opaqueData": "",
    }
    return json.dumps({"Records": [record]}).encode()


# -- raw receivers (a subprocess: python -m bench.obs_trigger --raw-receiver KIND ...) -------------------


async def serve_raw(kind: str, port: int, db_path: str) -> None:
    schema = "CREATE TABLE IF NOT EXISTS received(id TEXT PRIMARY KEY, bucket TEXT, key TEXT, body BLOB)"
    store = SqliteWriter(db_path, "FULL", schema) if kind == "durable" else None

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        document = json.loads(body)
        objects = [(r["s3"]["bucket"]["name"], r["s3"]["object"]["key"]) for r in document.get("Records", [])]
        if store is not None:
            rows = [(str(uuid.uuid4()), bucket, key, body) for bucket, key in objects]
            await store.write("INSERT INTO received VALUES (?, ?, ?, ?)", rows)
        return web.json_response({"records": len(objects)})

    app = web.Application()
    app.router.add_post("/hook", receive)
    await serve_until_stopped(app, port, store.close if store else None)


# -- the load generator --------------------------------------------------------------------------------------


# The async-invoke bench's load generator, with distinct notifications for bodies and 200 for an answer.
post_notifications = functools.partial(drive, body=notification, status_ok=200, request_ids=False)


def session_for(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), timeout=aiohttp.ClientTimeout(total=120)
    )


@contextlib.asynccontextmanager
async def raw_receiver(kind: str, tmp: Path) -> Any:
    port = free_port()
    argv = [sys.executable, "-m", "bench.obs_trigger", "--raw-receiver", kind, "--port", str(port)]
    argv += ["--db", str(tmp / f"raw-{kind}.db")]
    async with server_process(argv, child_env(), port, tmp / f"raw-{kind}.log") as pid:
        yield f"http://127.0.0.1:{port}/hook", pid


async def raw_phase(kind: str, args: argparse.Namespace, tmp: Path) -> Load:
    name = "(a) raw receiver" if kind == "plain" else "(b) durable raw receiver"
    async with raw_receiver(kind, tmp) as (url, pid), session_for(args.concurrency) as session:
        await post_notifications(session, url, name="warm-up", requests=args.warmup, concurrency=args.concurrency)
        return await post_notifications(
            session, url, name=name, requests=args.requests, concurrency=args.concurrency, server_pid=pid
        )


@dataclass
class EndToEnd:
    completed: int
    per_s: float
    first_post_to_all_done_s: float
    server_cpu_s: float | None
    worker_cpu_s: float | None


@contextlib.asynccontextmanager
async def triggerbus(args: argparse.Namespace, tmp: Path, bucket: str, endpoint: str = "") -> Any:
    """A service with the no-op function and an OBS trigger on ``bucket``: (base, webhook url, pid, http)."""
    data_dir = tmp / f"triggerbus-{uuid.uuid4().hex[:6]}"
    service = triggerbus_server(data_dir, data_dir.with_suffix(".log"), TRIGGERBUS_MAX_WORKERS=str(args.workers))
    async with service as (base, pid), aiohttp.ClientSession(headers={"X-Auth-Token": TOKEN}) as http:
        await create_function(http, base)
        trigger = {"trigger_type_code": "OBS", "event_data": {"bucket": bucket, "events": ["s3:ObjectCreated:*"]}}
        async with http.post(f"{base}{FGS}/triggers/{URN}", json=trigger) as resp:
            created = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"create trigger: HTTP {resp.status}: {created}")
        url = created["event_data"]["webhook_url"].replace("{webhook_token}", created["state"]["webhook_token"])
        yield base, url, pid, http


async def triggerbus_phase(args: argparse.Namespace, tmp: Path) -> tuple[Load, EndToEnd | None]:
    async with triggerbus(args, tmp, BUCKET) as (base, url, pid, http), session_for(args.concurrency) as session:
        warm = await warm_up(post_notifications, session, url, http, base, args)
        progress = Progress()
        before = cpu_snapshot(pid)
        poller = asyncio.create_task(wait_for_success(http, base, warm.count, progress))
        try:
            load = await post_notifications(
                session,
                url,
                name="Triggerbus webhook (durable, then 200)",
                requests=args.requests,
                concurrency=args.concurrency,
                first_index=args.warmup,
                server_pid=pid,
                progress=progress,
            )
            poll = await poller
        finally:
            poller.cancel()
        server_cpu, worker_cpu = cpu_delta(before, cpu_snapshot(pid), pid)
        if poll.done_at is None:
            print(f"!! completions stalled at {poll.count - warm.count} of {load.ok}", file=sys.stderr)
            return load, None
        e2e = poll.done_at - load.t_start
        return load, EndToEnd(poll.count - warm.count, load.ok / e2e, e2e, server_cpu, worker_cpu)


# -- real uploads through radosgw ------------------------------------------------------------------------------


@dataclass
class Uploads:
    name: str
    puts: int
    wall_s: float
    per_s: float
    notified: int  # notifications the receiver counted (raw) or invocations that succeeded (Triggerbus)


def _rgw_clients(endpoint: str) -> tuple[Any, Any]:
    import boto3
    from minio import Minio

    minio = Minio(endpoint.split("://", 1)[1], access_key="testkey", secret_key="testsecret", secure=False)
    sns = boto3.client(
        "sns",
        endpoint_url=endpoint,
        region_name="default",
        aws_access_key_id="testkey",
        aws_secret_access_key="testsecret",
    )
    return minio, sns


def _wire(endpoint: str, bucket: str, url: str) -> None:
    from minio.notificationconfig import NotificationConfig, TopicConfig

    minio, sns = _rgw_clients(endpoint)
    minio.make_bucket(bucket)
    arn = sns.create_topic(Name=bucket, Attributes={"push-endpoint": url, "persistent": "false"})["TopicArn"]
    config = TopicConfig(events=["s3:ObjectCreated:*"], config_id=bucket, topic=arn)
    minio.set_bucket_notification(bucket, NotificationConfig(topic_config_list=[config]))


def _put_all(endpoint: str, bucket: str, puts: int, threads: int) -> float:
    minio, _ = _rgw_clients(endpoint)
    data = b"x" * 4096

    def put(i: int) -> None:
        minio.put_object(bucket, f"bench/{i:08d}.bin", io.BytesIO(data), len(data))

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(puts)))
    return time.perf_counter() - started


async def rgw_phase(args: argparse.Namespace, tmp: Path) -> list[Uploads]:
    results: list[Uploads] = []
    async with raw_receiver("plain", tmp) as (url, _):
        bucket = f"bench-raw-{uuid.uuid4().hex[:8]}"
        await asyncio.to_thread(_wire, args.rgw, bucket, url)
        wall = await asyncio.to_thread(_put_all, args.rgw, bucket, args.puts, args.threads)
        results.append(Uploads("RGW -> (a) raw receiver", args.puts, wall, args.puts / wall, args.puts))
    bucket = f"bench-tb-{uuid.uuid4().hex[:8]}"
    async with triggerbus(args, tmp, bucket) as (base, url, _, http):
        await asyncio.to_thread(_wire, args.rgw, bucket, url)
        wall = await asyncio.to_thread(_put_all, args.rgw, bucket, args.puts, args.threads)
        progress = Progress(accepted=args.puts, finished=True)
        poll = await wait_for_success(http, base, 0, progress)
        results.append(Uploads("RGW -> Triggerbus webhook", args.puts, wall, args.puts / wall, poll.count))
    return results


# -- report ------------------------------------------------------------------------------------------------------


def report(loads: list[Load], e2e: EndToEnd | None, uploads: list[Uploads]) -> None:
    raw, durable, tb = loads
    print()
    print("Notifications POSTed to the webhook (one record each)")
    print_table(
        ["receiver", "ok", "err", "notif/s", "p50 ms", "p99 ms", "server CPU s", "vs (a)", "vs (b)"],
        [
            [
                load.name,
                str(load.ok),
                str(load.errors),
                num(load.rps),
                num(load.latency_ms.p50 if load.latency_ms else None, 2),
                num(load.latency_ms.p99 if load.latency_ms else None, 2),
                num(load.server_cpu_s, 2),
                ratio(load.rps, raw.rps),
                ratio(load.rps, durable.rps),
            ]
            for load in loads
        ],
    )
    if e2e is not None:
        print()
        print(
            f"Triggerbus end-to-end: {e2e.completed} invocations SUCCESS, {num(e2e.per_s)} notif/s from the first "
            f"POST to the last SUCCESS ({ratio(e2e.per_s, raw.rps)} of (a), {ratio(e2e.per_s, durable.rps)} of (b)); "
            f"CPU: server {num(e2e.server_cpu_s, 2)} s, workers {num(e2e.worker_cpu_s, 2)} s "
            f"({num((e2e.server_cpu_s or 0) * 1000 / max(1, e2e.completed), 2)} ms server CPU per notification)"
        )
    if tb.errors:
        print(f"!! Triggerbus errors: {tb.first_error}")
    if uploads:
        print()
        print("Real uploads through radosgw (non-persistent topic: the PUT waits for the webhook)")
        base = uploads[0].per_s
        print_table(
            ["pipeline", "puts", "puts/s", "notified", "vs raw"],
            [[u.name, str(u.puts), num(u.per_s), str(u.notified), ratio(u.per_s, base)] for u in uploads],
        )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-obs-") as name:
        tmp = Path(name)
        raw = await raw_phase("plain", args, tmp)
        durable = await raw_phase("durable", args, tmp)
        tb, e2e = await triggerbus_phase(args, tmp)
        uploads = await rgw_phase(args, tmp) if args.rgw else []
    report([raw, durable, tb], e2e, uploads)
    return {
        "loads": [load.summary() for load in (raw, durable, tb)],
        "end_to_end": asdict(e2e) if e2e else None,
        "uploads": [asdict(u) for u in uploads],
        "args": vars(args),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000, help="notifications per measured phase")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent webhook clients")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4, help="the service's Python workers")
    parser.add_argument("--rgw", default="", help="radosgw endpoint (testkey/testsecret) for the upload part")
    parser.add_argument("--puts", type=int, default=500, help="uploads per pipeline in the upload part")
    parser.add_argument("--threads", type=int, default=8, help="uploading threads in the upload part")
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--raw-receiver", choices=("plain", "durable"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.raw_receiver:
        asyncio.run(serve_raw(args.raw_receiver, args.port, args.db))
        return
    results = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
