"""RABBITMQ triggers against the machine's RabbitMQ (127.0.0.1:5672, guest/guest) and a real service.

Covered: the documented event and batch sizes, every message delivered and acked, binary
payloads, precise 400s at create time (non-fanout or missing exchange, refused login, missing
vhost, unreachable broker, unknown instance), the password never returned, logged or stored in
clear, a poison message that fails after its retries while the queue moves on, the 6 MB drop
rule, connections closed from the broker side mid-stream (unacked messages redelivered, nothing
lost, nothing left unacked), a SIGKILLed service (a restarted one delivers everything), and
disable (queue kept) / delete (queue removed, also by a process that never ran the trigger), and
a real broker restart mid-stream.

Every exchange, queue, user and vhost has a unique name, and only this test's connections are
closed by name. The broker-restart test stops and starts the shared broker's application
(``rabbitmqctl stop_app/start_app``): the suite runs serially, so nothing else uses it then.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from connectors.rabbitmq import queue_name
from schemas.events.rabbitmq import RabbitMQEvent
from tests.integration.conftest import Harness, failures_to_function, free_port, make_settings, running
from tests.support.recording import BATCH_RECORDER, batch_messages, read_jsonl
from tests.support.service import ServiceProcess
from tests.support.waiting import bounded_waits

pytestmark = pytest.mark.integration

BROKER = "127.0.0.1:5672"
WAIT = 60.0
CODE = "RABBITMQ"
wait_for, _ = bounded_waits(WAIT)
EVENT_KEYS = ["event_version", "event_time", "trigger_type", "region", "records"]

SINK = "def handler(event, context):\n    return event\n"


# -- the broker ----------------------------------------------------------------------------------------


def unique(name: str) -> str:
    return f"tb-test-{name}-{uuid.uuid4().hex[:8]}"


async def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl (the broker's own CLI) off the event loop; its stdout."""
    result = await asyncio.to_thread(
        subprocess.run, ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {result.stderr or result.stdout}")
    return result.stdout


async def queue_counts(queue: str, vhost: str = "/") -> tuple[int, int] | None:
    """(ready, unacked) of a queue as the broker counts them; None if there is no such queue."""
    out = await rabbitmqctl(
        "list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged", "--no-table-headers"
    )
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] == queue:
            return int(parts[1]), int(parts[2])
    return None


async def close_connections(fragment: str) -> int:
    """Close, from the broker side, every connection whose client-given name contains ``fragment``."""
    out = await rabbitmqctl("list_connections", "pid", "client_properties", "--no-table-headers")
    closed = 0
    for line in out.splitlines():
        pid, _, properties = line.partition("\t")
        if "connection_name" in properties and fragment in properties:
            await rabbitmqctl("close_connection", pid, "triggerbus test: connection loss")
            closed += 1
    return closed


