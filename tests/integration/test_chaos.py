"""Faults with every source at once, and each broker/server restarted mid-stream.

``test_sigkill_with_every_source_flowing_loses_nothing``: one ``triggerbus serve`` subprocess
(embedded store) with a KAFKA trigger (tansu), a RABBITMQ trigger, an IOTDA trigger (Mosquitto,
QoS 1, persistent session), a DDS trigger (SecantusDB), an OBS trigger fed by RGW-style webhook
POSTs, and async-invoke API traffic, all pointing at one function that appends every event id it
sees to a file. Producers run continuously with unique ids while the service is SIGKILLed at
seeded-random moments three times (``TRIGGERBUS_CHAOS_SEED`` reproduces a run; the seed is
printed) and restarted. Then every id its source accepted (Kafka: produce acknowledged;
RabbitMQ: publisher confirm; MQTT: PUBACK; Mongo: insert acknowledged; webhook: 2xx; API: 202)
must be in the function's output, and no record of the function may be FAIL or DISCARD.
Duplicates (at-least-once) are counted per source and printed.

The broker/server restart tests stop a source while its trigger reads, check that ``/health``
says ``degraded`` naming the trigger, start it again and check the trigger resumes (``ok``) and
nothing accepted is lost: Mosquitto (the machine's: SIGTERM, then ``mosquitto -d`` with its own
config), SecantusDB (own server, same port and storage), tansu (own broker, memory storage: a
restart loses the topic, so only reconnection and resumption can be shown) and moto as the S3
server (in-memory too: reconciliation catches the uploads whose notification was lost). The
RabbitMQ restart is ``test_rabbitmq_trigger.py::test_broker_restart_mid_stream_loses_nothing``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import paho.mqtt.client as mqtt
import pytest
from aiokafka import AIOKafkaProducer
from paho.mqtt.enums import CallbackAPIVersion

import connectors.kafka as kafka_connector
from connectors.rabbitmq import queue_name
from tests.integration.conftest import TOKEN, Harness, free_port, make_settings, running
from tests.integration.test_dds_trigger import Secantus, dds_data, mongo
from tests.integration.test_kafka_trigger import TUNING, create_topics
from tests.integration.test_obs_trigger import FIXTURES, create_obs_trigger, webhook_url
from tests.integration.test_rabbitmq_trigger import broker, rabbit_data
from tests.support.servers import ServerProcess, start_tansu, wait_for_port
from tests.support.service import ServiceProcess
from tests.support.waiting import bounded_waits

pytestmark = pytest.mark.integration

WAIT = 60.0
wait_for, wait_until = bounded_waits(WAIT, interval=0.1)
SOURCES = {"k": "kafka", "r": "rabbitmq", "m": "mqtt", "d": "dds", "o": "obs", "a": "async"}
ID = re.compile(r"chaos-[krmdoa]-\d+")
KILLS = 3

# Appends every event id (``chaos-<source>-<n>``) found anywhere in the event, one per line, in one write.
ID_RECORDER = r"""
import json, os, re
ID = re.compile(r"chaos-[krmdoa]-\d+")
def handler(event, context):
    ids = ID.findall(json.dumps(event))
    if ids:
        fd = os.open(context.getUserData("out"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, "".join(i + "\n" for i in ids).encode())
        os.close(fd)
    return "ok"
"""


def seen_ids(out: Path) -> Counter[str]:
    return Counter(out.read_text().split()) if out.exists() else Counter()


async def health(base: str, strict: bool = False) -> tuple[int, dict[str, Any]]:
    """``GET /health`` (with the API token, so errors are shown): status code and body."""
    params = {"strict": "1"} if strict else {}
    async with (
        aiohttp.ClientSession(headers={"X-Auth-Token": TOKEN}) as http,
        http.get(f"{base}/health", params=params) as resp,
    ):
        return resp.status, dict(await resp.json())


async def wait_health(base: str, trigger_id: str, degraded: bool, what: str, timeout: float = WAIT) -> dict[str, Any]:
    """Until ``/health`` lists ``trigger_id`` as a problem (``degraded``) or no longer does; the body."""

    async def check() -> dict[str, Any] | None:
        status, body = await health(base)
        assert status == 200, body  # never 503 without ?strict=1
        listed = trigger_id in body["triggers"]
        return body if listed == degraded else None

    return dict(await wait_for(check, what, timeout=timeout))


# -- producers: each records the ids its source accepted ------------------------------------------------


class Producers:
    """The six producers of the chaos test. ``accepted[source]`` holds the ids their source acknowledged."""

    def __init__(self, service: ServiceProcess, stop: asyncio.Event) -> None:
        self.service = service
        self.stop = stop
        self.accepted: dict[str, list[str]] = {name: [] for name in SOURCES.values()}
        self.refused: Counter[str] = Counter()

    async def _loop(self, code: str, send: Callable[[str], Awaitable[bool]], pause: float) -> None:
        n = 0
        while not self.stop.is_set():
            uid = f"chaos-{code}-{n}"
            n += 1
            try:
                ok = await send(uid)
            except (TimeoutError, OSError, aiohttp.ClientError):
                ok = False
            if ok:
                self.accepted[SOURCES[code]].append(uid)
            else:
                self.refused[SOURCES[code]] += 1
            await asyncio.sleep(pause)

    async def kafka(self, bootstrap: str, topic: str) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()

        async def send(uid: str) -> bool:
            await producer.send_and_wait(topic, uid.encode())
            return True

        try:
            await self._loop("k", send, 0.03)
        finally:
            await producer.stop()

    async def rabbitmq(self, exchange: str) -> None:
        connection = await aio_pika.connect(host="127.0.0.1", port=5672, login="guest", password="guest")
        try:
            channel = await connection.channel(publisher_confirms=True)
            target = await channel.get_exchange(exchange, ensure=False)

            async def send(uid: str) -> bool:
                message = aio_pika.Message(uid.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
                await target.publish(message, routing_key="")  # returns once the broker confirmed it
                return True

            await self._loop("r", send, 0.03)
        finally:
            await connection.close()

    async def mqtt(self, topic: str) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"chaos-device-{os.getpid()}")
        client.connect("127.0.0.1", 1883)
        client.loop_start()
        lock = threading.Lock()

        def publish(uid: str) -> bool:
            with lock:
                info = client.publish(topic, json.dumps({"uid": uid}), qos=1)
            info.wait_for_publish(timeout=10)
            return info.is_published()  # PUBACK received

        try:
            await self._loop("m", lambda uid: asyncio.to_thread(publish, uid), 0.03)
        finally:
            client.disconnect()
            client.loop_stop()

    async def dds(self, uri: str, db: str, coll: str) -> None:
        async with mongo(uri) as client:
            collection = client[db][coll]

            async def send(uid: str) -> bool:
                await collection.insert_one({"uid": uid})
                return True

            await self._loop("d", send, 0.03)

    async def obs(self, url: str, bucket: str) -> None:
        template = json.loads((FIXTURES / "obs_golden" / "rgw_put_notification.json").read_text())
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

            async def send(uid: str) -> bool:
                body = json.loads(json.dumps(template))
                record = body["Records"][0]
                etag = hashlib.md5(uid.encode()).hexdigest()
                record["s3"]["bucket"]["name"] = bucket
                record["s3"]["object"].update({"key": f"in/{uid}.bin", "eTag": etag, "sequencer": etag[:16].upper()})
                record["eventId"] = f"{uid}.{etag}"
                async with http.post(url, json=body) as resp:
                    return 200 <= resp.status < 300

            await self._loop("o", send, 0.05)

    async def async_api(self, urn: str) -> None:
        async with self.service.session() as http:

            async def send(uid: str) -> bool:
                path = self.service.fgs + f"/functions/{urn}/invocations-async"
                async with http.post(path, json={"uid": uid}, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    return resp.status == 202

            await self._loop("a", send, 0.03)


# -- the chaos test -------------------------------------------------------------------------------------


async def test_sigkill_with_every_source_flowing_loses_nothing(
    tmp_path: Path, kafka_bootstrap: str, mongo_uri: str
) -> None:
    seed = int(os.environ.get("TRIGGERBUS_CHAOS_SEED") or random.randrange(1 << 32))
    print(f"chaos seed: {seed} (TRIGGERBUS_CHAOS_SEED={seed} reproduces the kill schedule)")
    rng = random.Random(seed)
    started = time.monotonic()
    out = tmp_path / "ids.txt"
    suffix = hashlib.sha1(str(tmp_path).encode()).hexdigest()[:8]
    topic, mqtt_topic = f"chaos-{suffix}", f"$oc/devices/chaos-{suffix}/sys/messages/up"
    db, coll, bucket = f"chaos_{suffix}", "events", f"chaos-{suffix}"
    await create_topics(kafka_bootstrap, [topic])
    stop = asyncio.Event()
    with ServiceProcess(
        tmp_path / "data",
        tmp_path / "service.log",
        TRIGGERBUS_RETRY_BASE_S="0.1",
        TRIGGERBUS_KAFKA_SESSION_TIMEOUT_S="6",
        TRIGGERBUS_KAFKA_FETCH_MAX_WAIT_MS="50",
    ) as service:
        await service.wait_healthy()
        async with broker() as mq, service.harness() as h:
            exchange = await mq.exchange()
            urn = await h.create_function("chaos", ID_RECORDER, user_data={"out": str(out)}, max_instance_num=8)
            batch = {"batch_size": 10, "batch_window_ms": 50}
            kafka = {"kafka_connect_address": kafka_bootstrap, "topic_ids": [topic], "start_position": "EARLIEST"}
            await h.add_trigger(urn, "OPENSOURCEKAFKA", {**kafka, **batch}, trigger_status="ACTIVE")
            rabbit = await h.add_trigger(urn, "RABBITMQ", rabbit_data(exchange, **batch))
            mq.queues.append(queue_name(rabbit["trigger_id"]))
            iot = {"broker_address": "127.0.0.1:1883", "topics": [mqtt_topic], "qos": 1, "session_expiry_s": 120}
            await h.add_trigger(urn, "IOTDA", iot)
            await h.add_trigger(urn, "DDS", dds_data(mongo_uri, db, coll, **batch), trigger_status="ACTIVE")
            obs = await create_obs_trigger(h, urn, {"bucket": bucket, "events": ["s3:ObjectCreated:*"]})
            await wait_triggers_running(h, urn)

            producers = Producers(service, stop)
            tasks = [
                asyncio.create_task(producers.kafka(kafka_bootstrap, topic)),
                asyncio.create_task(producers.rabbitmq(exchange)),
                asyncio.create_task(producers.mqtt(mqtt_topic)),
                asyncio.create_task(producers.dds(mongo_uri, db, coll)),
                asyncio.create_task(producers.obs(webhook_url(obs), bucket)),
                asyncio.create_task(producers.async_api(urn)),
            ]
            kills: list[dict[str, float]] = []
            try:
                for _ in range(KILLS):
                    up = rng.uniform(2.0, 6.0)
                    await asyncio.sleep(up)
                    service.kill()
                    down = rng.uniform(0.2, 2.0)
                    await asyncio.sleep(down)
                    await service.start_healthy()
                    kills.append({"after_s": round(up, 2), "down_s": round(down, 2)})
                await asyncio.sleep(3.0)
            finally:
                stop.set()
                await asyncio.gather(*tasks)

            accepted = {uid for ids in producers.accepted.values() for uid in ids}

            def missing() -> set[str]:
                return accepted - set(seen_ids(out))

            try:
                await wait_until(lambda: not missing(), "every accepted id to reach the function", timeout=60)
            except AssertionError:
                print(service.log_tail())
                raise
            failed = [r for s in ("FAIL", "DISCARD") for r in await h.invocations(urn, status=s)]
        seen = seen_ids(out)
        report: dict[str, Any] = {"seed": seed, "kills": kills, "runtime_s": round(time.monotonic() - started, 1)}
        for code, name in SOURCES.items():
            mine = {uid: n for uid, n in seen.items() if uid.startswith(f"chaos-{code}-")}
            report[name] = {
                "accepted": len(producers.accepted[name]),
                "not_accepted": producers.refused[name],
                "delivered": sum(mine.values()),
                "duplicates": sum(n - 1 for n in mine.values()),
                "unacknowledged_but_delivered": len(set(mine) - accepted),
            }
        print("chaos report:", json.dumps(report))
        assert not missing()
        assert failed == [], failed[:3]
        for name in SOURCES.values():
            assert producers.accepted[name], f"no {name} event was accepted: the test proved nothing for it"
        assert service.terminate(timeout=30) == 0


async def wait_triggers_running(h: Harness, urn: str) -> None:
    """Until the Kafka, RabbitMQ, IoTDA and DDS triggers of ``urn`` read their sources."""

    async def running_all() -> list[str] | None:
        async with h.http.get(h.fgs(f"/triggers/{urn}")) as resp:
            triggers = await resp.json()
        ready = {
            "OPENSOURCEKAFKA": lambda st: bool(st.get("partitions")),
            "RABBITMQ": lambda st: bool(st.get("connected")),
            "IOTDA": lambda st: bool(st.get("subscribed")),
            "DDS": lambda st: st.get("consumer_state") == "running",
        }
        waiting = [
            t["trigger_type_code"]
            for t in triggers
            if not ready.get(t["trigger_type_code"], lambda st: True)(t.get("state") or {})
        ]
        return None if waiting else ["all running"]

    await wait_for(running_all, "every trigger to read its source")


# -- broker / server restarts ---------------------------------------------------------------------------


MOSQUITTO_CONF = "/etc/mosquitto/mosquitto.conf"
MOSQUITTO_PID = Path("/run/mosquitto/mosquitto.pid")


def mosquitto_listening() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 1883), timeout=1):
        return True
    return False


def stop_machine_mosquitto() -> None:
    """SIGTERM the machine's Mosquitto (it saves its persistence file, sessions and queued QoS 1
    messages included) and wait until it is gone."""
    pid = int(MOSQUITTO_PID.read_text().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise RuntimeError(f"mosquitto (pid {pid}) did not stop")


def start_machine_mosquitto() -> None:
    if not mosquitto_listening():
        subprocess.run(["mosquitto", "-d", "-c", MOSQUITTO_CONF], check=True, timeout=10)
        wait_for_port(1883, 10)


def publish_qos1(topic: str, payloads: list[str]) -> None:
    """Publish on one connection, each waiting for its PUBACK."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"restart-device-{os.getpid()}")
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    try:
        for payload in payloads:
            info = client.publish(topic, payload, qos=1)
            info.wait_for_publish(timeout=10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.skipif(not MOSQUITTO_PID.exists(), reason="the machine's Mosquitto does not run from its config")
async def test_mosquitto_restart_is_reported_and_the_session_resumes(tmp_path: Path) -> None:
    topic = f"$oc/devices/restart-{tmp_path.name[-12:]}/sys/messages/up"
    async with running(make_settings(tmp_path / "data")) as h:
        urn, out = await h.create_recorder("iotrestart", ID_RECORDER, tmp_path)
        iot = {"broker_address": "127.0.0.1:1883", "topics": [topic], "qos": 1, "session_expiry_s": 120}
        trigger_id = str((await h.add_trigger(urn, "IOTDA", iot))["trigger_id"])
        await wait_until(lambda: h.service.triggers.connectors["IOTDA"].status(trigger_id).get("subscribed"), "sub")
        before = [f"chaos-m-{i}" for i in range(20)]
        await asyncio.to_thread(publish_qos1, topic, [json.dumps({"uid": u}) for u in before])
        await wait_until(lambda: set(before) <= set(seen_ids(out)), "the messages before the restart")
        try:
            await asyncio.to_thread(stop_machine_mosquitto)
            body = await wait_health(h.base_url, trigger_id, True, "health to show the MQTT outage")
            assert body["status"] == "degraded" and body["triggers"][trigger_id]["type"] == "IOTDA"
            status, _ = await health(h.base_url, strict=True)
            assert status == 503
        finally:
            await asyncio.to_thread(start_machine_mosquitto)
        # Published as soon as the broker is back, likely before the trigger reconnected: they wait
        # in its persistent session, which Mosquitto restored from its persistence file.
        after = [f"chaos-m-{i}" for i in range(20, 40)]
        await asyncio.to_thread(publish_qos1, topic, [json.dumps({"uid": u}) for u in after])
        await wait_health(h.base_url, trigger_id, False, "health to be ok again")
        await wait_until(lambda: set(before + after) <= set(seen_ids(out)), "every message")
        state = h.service.triggers.connectors["IOTDA"].status(trigger_id)
        assert state["session_present"] is True
        seen = seen_ids(out)
        print(f"mosquitto restart: {sum(seen.values()) - len(seen)} duplicates")
        assert (await health(h.base_url))[1]["status"] == "ok"


async def test_secantus_restart_is_reported_and_the_stream_resumes(tmp_path: Path) -> None:
    server = Secantus(tmp_path, "--noop-heartbeat-seconds", "1")
    server.start()
    try:
        async with running(make_settings(tmp_path / "data")) as h:
            urn, out = await h.create_recorder("ddsrestart", ID_RECORDER, tmp_path)
            data = dds_data(server.uri, "restart", "items", batch_size=5, batch_window_ms=50)
            trigger_id = await h.add_active_trigger(urn, "DDS", data)
            written: list[str] = []
            async with mongo(server.uri) as client:
                for i in range(30):
                    await client["restart"]["items"].insert_one({"uid": f"chaos-d-{i}"})
                    written.append(f"chaos-d-{i}")
            await wait_until(lambda: set(written) <= set(seen_ids(out)), "the changes before the restart")
            server.stop()
            try:
                await wait_health(h.base_url, trigger_id, True, "health to show the database outage")
            finally:
                server.start()
            async with mongo(server.uri) as client:
                for i in range(30, 60):
                    await client["restart"]["items"].insert_one({"uid": f"chaos-d-{i}"})
                    written.append(f"chaos-d-{i}")
            await wait_until(lambda: set(written) <= set(seen_ids(out)), "every change")
            await wait_health(h.base_url, trigger_id, False, "health to be ok again")
            seen = seen_ids(out)
            assert all(seen[u] == 1 for u in written), "a change was delivered twice"
    finally:
        server.stop()


async def test_tansu_restart_is_reported_and_consumption_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tansu keeps everything in memory: the restart loses the topic, its records and the group's
    offsets. What can be shown: the trigger reports the outage, reconnects with backoff, and consumes
    records produced after the topic is created again. No-loss across a broker restart needs a
    broker with storage (Apache Kafka); see docs/reliability.md."""
    monkeypatch.setattr(kafka_connector, "CONSUMER_TUNING", dict(TUNING))
    port = free_port()
    server = start_tansu(port)
    bootstrap, topic = server.address, "restart"
    try:
        await create_topics(bootstrap, [topic])
        env_settings = make_settings(tmp_path / "data")
        async with running(env_settings) as h:
            urn, out = await h.create_recorder("kafkarestart", ID_RECORDER, tmp_path)
            kafka = {"kafka_connect_address": bootstrap, "topic_ids": [topic], "start_position": "EARLIEST"}
            trigger = await h.add_trigger(
                urn, "OPENSOURCEKAFKA", {**kafka, "batch_size": 5, "batch_window_ms": 50}, trigger_status="ACTIVE"
            )
            trigger_id = str(trigger["trigger_id"])
            before = [f"chaos-k-{i}" for i in range(10)]
            await produce_all(bootstrap, topic, before)
            try:
                await wait_until(lambda: set(before) <= set(seen_ids(out)), "the records before the restart")
            except AssertionError:
                print(await h.trigger_state(urn, "OPENSOURCEKAFKA", trigger_id))
                raise
            server.stop()
            try:
                body = await wait_health(h.base_url, trigger_id, True, "health to show the broker outage")
                print("degraded:", json.dumps(body["triggers"][trigger_id]))
            finally:
                server = start_tansu(port)
            await create_topics(bootstrap, [topic])  # memory storage: the topic is gone
            after = [f"chaos-k-{i}" for i in range(10, 20)]
            await produce_all(bootstrap, topic, after)
            await wait_until(lambda: set(after) <= set(seen_ids(out)), "the records after the restart")
            await wait_health(h.base_url, trigger_id, False, "health to be ok again")
    finally:
        server.stop()


async def produce_all(bootstrap: str, topic: str, values: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value.encode())
    finally:
        await producer.stop()


class Moto:
    """A moto_server of this test's own on a fixed port (in memory: a restart forgets every bucket)."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=out, stderr=out)
        wait_for_port(self.port, 30, self.proc)

    def stop(self) -> None:
        ServerProcess(self.endpoint, self.proc).stop()
        self.proc = None

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="testkey", aws_secret_access_key="testsecret",
        )  # fmt: skip


