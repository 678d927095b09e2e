"""Wires the embedded service: one process, one data directory, no external servers.

connectors ──► bus (SQLite log) ──► batcher ──► bus ──► async invoker ──► runtimes
                                                          │
                               records (SQLite) ◄─────────┤
                               destinations (bus) ◄───────┘
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import time
from pathlib import Path
from typing import IO, Any

from bus.aio import stop_tasks
from bus.base import Bus, Message, Outgoing
from bus.kafka import KafkaBus
from bus.sqlite import SQLiteBus
from bus.sqlitedb import Database
from connectors.apig import ApigConnector
from connectors.base import ConnectorContext
from connectors.cts import CTSConnector
from connectors.dis import DISConnector
from connectors.smn import SMNConnector
from connectors.timer import TimerConnector
from invoker import tracing
from invoker.async_invoker import AsyncInvoker
from invoker.batching import Batcher
from invoker.completion import Completion, CompletionHub
from invoker.concurrency import ConcurrencyLimiter
from invoker.destinations import DestinationSink, DestinationWorker
from invoker.dis_sink import DISSink
from invoker.dispatcher import Dispatcher
from invoker.envelope import (
    COMPLETIONS_TOPIC,
    DEADLETTER_TOPIC,
    DESTINATIONS_TOPIC,
    INVOCATIONS_TOPIC,
    STREAM_TOPIC,
)
from invoker.ingest import Ingest
from invoker.obs_sink import OBSSink
from invoker.retry import RetryPolicy
from invoker.retry_budget import RetryBudget
from invoker.runtime.http_runtime import HttpRuntime
from invoker.runtime.python_runtime import PythonRuntime
from invoker.runtime.target_guard import TargetGuard
from invoker.smn_sink import SMNSink
from schemas.async_config import DestinationKind
from triggerbus.config import Settings
from triggerbus.invocations import InvocationService
from triggerbus.metrics import ActiveTrigger, Metrics, Sampler
from triggerbus.plugins import CONNECTOR_CLASSES
from triggerbus.registry import FunctionRegistry
from triggerbus.secrets import SecretBox
from triggerbus.store.base import Store
from triggerbus.store.sqlite import SQLiteStore
from triggerbus.triggers import TriggerManager

log = logging.getLogger(__name__)


class DataDirLocked(RuntimeError):
    pass


def lock_data_dir(data_dir: Path) -> IO[str]:
    """One service process per data directory: the embedded bus assigns offsets in memory."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "LOCK", "a+")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirLocked(
            f"{data_dir} is in use by another triggerbus process; give this one its own --data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started_at = 0.0
        self._lock: IO[str] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._reconciler: asyncio.Task[None] | None = None
        self._tracing: str | None = None  # the span exporter this service configured

    async def start(self) -> None:
        s = self.settings
        s.check()
        s.data_dir = s.data_dir.resolve()  # worker processes run elsewhere: code paths must be absolute
        self._tracing = tracing.configure_tracing()  # spans only with an exporter configured
        if not s.shared_store:
            self._lock = lock_data_dir(s.data_dir)  # the embedded bus/store belong to one process
        else:
            s.data_dir.mkdir(parents=True, exist_ok=True)
        self.token = s.load_token()
        self.secrets = SecretBox.load(s.data_dir)
        self.db: Database | None = None
        if not (s.kafka_bus and s.shared_store):
            self.db = Database(s.data_dir / "triggerbus.db", synchronous=s.sqlite_synchronous)
            await self.db.open()
        self.bus = self._make_bus()
        await self.bus.start()
        self.store = self._make_store()
        await self.store.start()

        sinks: dict[DestinationKind, DestinationSink] = {}
        if s.obs_endpoint:
            sinks[DestinationKind.OBS] = OBSSink(s.obs_endpoint, s.obs_access_key, s.obs_secret_key)
        smn_sink = SMNSink()  # publishes through the SMN connector, attached below
        sinks[DestinationKind.SMN] = smn_sink
        dis_sink = DISSink() if s.streams_redis else None  # puts through the DIS connector, attached below
        if dis_sink is not None:
            sinks[DestinationKind.DIS] = dis_sink
        kinds = {DestinationKind.FUNCTIONGRAPH, *sinks}
        self.registry = FunctionRegistry(
            self.store,
            self.secrets,
            s.data_dir / "code",
            s.region,
            destination_kinds=kinds,
            forbidden_code_urls=self._own_urls(),
            target_guard=(guard := TargetGuard(lambda: s.port, allow_loopback=s.http_allow_loopback)),
            cache_ttl_s=2.0 if s.shared_store else None,
        )
        self.limiter = ConcurrencyLimiter()
        work_root = s.data_dir / "workers"
        shutil.rmtree(work_root, ignore_errors=True)  # left over from a crash; no worker of ours is alive
        work_root.mkdir(parents=True)
        self.python_runtime = PythonRuntime(
            max_workers=s.max_workers,
            idle_ttl_s=s.worker_idle_ttl_s,
            work_root=work_root,
            log_limit_bytes=s.function_log_bytes,
        )
        self.metrics = Metrics(window_s=s.metrics_window_s)
        observer = self.metrics
        self.dispatcher = Dispatcher(
            {"python": self.python_runtime, "http": HttpRuntime(guard=guard)}, observer=observer
        )
        await self.dispatcher.start()
        self.completion = CompletionHub(relay=self._relay_completion if s.kafka_bus else None)
        retry = RetryPolicy(base_s=s.retry_base_s, cap_s=s.retry_cap_s, retry_after_cap_s=s.retry_after_max_s)
        self.invocations = InvocationService(
            self.bus, self.store, self.registry, self.dispatcher, self.limiter, observer=observer
        )
        self.invoker = AsyncInvoker(
            self.bus,
            self.store,
            self.registry,
            self.dispatcher,
            self.limiter,
            completion=self.completion,
            observer=observer,
            retry=retry,
            retry_budget=RetryBudget(
                ratio=s.retry_budget_ratio, min_retries=s.retry_budget_min, window_s=s.retry_budget_window_s
            ),
            max_in_flight=s.invoker_max_in_flight,
        )
        self.batcher = Batcher(self.bus, self.store, completion=self.completion, observer=observer)
        self.destinations = DestinationWorker(self.bus, self.store, sinks, retry=retry, observer=observer)

        ctx = ConnectorContext(
            bus=self.bus,
            state=self.store,
            invocations=self.invocations,
            completion=self.completion,
            ingest=Ingest(self.bus, self.store, self.completion, observer=observer),
            region=s.region,
            default_tz=s.timezone,
            node_id=s.node_id,
            public_url=s.base_url(),
            auth_token=self.token,
            options=self._options(),
            observer=observer,
        )
        self.connectors = [cls(ctx) for cls in CONNECTOR_CLASSES]
        smn_sink.attach(self.smn)
        if dis_sink is not None:
            dis_sink.attach(self.dis)
        self.triggers = TriggerManager(self.store, self.secrets, self.registry)
        for connector in self.connectors:
            self.triggers.register(connector)
            await connector.start()

        await self.invoker.start()
        await self.batcher.start()
        await self.destinations.start()
        if isinstance(self.bus, KafkaBus):
            self.bus.listen_broadcast(COMPLETIONS_TOPIC, self._receive_completion)
        await self.bus.ready()  # every component subscribed: start consuming
        active = await self.triggers.activate_all()
        self._housekeeping = asyncio.create_task(self._housekeep(), name="housekeeping")
        if s.shared_store:  # triggers changed through another process show up here too
            self._reconciler = asyncio.create_task(self._reconcile_triggers(), name="trigger-reconciler")
        self.sampler = Sampler(
            self.metrics, self.store.queue_depths, self._active_triggers, interval_s=s.metrics_sample_s
        )
        self.sampler.start()
        self.started_at = time.time()
        log.info("service started: %d active triggers, data dir %s", active, s.data_dir)

    def _make_bus(self) -> Bus:
        s = self.settings
        if s.kafka_bus:
            return KafkaBus(
                s.bus_url.removeprefix("kafka://"),
                app_id=s.kafka_app_id,
                partitions=s.kafka_partitions,
                topics=(INVOCATIONS_TOPIC, STREAM_TOPIC, DESTINATIONS_TOPIC, DEADLETTER_TOPIC, COMPLETIONS_TOPIC),
                session_timeout_s=s.kafka_session_timeout_s,
                heartbeat_s=max(0.5, s.kafka_session_timeout_s / 5),
                fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
            )
        assert self.db is not None
        return SQLiteBus(self.db, partitions=s.bus_partitions)

    def _make_store(self) -> Store:
        s = self.settings
        if s.shared_store:
            from triggerbus.store.mongo import MongoStore

            return MongoStore(s.store_url, database=s.mongo_database, retention_s=s.records_retention_days * 86400)
        assert self.db is not None
        return SQLiteStore(self.db)

    async def _relay_completion(self, completion: Completion) -> None:
        await self.bus.publish(
            Outgoing(COMPLETIONS_TOPIC, completion.to_json(self.settings.node_id), key=completion.trigger_id)
        )

    def _receive_completion(self, message: Message) -> None:
        completion, origin = Completion.from_json(message.value)
        if origin != self.settings.node_id:  # ours were delivered locally already
            self.completion.receive(completion)

    async def _reconcile_triggers(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            try:
                await self.triggers.reconcile()
            except Exception:
                log.exception("reconciling triggers with the store failed")

    def _options(self) -> dict[str, Any]:
        s = self.settings
        return {
            "timer_lease_ttl_s": s.timer_lease_ttl_s,
            "timer_misfire_policy": s.timer_misfire_policy,
            "timer_catchup_window_s": s.timer_catchup_window_s,
            "kafka_instances": s.kafka_instances,
            "smn_mqtt_bridge": s.smn_mqtt_bridge,
            "cts_replay_interval_s": s.cts_replay_interval_s,
            "cts_replay_grace_s": s.cts_replay_grace_s,
            "rabbitmq_instances": s.rabbitmq_instances,
            "mongo_instances": s.mongo_instances,
            "shared_store": s.shared_store,  # several processes may run one trigger: take leases
            "mqtt_broker": s.mqtt_broker,
            "mqtt_lease_ttl_s": s.mqtt_lease_ttl_s,
            "streams_redis": s.streams_redis,
            "streams_prefix": s.streams_prefix,
            "streams_lease_ttl_s": s.streams_lease_ttl_s,
            "obs_endpoint": s.obs_endpoint,
            "obs_access_key": s.obs_access_key,
            "obs_secret_key": s.obs_secret_key,
            "obs_webhook_token": s.obs_webhook_token,
            "obs_sns_endpoint": s.obs_sns_endpoint,
            "obs_reconcile_interval_s": s.obs_reconcile_interval_s,
            "obs_reconcile_settle_s": s.obs_reconcile_settle_s,
            "obs_reconcile_lookback_s": s.obs_reconcile_lookback_s,
            "max_async_body": s.max_async_body,
            "max_sync_body": s.max_sync_body,
            # the same group timeouts for trigger consumers as for the Kafka bus
            "kafka_consumer": {
                "session_timeout_ms": int(s.kafka_session_timeout_s * 1000),
                "heartbeat_interval_ms": int(max(0.5, s.kafka_session_timeout_s / 5) * 1000),
                **({"fetch_max_wait_ms": s.kafka_fetch_max_wait_ms} if s.kafka_fetch_max_wait_ms else {}),
            },
        }

    @property
    def apig(self) -> ApigConnector:
        return next(c for c in self.connectors if isinstance(c, ApigConnector))

    @property
    def timer(self) -> TimerConnector:
        return next(c for c in self.connectors if isinstance(c, TimerConnector))

    @property
    def smn(self) -> SMNConnector:
        return next(c for c in self.connectors if isinstance(c, SMNConnector))

    @property
    def cts(self) -> CTSConnector:
        return next(c for c in self.connectors if isinstance(c, CTSConnector))

    @property
    def dis(self) -> DISConnector:
        return next(c for c in self.connectors if isinstance(c, DISConnector))

    def _own_urls(self) -> tuple[str, ...]:
        s = self.settings
        hosts = {s.host, "127.0.0.1", "localhost", "0.0.0.0", "[::1]"}
        return (*(f"{scheme}://{h}:{s.port}" for h in hosts for scheme in ("http", "https")), s.base_url())

    async def _housekeep(self) -> None:
        """Retention of records and timer fire marks."""
        while True:
            await asyncio.sleep(300)
            try:
                horizon = time.time() - self.settings.records_retention_days * 86400
                purged = await self.store.purge_records(horizon)
                while purged > 0:  # in slices, so writers are not held up
                    purged = await self.store.purge_records(horizon)
                await self.store.purge_timer_fires(horizon)
            except Exception:
                log.exception("housekeeping failed")

    async def _active_triggers(self) -> list[ActiveTrigger]:
        """The triggers to measure lag for: every ACTIVE one this service has a connector for."""
        return [
            (t.trigger_id, t.trigger_type, t.function_urn, connector)
            for t in self.triggers.running()
            if (connector := self.triggers.connectors.get(t.trigger_type)) is not None
        ]

    async def close(self) -> None:
        await stop_tasks(self._housekeeping, self._reconciler)
        if getattr(self, "sampler", None) is not None:
            await self.sampler.close()
        for closer in (
            *(c.close for c in self.connectors),
            self.invoker.close,
            self.batcher.close,
            self.destinations.close,
        ):
            try:
                await closer()
            except Exception:
                log.exception("error while stopping")
        await self.dispatcher.close()
        await self.bus.close()
        await self.store.close()
        if self.db is not None:
            await self.db.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self._tracing:
            await asyncio.to_thread(tracing.shutdown_tracing)  # flushes the last spans to the exporter