class Broker:
    """The test's own publishing connection, and the exchanges and queues it must clean up."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection) -> None:
        self.connection = connection
        self.exchanges: list[str] = []
        self.queues: list[str] = []

    async def exchange(self, kind: aio_pika.ExchangeType = aio_pika.ExchangeType.FANOUT) -> str:
        name = unique(kind.value)
        channel = await self.connection.channel()
        await channel.declare_exchange(name, kind, durable=True)
        await channel.close()
        self.exchanges.append(name)
        return name

    async def publish(self, exchange: str, bodies: list[bytes], *, rate: float | None = None) -> None:
        """Persistent messages with publisher confirms, in order; ``rate`` paces them (messages/s)."""
        channel = await self.connection.channel(publisher_confirms=True)
        try:
            target = await channel.get_exchange(exchange, ensure=False)
            for i, body in enumerate(bodies):
                await target.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=f"m{i}"),
                    routing_key="",
                )
                if rate:
                    await asyncio.sleep(1 / rate)
        finally:
            await channel.close()

    async def cleanup(self) -> None:
        channel = await self.connection.channel()
        for queue in self.queues:
            await channel.queue_delete(queue)
        for exchange in self.exchanges:
            await channel.exchange_delete(exchange)
        await channel.close()


@asynccontextmanager
async def broker(vhost: str = "/") -> AsyncIterator[Broker]:
    host, port = BROKER.split(":")
    connection = await aio_pika.connect(host=host, port=int(port), login="guest", password="guest", virtualhost=vhost)
    b = Broker(connection)
    try:
        yield b
    finally:
        try:
            await b.cleanup()
        finally:
            await connection.close()


# -- the service ---------------------------------------------------------------------------------------


async def recorder(h: Harness, tmp_path: Path, name: str) -> tuple[str, Path]:
    """BATCH_RECORDER as function ``name`` (gate file ``tmp_path/<name>.gate``, waited for up to 40 s):
    its URN and output file."""
    return await h.create_recorder(name, BATCH_RECORDER, tmp_path, "gate", user_data={"gate_s": "40"}, timeout=60)


def rabbit_data(exchange: str, **extra: Any) -> dict[str, Any]:
    return {
        "instance_id": "81335d56-b9fe-4679-ba95-7030949cc76b",
        "connect_address": BROKER,
        "exchange_name": exchange,
        "access_user": "guest",
        "access_password": "guest",
        **extra,
    }


async def queue_trigger(h: Harness, mq: Broker, urn: str, exchange: str, **data: Any) -> tuple[str, str]:
    """A RABBITMQ trigger of ``urn`` on ``exchange`` (asserting 201): its id and its queue, which ``mq`` deletes."""
    trigger = await h.add_trigger(urn, CODE, rabbit_data(exchange, **data))
    trigger_id = str(trigger["trigger_id"])
    queue = queue_name(trigger_id)
    mq.queues.append(queue)
    return trigger_id, queue


async def wait_drained(queue: str, vhost: str = "/") -> None:
    """Until the broker says the queue holds nothing: no message waiting, none delivered and unacked."""

    async def empty() -> bool:
        return await queue_counts(queue, vhost) == (0, 0)

    await wait_for(empty, f"queue {queue} to be empty and fully acked")


# -- tests ---------------------------------------------------------------------------------------------


async def test_events_batches_and_every_message_acked(tmp_path: Path) -> None:
    async with broker() as mq, running(make_settings(tmp_path / "data")) as h:
        exchange = await mq.exchange()
        urn, out = await recorder(h, tmp_path, "rmq")
        status, trigger = await h.create_trigger(urn, CODE, rabbit_data(exchange, batch_size=10, batch_window_ms=100))
        assert status == 201, trigger
        assert trigger["trigger_status"] == "ACTIVE"
        assert trigger["event_data"]["access_password"] == "******"
        trigger_id = trigger["trigger_id"]
        queue = queue_name(trigger_id)
        mq.queues.append(queue)

        binary = b"\xff\xfe\x00\x01binary"
        texts = [f"msg-{i:03d}" for i in range(90)] + ["héllo ✓ 世界", ""]
        bodies = [t.encode() for t in texts[:40]] + [binary] + [t.encode() for t in texts[40:]]
        await mq.publish(exchange, bodies)

        async def all_arrived() -> bool:
            return len(batch_messages(out)) >= len(bodies)

        await wait_for(all_arrived, "every published message")
        events = read_jsonl(out)
        flagged: list[str] = []
        for event in events:
            assert list(event) == EVENT_KEYS  # exactly the documented keys, in the documented order
            assert event["event_version"] == "v1.0"
            assert isinstance(event["event_time"], int) and abs(event["event_time"] - time.time()) < 600
            assert event["trigger_type"] == "RABBITMQ"
            assert event["region"] == h.server.settings.region
            assert len(event["records"]) == 1
            record = event["records"][0]
            assert set(record) - {"base64_messages"} == {"messages", "instance_id", "exchange"}
            assert record["instance_id"] == "81335d56-b9fe-4679-ba95-7030949cc76b"
            assert record["exchange"] == exchange
            assert 1 <= len(record["messages"]) <= 10
            numbered = [int(m[4:]) for m in record["messages"] if m.startswith("msg-")]
            assert numbered == sorted(numbered)  # delivery order within a batch
            flagged += [record["messages"][i] for i in record.get("base64_messages", [])]
            documented = {**event, "records": [{k: v for k, v in record.items() if k != "base64_messages"}]}
            assert RabbitMQEvent.model_validate(documented).dump() == documented
        assert [base64.b64decode(m) for m in flagged] == [binary]
        delivered = Counter(m for m in batch_messages(out) if m not in flagged)
        assert delivered == Counter(texts)  # each exactly once: nothing failed, so nothing was redelivered

        async def all_success() -> list[dict[str, Any]] | None:
            found = await h.invocations(urn, trigger_id=trigger_id)
            return found if len(found) == len(events) and all(r["status"] == "SUCCESS" for r in found) else None

        found = await wait_for(all_success, "a SUCCESS record per batch")
        assert sum(r["source"]["count"] for r in found) == len(bodies)
        for record in found:
            assert record["trigger_type"] == "RABBITMQ"
            assert record["source"]["exchange"] == exchange and record["source"]["queue"] == queue

        await wait_drained(queue)

        async def all_acked() -> dict[str, Any] | None:
            s = await h.trigger_state(urn, CODE, trigger_id)
            return s if s.get("acked") == len(bodies) else None

        s = await wait_for(all_acked, "every message acked")
        assert s["connected"] is True and s["consumer_state"] == "connected"
        assert s["queue"] == queue and s["exchange"] == exchange and s["address"] == BROKER
        assert s["consumed"] == len(bodies) and s["in_flight"] == 0 and s["redelivered"] == 0
        assert s["finished"] == {"SUCCESS": len(bodies)}
        assert s["prefetch"] == 100 and s["last_error"] is None
        cp = await h.get_checkpoint(urn, CODE, trigger_id)
        assert cp == {
            "queue": queue,
            "exchange": exchange,
            "vhost": "/",
            "exists": True,
            "messages_ready": 0,
            "consumers": 1,
        }


async def test_bad_configs_get_precise_400s(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "data",
        rabbitmq_instances={"inst-user": {"address": BROKER, "user": "guest"}, "inst-plain": BROKER},
    )
    async with broker() as mq, running(settings) as h:
        fanout = await mq.exchange()
        direct = await mq.exchange(aio_pika.ExchangeType.DIRECT)
        topic = await mq.exchange(aio_pika.ExchangeType.TOPIC)
        urn = await h.create_function("cfg", SINK)
        dead = f"127.0.0.1:{free_port()}"
        no_address = {k: v for k, v in rabbit_data(fanout).items() if k != "connect_address"}
        cases: list[tuple[dict[str, Any], str]] = [
            (
                rabbit_data(direct),
                f"event_data.exchange_name: exchange '{direct}' is a direct exchange; RABBITMQ triggers support "
                "only fanout exchanges",
            ),
            (rabbit_data(topic), f"exchange '{topic}' is a topic exchange"),
            (rabbit_data("amq.direct"), "exchange 'amq.direct' is a direct exchange"),
            (
                rabbit_data("tb-test-missing-exchange"),
                "event_data.exchange_name: exchange 'tb-test-missing-exchange' does not exist in vhost '/' on "
                f"{BROKER}",
            ),
            (
                rabbit_data(fanout, access_password="wrong-password"),
                f"event_data.access_user: RabbitMQ at {BROKER} refused the login of user 'guest'",
            ),
            (
                rabbit_data(fanout, vhost="tb-test-no-such-vhost"),
                "event_data.vhost: RabbitMQ at 127.0.0.1:5672 refused to open vhost 'tb-test-no-such-vhost'",
            ),
            (
                rabbit_data(fanout, connect_address=dead),
                f"event_data.connect_address: cannot connect to RabbitMQ at {dead}",
            ),
            (rabbit_data(fanout, connect_address="mq:notaport"), "connect_address"),
            ({**no_address, "instance_id": "nope"}, "event_data.instance_id: unknown RabbitMQ instance 'nope'"),
            (
                {k: v for k, v in no_address.items() if k != "access_user"} | {"instance_id": "inst-plain"},
                "event_data.access_user: is required",
            ),
            (rabbit_data(fanout, batch_size=0), "batch_size"),
            (rabbit_data(fanout, batch_size=1001), "batch_size"),
            (rabbit_data(fanout, batch_window_ms=300001), "batch_window_ms: must be between 0 and 300000"),
            ({k: v for k, v in rabbit_data(fanout).items() if k != "access_password"}, "access_password"),
            ({k: v for k, v in rabbit_data(fanout).items() if k != "exchange_name"}, "exchange_name"),
        ]
        for data, message in cases:
            status, error = await h.create_trigger(urn, CODE, data)
            assert status == 400, (data, error)
            assert error["error_code"] == "FSS.0400"
            assert message in error["error_msg"], (data, error)
            assert "wrong-password" not in error["error_msg"]

        # fanout exchanges are accepted, whatever their flags; so is the built-in amq.fanout
        channel = await mq.connection.channel()
        transient = unique("transient")
        await channel.declare_exchange(transient, aio_pika.ExchangeType.FANOUT, durable=False, auto_delete=False)
        mq.exchanges.append(transient)
        for exchange in (transient, "amq.fanout"):
            status, trigger = await h.create_trigger(urn, CODE, rabbit_data(exchange), trigger_status="DISABLED")
            assert status == 201, trigger
        # the probe changed nothing: the transient exchange is still non-durable (a redeclare says so)
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed, match="durable"):
            await (await mq.connection.channel()).declare_exchange(
                transient, aio_pika.ExchangeType.FANOUT, durable=True
            )

        # the broker from the instance map, with the map's default user; the window default is echoed
        status, trigger = await h.create_trigger(
            urn, CODE, {k: v for k, v in no_address.items() if k != "access_user"} | {"instance_id": "inst-user"}
        )
        assert status == 201, trigger
        assert trigger["event_data"]["batch_window_ms"] == 500
        mq.queues.append(queue_name(trigger["trigger_id"]))
        s = await h.trigger_state(urn, CODE, trigger["trigger_id"])
        assert s["connected"] is True and s["address"] == BROKER and s["user"] == "guest"


async def test_password_is_never_returned_logged_or_stored_in_clear(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A user of its own with a distinctive password, on a vhost of its own."""
    caplog.set_level(logging.DEBUG)
    vhost, user = unique("vhost"), unique("user")
    password = f"pw-{uuid.uuid4().hex}"
    await rabbitmqctl("add_vhost", vhost)
    await rabbitmqctl("add_user", user, password)
    try:
        await rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        await rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        data_dir = tmp_path / "data"
        async with broker(vhost) as mq, running(make_settings(data_dir)) as h:
            exchange = await mq.exchange()
            urn, out = await recorder(h, tmp_path, "secret")
            data = rabbit_data(exchange, vhost=vhost, access_user=user, access_password=password, batch_window_ms=0)
            status, trigger = await h.create_trigger(urn, CODE, data)
            assert status == 201, trigger
            trigger_id = trigger["trigger_id"]
            await mq.publish(exchange, [b"one", b"two"])

            async def arrived() -> bool:
                return sorted(batch_messages(out)) == ["one", "two"]

            await wait_for(arrived, "the messages on the private vhost")
            got = await h.get_trigger(urn, CODE, trigger_id)
            assert got["event_data"]["access_password"] == "******"
            assert got["event_data"]["access_user"] == user and got["event_data"]["vhost"] == vhost
            assert got["state"]["vhost"] == vhost
            async with h.http.get(h.fgs(f"/triggers/{urn}")) as resp:
                listed = await resp.text()
            cp = await h.get_checkpoint(urn, CODE, trigger_id)
            # a wrong password for this user: refused, and the attempt leaves no trace of it either
            wrong = f"pw-{uuid.uuid4().hex}"
            status, error = await h.create_trigger(urn, CODE, {**data, "access_password": wrong})
            assert status == 400 and "refused the login" in error["error_msg"], error
            # connection lost and re-established: the reconnect path logs too
            assert await close_connections(trigger_id) >= 1

            async def reconnected() -> bool:
                s = await h.trigger_state(urn, CODE, trigger_id)
                return s.get("connects", 0) >= 2 and s.get("connected") is True

            await wait_for(reconnected, "the trigger to reconnect")
            s = await h.trigger_state(urn, CODE, trigger_id)
            assert s["last_error"] and "connection lost" in s["last_error"]
            for text in (json.dumps(trigger), json.dumps(got), listed, json.dumps(cp), json.dumps(s), caplog.text):
                assert password not in text
                assert wrong not in text and wrong not in json.dumps(error)
            assert any("rabbitmq" in r.name or "aiormq" in r.name for r in caplog.records)  # logs were captured
            mq.queues.append(queue_name(trigger_id))
        stored = b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())
        assert password.encode() not in stored  # encrypted at rest (database, WAL, everything in the data dir)
        assert wrong.encode() not in stored
    finally:
        await rabbitmqctl("delete_user", user)
        await rabbitmqctl("delete_vhost", vhost)


