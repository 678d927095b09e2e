"""One Kafka-bus consumer-group member in its own process, for the takeover tests.

Usage: python -m tests.support.kafka_member BOOTSTRAP APP_ID TOPIC OUT_FILE
Appends "partition offset value" for every message it acks.
"""

from __future__ import annotations

import asyncio
import os
import sys

from bus.kafka import KafkaBus


async def main() -> None:
    bootstrap, app_id, topic, out = sys.argv[1:5]
    bus = KafkaBus(
        bootstrap, app_id=app_id, partitions=4, topics=[topic], session_timeout_s=6, heartbeat_s=1, fetch_max_wait_ms=50
    )
    await bus.start()
    sub = bus.subscribe("g", [topic])
    await bus.ready()
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    print("ready", flush=True)
    while True:
        for message in await sub.fetch(100, 0.2):
            os.write(fd, f"{message.partition} {message.offset} {message.value.decode()}\n".encode())
            sub.ack(message)


if __name__ == "__main__":
    asyncio.run(main())