async def test_s3_server_restart_is_reported_and_reconciliation_catches_up(tmp_path: Path) -> None:
    moto = Moto(tmp_path / "moto.log")
    moto.start()
    bucket = "restart-bucket"
    settings = make_settings(
        tmp_path / "data",
        obs_endpoint=moto.endpoint,
        obs_access_key="testkey",
        obs_secret_key="testsecret",
        obs_reconcile_settle_s=1.0,
        obs_reconcile_lookback_s=60.0,
    )
    try:
        await asyncio.to_thread(moto.client().create_bucket, Bucket=bucket)
        async with running(settings) as h:
            urn, out = await h.create_recorder("s3restart", ID_RECORDER, tmp_path)
            data = {"bucket": bucket, "events": ["s3:ObjectCreated:*"], "reconcile_interval_s": 1}
            trigger_id = str((await create_obs_trigger(h, urn, data))["trigger_id"])
            # No notification is wired: every upload here is one whose notification was lost.
            await asyncio.to_thread(moto.client().put_object, Bucket=bucket, Key="chaos-o-0", Body=b"0")
            await wait_until(lambda: "chaos-o-0" in seen_ids(out), "reconciliation before the restart")
            moto.stop()
            try:
                await wait_health(h.base_url, trigger_id, True, "health to show the S3 outage")
            finally:
                moto.start()
            await asyncio.to_thread(moto.client().create_bucket, Bucket=bucket)  # in memory: gone
            await asyncio.to_thread(moto.client().put_object, Bucket=bucket, Key="chaos-o-1", Body=b"1")
            await wait_until(lambda: "chaos-o-1" in seen_ids(out), "reconciliation after the restart")
            await wait_health(h.base_url, trigger_id, False, "health to be ok again")
            assert seen_ids(out) == Counter({"chaos-o-0": 1, "chaos-o-1": 1})
    finally:
        moto.stop()