async def test_missing_permissions_are_named_at_create_time(tmp_path: Path) -> None:
    """What the user may not do (declare the exchange to check its type, create or bind its queue) is a 400."""
    vhost, user = unique("vhost"), unique("user")
    password = f"pw-{uuid.uuid4().hex}"
    await rabbitmqctl("add_vhost", vhost)
    await rabbitmqctl("add_user", user, password)
    try:
        await rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        async with broker(vhost) as mq, running(make_settings(tmp_path / "data")) as h:
            exchange = await mq.exchange()
            urn = await h.create_function("perm", SINK)
            data = rabbit_data(exchange, vhost=vhost, access_user=user, access_password=password)
            cases = [
                # configure nothing: the exchange cannot be declared, so its type cannot be checked
                (("^$", ".*", ".*"), f"event_data.exchange_name: user '{user}' may not declare exchange '{exchange}'"),
                # configure the exchange only: the trigger's queue cannot be created
                (("^tb-test-", ".*", ".*"), f"event_data.access_user: user '{user}' may not create queue 'triggerbus-"),
                # no write permission on the queue: it cannot be bound
                ((".*", "^$", ".*"), "may not bind queue 'triggerbus-"),
            ]
            for (configure, write, read), message in cases:
                await rabbitmqctl("set_permissions", "-p", vhost, user, configure, write, read)
                status, error = await h.create_trigger(urn, CODE, data)
                assert status == 400, (configure, write, read, error)
                assert message in error["error_msg"], error
                assert password not in error["error_msg"]
            await rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
            status, trigger = await h.create_trigger(urn, CODE, data)
            assert status == 201, trigger
            mq.queues.append(queue_name(trigger["trigger_id"]))
            listed = await rabbitmqctl("list_queues", "-p", vhost, "name", "--no-table-headers")
            # only the trigger's own queue: the permission checks left nothing behind
            assert [q for q in listed.split() if q.startswith("triggerbus-")] == [queue_name(trigger["trigger_id"])]
    finally:
        await rabbitmqctl("delete_user", user)
        await rabbitmqctl("delete_vhost", vhost)


async def test_poison_message_fails_after_its_retries_and_the_queue_moves_on(tmp_path: Path) -> None:
    async with broker() as mq, running(make_settings(tmp_path / "data")) as h:
        exchange = await mq.exchange()
        urn, out = await recorder(h, tmp_path, "poisoned")
        sink = await h.create_function("sink", SINK)
        await h.set_async_config(urn, failures_to_function(sink, retries=2))
        trigger_id, queue = await queue_trigger(h, mq, urn, exchange, batch_size=1, batch_window_ms=0)

        first = ["m0", "m1", "POISON-2", "m3"]
        await mq.publish(exchange, [m.encode() for m in first])

        async def failed() -> list[dict[str, Any]]:
            return await h.invocations(urn, status="FAIL")

        fail = (await wait_for(failed, "the FAIL record of the poison message"))[0]
        assert fail["trigger_id"] == trigger_id and fail["source"]["exchange"] == exchange
        detail = await h.wait_terminal(urn, fail["request_id"])
        assert len(detail["attempt_details"]) == 3  # the first attempt and max_async_retry_attempts retries
        assert json.loads(detail["payload"])["records"][0]["messages"] == ["POISON-2"]
        assert detail["destination"]["status"] == "delivered"
        sink_record = await h.wait_terminal(sink, detail["destination"]["request_id"])
        assert sink_record["status"] == "SUCCESS"

        later = [f"n{i}" for i in range(5)]
        await mq.publish(exchange, [m.encode() for m in later])

        async def later_done() -> bool:
            return set(later) <= set(batch_messages(out))

        await wait_for(later_done, "the messages after the poison one")
        await wait_drained(queue)  # the poison message was acked after its failure: nothing stuck
        assert Counter(batch_messages(out)) == Counter(first + later + ["POISON-2", "POISON-2"])  # 3 attempts

        async def settled() -> dict[str, Any] | None:
            s = await h.trigger_state(urn, CODE, trigger_id)
            return s if s.get("acked") == len(first) + len(later) else None

        s = await wait_for(settled, "every message acked")
        assert s["finished"] == {"SUCCESS": len(first) + len(later) - 1, "FAIL": 1}
        assert s["in_flight"] == 0


async def test_messages_over_6_mb_are_discarded_with_a_record_and_acked(tmp_path: Path) -> None:
    big = b"x" * (6 * 1024 * 1024 + 512 * 1024)
    async with broker() as mq, running(make_settings(tmp_path / "data")) as h:
        exchange = await mq.exchange()
        urn, out = await recorder(h, tmp_path, "big")
        trigger_id, queue = await queue_trigger(h, mq, urn, exchange, batch_size=10, batch_window_ms=50)
        await mq.publish(exchange, [b"small-0", big, b"small-2"])

        async def discarded() -> list[dict[str, Any]]:
            return await h.invocations(urn, status="DISCARD")

        drop = (await wait_for(discarded, "the DISCARD record"))[0]
        assert drop["trigger_id"] == trigger_id and drop["error_code"] == 4413
        assert drop["source"]["size"] == len(big) and drop["source"]["message_id"] == "m1"
        assert str(len(big)) in drop["error_message"] and "m1" in drop["error_message"]
        assert "a FunctionGraph event is at most 6 MB" in drop["error_message"]

        async def small_ones() -> bool:
            return sorted(batch_messages(out)) == ["small-0", "small-2"]

        await wait_for(small_ones, "the small messages")
        await wait_drained(queue)
        audit = [a for a in await h.service.store.audit_log(200) if a["action"] == "rabbitmqMessageDropped"]
        assert len(audit) == 1 and audit[0]["resource"] == trigger_id
        assert audit[0]["detail"]["size"] == len(big) and audit[0]["detail"]["request_id"] == drop["request_id"]
        s = await h.trigger_state(urn, CODE, trigger_id)
        assert s["dropped"] == 1 and s["finished"].get("DISCARD") == 1


async def test_connection_closed_by_the_broker_mid_stream_loses_nothing(tmp_path: Path) -> None:
    """Ten messages are delivered and unacked (their function is blocked) when the broker closes the
    trigger's connection, while a publisher keeps publishing. The trigger reconnects; the ten come back
    (redelivered); everything published meanwhile arrives; at the end nothing is unacked."""
    async with broker() as mq, running(make_settings(tmp_path / "data")) as h:
        exchange = await mq.exchange()
        urn, out = await recorder(h, tmp_path, "flaky")
        trigger_id, queue = await queue_trigger(h, mq, urn, exchange, batch_size=5, batch_window_ms=20)

        before = [f"before-{i}" for i in range(10)]
        await mq.publish(exchange, [m.encode() for m in before])

        async def before_done() -> bool:
            return (await h.trigger_state(urn, CODE, trigger_id)).get("acked") == len(before)

        await wait_for(before_done, "the first messages acked")
        blocked = [f"BLOCK-{i}" for i in range(10)]
        await mq.publish(exchange, [m.encode() for m in blocked])

        async def held() -> bool:
            return (await h.trigger_state(urn, CODE, trigger_id)).get("in_flight") == len(blocked)

        await wait_for(held, "the blocked messages delivered and unacked")
        assert await queue_counts(queue) == (0, len(blocked))

        during = [f"during-{i}" for i in range(60)]
        publisher = asyncio.create_task(mq.publish(exchange, [m.encode() for m in during], rate=60))
        await asyncio.sleep(0.3)
        assert await close_connections(trigger_id) == 1

        async def reconnected() -> dict[str, Any] | None:
            s = await h.trigger_state(urn, CODE, trigger_id)
            return s if s.get("connects", 0) >= 2 and s.get("connected") else None

        s = await wait_for(reconnected, "the trigger to reconnect")
        assert "connection lost" in (s["last_error"] or "") and "CONNECTION_FORCED" in s["last_error"]
        await publisher
        (tmp_path / "flaky.gate").touch()  # the blocked first attempts finish; their completions are stale

        async def everything() -> bool:
            got = Counter(batch_messages(out))
            return all(got[m] >= 1 for m in before + during) and all(got[m] >= 2 for m in blocked)

        await wait_for(everything, "every message, the blocked ones twice")
        await wait_drained(queue)
        got = Counter(batch_messages(out))
        assert set(got) == set(before + blocked + during)
        assert all(got[m] == 1 for m in before)  # acked before the loss: never redelivered
        s = await h.trigger_state(urn, CODE, trigger_id)
        assert s["redelivered"] >= len(blocked) and s["stale_completions"] >= len(blocked)
        assert s["in_flight"] == 0 and s["connected"] is True


async def test_queue_deleted_behind_the_triggers_back_is_declared_again(tmp_path: Path) -> None:
    async with broker() as mq, running(make_settings(tmp_path / "data")) as h:
        exchange = await mq.exchange()
        urn, out = await recorder(h, tmp_path, "again")
        trigger_id, queue = await queue_trigger(h, mq, urn, exchange, batch_window_ms=0)
        await rabbitmqctl("delete_queue", queue)  # the broker cancels the trigger's consumer

        async def redeclared() -> bool:
            s = await h.trigger_state(urn, CODE, trigger_id)
            return s.get("connects", 0) >= 2 and bool(s.get("connected")) and await queue_counts(queue) is not None

        await wait_for(redeclared, "the trigger to declare and bind its queue again")
        assert "cancelled the consumer" in (await h.trigger_state(urn, CODE, trigger_id))["last_error"]
        await mq.publish(exchange, [b"after-0", b"after-1"])

        async def arrived() -> bool:
            return sorted(batch_messages(out)) == ["after-0", "after-1"]

        await wait_for(arrived, "the messages published after the queue came back")
        await wait_drained(queue)


async def test_sigkilled_service_loses_nothing_after_restart(tmp_path: Path) -> None:
    out = tmp_path / "killed.jsonl"
    first = [f"SLOW-{i}" for i in range(300)]
    second = [f"late-{i}" for i in range(100)]
    with ServiceProcess(tmp_path / "data", tmp_path / "service.log", TRIGGERBUS_RETRY_BASE_S="0.1") as service:
        async with broker() as mq:
            exchange = await mq.exchange()
            await service.wait_healthy()
            async with service.harness() as h:
                user_data = {"out": str(out), "gate": "-"}
                urn = await h.create_function("killed", BATCH_RECORDER, user_data=user_data, timeout=60)
                _, queue = await queue_trigger(h, mq, urn, exchange, batch_size=5, batch_window_ms=20)
            await mq.publish(exchange, [m.encode() for m in first])

            async def some_done() -> bool:
                return len(batch_messages(out)) >= 50

            await wait_for(some_done, "the first batches")
            service.kill()
            done_before = len(set(batch_messages(out)))
            assert done_before < len(first), "the kill came too late to interrupt anything"
            await mq.publish(exchange, [m.encode() for m in second])  # while no service runs: kept in the queue
            counts = await queue_counts(queue)
            assert counts is not None and counts[1] == 0  # the dead consumer's deliveries are back in the queue
            assert counts[0] >= len(first) + len(second) - done_before

            await service.start_healthy()

            async def everything() -> bool:
                return set(first + second) <= set(batch_messages(out))

            try:
                await wait_for(everything, "every message after the restart", timeout=90)
            except AssertionError:
                print(service.log_tail())
                raise
            await wait_drained(queue)
            got = Counter(batch_messages(out))
            assert set(got) == set(first + second)
            assert all(got[m] == 1 for m in second)  # published after the kill: delivered once
            print(json.dumps({"done_before_kill": done_before, "duplicates": sum(got.values()) - len(got)}))
            assert service.terminate(timeout=30) == 0


async def test_disable_keeps_the_queue_and_delete_removes_it(tmp_path: Path) -> None:
    async with broker() as mq, running(make_settings(tmp_path / "data")) as h:
        exchange = await mq.exchange()
        urn, out = await recorder(h, tmp_path, "life")
        trigger_id, queue = await queue_trigger(h, mq, urn, exchange, batch_window_ms=0)
        await mq.publish(exchange, [b"a0", b"a1"])

        async def first_done() -> bool:
            return sorted(batch_messages(out)) == ["a0", "a1"]

        await wait_for(first_done, "the first messages")
        await h.set_trigger_status(urn, CODE, trigger_id, "DISABLED")
        assert "state" not in await h.get_trigger(urn, CODE, trigger_id)  # not consuming any more
        await mq.publish(exchange, [b"b0", b"b1", b"b2"])  # kept by the queue meanwhile
        assert await queue_counts(queue) == (3, 0)
        cp = await h.get_checkpoint(urn, CODE, trigger_id)
        assert cp["exists"] is True and cp["messages_ready"] == 3 and cp["consumers"] == 0
        assert sorted(batch_messages(out)) == ["a0", "a1"]

        await h.set_trigger_status(urn, CODE, trigger_id, "ACTIVE")

        async def rest_done() -> bool:
            return sorted(batch_messages(out)) == ["a0", "a1", "b0", "b1", "b2"]

        await wait_for(rest_done, "the messages published while disabled")
        await wait_drained(queue)

        # deleting an active trigger deletes its queue, and whatever it held
        await h.set_trigger_status(urn, CODE, trigger_id, "DISABLED")
        await mq.publish(exchange, [b"c0"])
        await h.set_trigger_status(urn, CODE, trigger_id, "ACTIVE")
        await wait_drained(queue)
        await h.set_trigger_status(urn, CODE, trigger_id, "DISABLED")
        await mq.publish(exchange, [b"lost-0", b"lost-1"])
        async with h.http.delete(h.fgs(f"/triggers/{urn}/RABBITMQ/{trigger_id}")) as resp:
            assert resp.status == 204

        async def queue_gone() -> bool:
            return await queue_counts(queue) is None

        await wait_for(queue_gone, "the deleted trigger's queue to be deleted")
        audit = [a for a in await h.service.store.audit_log(200) if a["action"] == "rabbitmqQueueDeleted"]
        assert len(audit) == 1 and audit[0]["resource"] == trigger_id
        assert audit[0]["detail"]["queue"] == queue and audit[0]["detail"]["messages_dropped"] == 2

        # an active trigger deleted straight away
        status, trigger = await h.create_trigger(urn, CODE, rabbit_data(exchange, batch_window_ms=0))
        assert status == 201, trigger
        second_queue = queue_name(trigger["trigger_id"])
        mq.queues.append(second_queue)
        assert await queue_counts(second_queue) == (0, 0)
        async with h.http.delete(h.fgs(f"/triggers/{urn}/RABBITMQ/{trigger['trigger_id']}")) as resp:
            assert resp.status == 204

        async def second_gone() -> bool:
            return await queue_counts(second_queue) is None

        await wait_for(second_gone, "the second queue to be deleted")


async def test_a_disabled_trigger_deleted_after_a_restart_deletes_its_queue(tmp_path: Path) -> None:
    """A fresh process never saw the trigger active: the delete itself must remove the queue."""
    async with broker() as mq:
        exchange = await mq.exchange()
        async with running(make_settings(tmp_path / "data")) as h:
            urn, _ = await recorder(h, tmp_path, "gone")
            trigger_id, queue = await queue_trigger(h, mq, urn, exchange, batch_window_ms=0)
            await h.set_trigger_status(urn, CODE, trigger_id, "DISABLED")
        await mq.publish(exchange, [b"left-0"])
        assert await queue_counts(queue) == (1, 0)
        async with running(make_settings(tmp_path / "data")) as h:
            async with h.http.delete(h.fgs(f"/triggers/{urn}/RABBITMQ/{trigger_id}")) as resp:
                assert resp.status == 204
            assert await queue_counts(queue) is None  # gone before the DELETE answered
            audit = [a for a in await h.service.store.audit_log(200) if a["action"] == "rabbitmqQueueDeleted"]
            assert [(a["resource"], a["detail"]["messages_dropped"]) for a in audit] == [(trigger_id, 1)]


async def broker_listening() -> bool:
    host, port = BROKER.split(":")
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except OSError:
        return False
    writer.close()
    return True


async def test_broker_restart_mid_stream_loses_nothing(tmp_path: Path) -> None:
    """The broker itself stops (``rabbitmqctl stop_app``) while the trigger consumes and
    messages sit in its durable queue, then starts again: the trigger reconnects and every
    persistent message published before and after the restart reaches the function."""
    async with broker() as mq:
        exchange = await mq.exchange()  # durable: survives the restart
        mq.exchanges.remove(exchange)  # deleted at the end, by a connection made after the restart
    queue = ""
    try:
        async with running(make_settings(tmp_path / "data")) as h:
            urn, out = await recorder(h, tmp_path, "restart")
            status, trigger = await h.create_trigger(urn, CODE, rabbit_data(exchange, batch_size=5, batch_window_ms=20))
            assert status == 201, trigger
            trigger_id = trigger["trigger_id"]
            queue = queue_name(trigger_id)
            before = [f"SLOW-before-{i}" for i in range(100)]  # 50 ms each: many still queued at the stop
            async with broker() as mq:
                await mq.publish(exchange, [m.encode() for m in before])

            async def some_done() -> bool:
                return len(batch_messages(out)) >= 10

            await wait_for(some_done, "the first messages")
            await rabbitmqctl("stop_app")
            try:
                assert not await broker_listening()
                await asyncio.sleep(1.0)  # the trigger notices and starts backing off
            finally:
                await rabbitmqctl("start_app")
            await wait_for(broker_listening, "the broker to listen again")

            async def reconnected() -> bool:
                s = await h.trigger_state(urn, CODE, trigger_id)
                return bool(s.get("connected")) and s.get("connects", 0) >= 2

            await wait_for(reconnected, "the trigger to reconnect")
            after = [f"after-{i}" for i in range(20)]
            async with broker() as mq:
                await mq.publish(exchange, [m.encode() for m in after])

            async def everything() -> bool:
                return set(batch_messages(out)) >= set(before + after)

            await wait_for(everything, "every message published before and after the restart")
            await wait_drained(queue)
            got = Counter(batch_messages(out))
            assert set(got) == set(before + after)
            print(f"broker restart: {sum(got.values()) - len(got)} messages delivered twice")
    finally:
        async with broker() as mq:
            mq.exchanges.append(exchange)
            if queue:
                mq.queues.append(queue)
