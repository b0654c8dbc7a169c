"""Instrument a model server: what rollguard measures, sent without ever slowing a request.

``Monitor`` (asyncio) and ``SyncMonitor`` (a thread of its own, for sync servers) take the
facts of each request — ``record_prediction``, ``record_latency``, or ``record`` for both,
``record_outcome`` when the ground truth arrives, ``record_business`` and ``health`` — and send
them as rollguard's events (``schemas/``) to the telemetry topics. A record call only appends to
a bounded queue and returns: the events are built, validated and sent by a background task. It
never blocks, never raises into the request path and never grows without bound: when the
queue is full, the broker is away or an event is invalid, the record is dropped and counted
(``stats``; an invalid one is said once per reason in the log).

The model version is the one given, or else the live one, followed on the deployments topic
(signed manifests, checked against the trusted keys when this process has them). ``sample``
keeps a share of requests, chosen by request id, so that a request's prediction, latency and
outcome are kept or dropped together. ``rollguard.sdk.asgi`` has a middleware and a
decorator; docs/instrumenting.md the ten lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from pydantic import ValidationError

from rollguard import topics
from rollguard.bus import Item, make_consumer, make_producer, producer_batches
from rollguard.discovery import with_running_broker
from rollguard.errors import ConfigError
from rollguard.events import (
    BusinessMetricEvent,
    HealthCheckEvent,
    LatencyEvent,
    ModelEvent,
    OutcomeEvent,
    PredictionEvent,
    SystemManifest,
    decode,
    new_id,
    utcnow,
)
from rollguard.logs import get_logger
from rollguard.outage import OUTAGES
from rollguard.settings import RollguardSettings
from rollguard.signing import Trust, trust_of

log = get_logger("rollguard.sdk")

#: Records waiting to be sent, at most; past it a record is dropped (``dropped_queue_full``).
MAX_QUEUE = 10_000
#: Events sent per turn of the background task before it lets the loop run others.
BATCH = 2_000
#: How long one send may wait for room in the producer (or for the loop, busy serving) before
#: the record is dropped; the background task's wait, never a request's.
SEND_WAIT_S = 1.0

# What a queued record is: the event class and its fields (built off the request path).
Record = tuple[type[ModelEvent], dict[str, Any]]


class Monitor:
    """rollguard's telemetry for one model, from an asyncio server (``async with Monitor(...)``
    or ``await start()`` / ``await stop()``)."""

    def __init__(
        self,
        model_id: str,
        *,
        settings: RollguardSettings | None = None,
        model_version: str | None = None,
        system_version: str | None = None,
        sample: float = 1.0,
        max_queue: int = MAX_QUEUE,
        follow_live: bool = True,
    ) -> None:
        """``model_version`` None: the live version, read off the deployments topic (unless
        ``follow_live`` is off: every record then names its version, or ``emit`` is used)."""
        if not 0.0 <= sample <= 1.0:
            raise ConfigError(f"sample must be between 0 and 1 (got {sample})")
        self.model_id = model_id
        # Beside `rollguard up` with no bootstrap set: its broker, as every command finds it.
        self.settings = with_running_broker(settings or RollguardSettings())
        self.model_version = model_version
        self.system_version = system_version
        self.sample = sample
        self._follow_live_on = follow_live
        self._keep_below = int(sample * 0xFFFFFFFF)
        self._queue: deque[Record] = deque()
        self._max_queue = max_queue
        #: queued, sent, sampled_out and dropped_<why>: what became of every record.
        self.stats: Counter[str] = Counter()
        self._counting = threading.Lock()
        self._said: set[str] = set()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._producer: AIOKafkaProducer | None = None
        sent = (PredictionEvent, LatencyEvent, OutcomeEvent, BusinessMetricEvent, HealthCheckEvent)
        self._topics: dict[type[ModelEvent], str] = {
            t.event: self.settings.topic(t.name) for t in topics.ALL if t.event in sent
        }
        #: Set once the live version is known (given, or read off the deployments topic).
        self.live = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start sending in the background. A broker that is not there is no error: records
        are dropped (counted) until it is."""
        self._loop = asyncio.get_running_loop()
        self._tasks.append(asyncio.create_task(self._send_forever(), name="rollguard-sdk-send"))
        if self.model_version is None and self._follow_live_on:
            self._tasks.append(asyncio.create_task(self._follow_live(), name="rollguard-sdk-live"))
        else:
            self.live.set()

    async def stop(self, flush_s: float = 5.0) -> None:
        """Send what is queued (for at most ``flush_s``), then stop."""
        deadline = time.monotonic() + flush_s
        while self._queue and self._producer is not None and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._producer is not None:
            with contextlib.suppress(KafkaError, TimeoutError):
                await asyncio.wait_for(self._producer.stop(), flush_s)
            self._producer = None
        if self._queue:
            self._count("dropped_at_stop", len(self._queue))
            self._queue.clear()

    async def __aenter__(self) -> Monitor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """An ASGI lifespan: ``FastAPI(lifespan=monitor.lifespan)`` starts it with the server
        and flushes it at shutdown."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    # --- the request path: append and return --------------------------------------------------

    def record_prediction(
        self,
        request_id: str,
        prediction: float | str,
        *,
        features: dict[str, float | str | None] | None = None,
        score: float | None = None,
        model_version: str | None = None,
        ts: datetime | None = None,
    ) -> bool:
        """The prediction served for ``request_id``, with the inputs it was made from."""
        if not self._sampled(request_id):
            return False
        fields = {"request_id": request_id, "prediction": prediction, "features": features}
        if score is not None:
            fields["score"] = score
        return self._put(PredictionEvent, fields, model_version, ts)

    def record_latency(
        self,
        request_id: str,
        latency_ms: float,
        *,
        error: str | None = None,
        model_version: str | None = None,
        ts: datetime | None = None,
    ) -> bool:
        """How long ``request_id`` took; ``error`` names what failed, if it did."""
        if not self._sampled(request_id):
            return False
        fields = {
            "request_id": request_id,
            "latency_ms": latency_ms,
            "status": "ok" if error is None else "error",
            "error_kind": error,
        }
        return self._put(LatencyEvent, fields, model_version, ts)

    def record(
        self,
        request_id: str,
        latency_ms: float,
        prediction: float | str | None = None,
        *,
        features: dict[str, float | str | None] | None = None,
        error: str | None = None,
        model_version: str | None = None,
    ) -> bool:
        """One request: its latency and, unless it failed, its prediction."""
        ts = utcnow()
        kept = self.record_latency(
            request_id, latency_ms, error=error, model_version=model_version, ts=ts
        )
        if kept and error is None and prediction is not None:
            self.record_prediction(
                request_id, prediction, features=features, model_version=model_version, ts=ts
            )
        return kept

    def record_outcome(
        self, request_id: str, outcome: float | str, *, model_version: str | None = None
    ) -> bool:
        """The ground truth of ``request_id``, when it is known (hours later is fine)."""
        if not self._sampled(request_id):
            return False
        return self._put(
            OutcomeEvent, {"request_id": request_id, "outcome": outcome}, model_version, None
        )

    def record_business(
        self,
        metric: str,
        value: float | None = None,
        *,
        numerator: float | None = None,
        denominator: float | None = None,
        model_version: str | None = None,
    ) -> bool:
        """A business metric of the model (``ctr``: a click per impression as numerator 1 or
        0 over denominator 1, or a rate as ``value``)."""
        fields = {
            "metric": metric,
            "value": value,
            "numerator": numerator,
            "denominator": denominator,
        }
        return self._put(BusinessMetricEvent, fields, model_version, None)

    def health(self, ok: bool, detail: str = "", *, model_version: str | None = None) -> bool:
        """A health check of the serving model version."""
        return self._put(HealthCheckEvent, {"ok": ok, "detail": detail}, model_version, None)

    def emit(self, event: ModelEvent) -> bool:
        """Send an event made elsewhere (the reference router's), on the same path: one of the
        telemetry events (predictions, latency, outcomes, business metrics, health)."""
        if type(event) not in self._topics:
            self._count("dropped_invalid")
            self._say(f"emit.{type(event).__name__}", f"{type(event).__name__} is no telemetry")
            return False
        if not self._room():
            return False
        self._queue.append((type(event), {"_event": event}))
        self._count("queued")
        self._nudge()
        return True

    def dropped(self) -> int:
        """Records dropped so far, for every reason."""
        with self._counting:
            return sum(n for why, n in self.stats.items() if why.startswith("dropped_"))

    def _count(self, what: str, n: int = 1) -> None:
        # A lock: SyncMonitor's callers count from their own threads, the sender from its own.
        with self._counting:
            self.stats[what] += n

    # --- internals ---------------------------------------------------------------------------

    def _sampled(self, request_id: object) -> bool:
        if self.sample >= 1.0 or zlib.crc32(str(request_id).encode()) <= self._keep_below:
            return True
        self._count("sampled_out")
        return False

    def _room(self) -> bool:
        if OUTAGES.down_since is not None:  # said by rollguard.outage where it is watched
            self._count("dropped_broker_away")
            return False
        if len(self._queue) >= self._max_queue:
            self._count("dropped_queue_full")
            return False
        return True

    def _put(
        self,
        cls: type[ModelEvent],
        fields: dict[str, Any],
        model_version: str | None,
        ts: datetime | None,
    ) -> bool:
        if not self._room():
            return False
        # the version serving when the request was made, not when the event is sent (a
        # backlog around a rollback would book the bad version's requests to the restored one)
        if model_version is None:
            fields["model_version"], fields["system_version"] = (
                self.model_version,
                self.system_version,
            )
        else:
            fields["model_version"] = model_version
        fields["ts"] = ts or utcnow()
        if "request_id" in fields:  # an int or a UUID is an id too
            fields["request_id"] = str(fields["request_id"])
        self._queue.append((cls, fields))
        self._count("queued")
        self._nudge()
        return True

    def _nudge(self) -> None:
        loop = self._loop
        if loop is None or self._wake.is_set():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:  # another thread (SyncMonitor): wake the loop that sends
            with contextlib.suppress(RuntimeError):  # a loop closed meanwhile
                loop.call_soon_threadsafe(self._wake.set)

    def _build(self, cls: type[ModelEvent], fields: dict[str, Any]) -> ModelEvent | None:
        event = fields.get("_event")
        if isinstance(event, ModelEvent):
            return event
        version = fields.pop("model_version")
        if version is None:
            self._count("dropped_no_version")
            self._say("no_live_version", "no version given and none live yet")
            return None
        try:
            return cls(
                model_id=self.model_id,
                model_version=version,
                **{k: v for k, v in fields.items() if v is not None},
            )
        except ValidationError as exc:
            self._count("dropped_invalid")
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            # said once per event type and kind of error: a feature name is the caller's,
            # and a line (or a remembered key) per distinct name would grow without bound
            self._say(f"{cls.__name__}:{first['type']}", f"{where}: {first['msg']}")
            return None

    def _say(self, key: str, reason: str) -> None:
        # once per reason: a bad field is not a log line per request
        if key not in self._said and len(self._said) < 1_000:
            self._said.add(key)
            self._count("warnings")
            log.warning("telemetry_dropped", model_id=self.model_id, reason=reason)

    async def _connected(self) -> AIOKafkaProducer:
        backoff = 0.2
        while self._producer is None:
            if self.settings.kafka_bootstrap is None:  # no broker set: a `rollguard up`, once
                self.settings = with_running_broker(self.settings)  # one runs
            if self.settings.kafka_bootstrap is None:
                self._say("no_broker", "no ROLLGUARD_KAFKA_BOOTSTRAP and no rollguard up")
            else:
                producer = make_producer(self.settings, control=False)
                try:
                    await producer.start()
                    # Never a first send to a topic not there: the broker would create it with
                    # its own partition count (and `rollguard topics create` then refuses it).
                    cluster = await producer.client.fetch_all_metadata()
                    missing = sorted(set(self._topics.values()) - set(cluster.topics()))
                    if missing:
                        self._say("no_topics", f"topics not created yet: {', '.join(missing)}")
                        raise KafkaConnectionError("topics missing")
                    for topic in self._topics.values():  # metadata now, not on the first send
                        await producer.partitions_for(topic)
                    self._producer = producer
                    continue
                except KafkaError:
                    await producer.stop()
            self._drop_queued("dropped_broker_away")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
        return self._producer

    def _drop_queued(self, why: str) -> None:
        self._count(why, len(self._queue))
        self._queue.clear()

    async def _send_forever(self) -> None:
        """``_sending``, started again after anything it did not expect (said once per kind):
        telemetry that stops for good without a word is what the SDK must never do."""
        while True:
            try:
                await self._sending()
            except Exception as exc:  # said, counted, and started again
                self._say(f"sender:{type(exc).__name__}", f"the sender failed: {exc!r}"[:300])
                self._drop_queued("dropped_sender_failed")
                await asyncio.sleep(1.0)

    async def _sending(self) -> None:
        producer = await self._connected()
        # Record batches built here, per partition: producer.send costs a future, a
        # partitioner call and an accumulator lookup per event (rollguard.bus).
        send_many = producer_batches(producer)
        while True:
            if not self._queue:
                self._wake.clear()
                if not self._queue:  # a record put from another thread before the clear
                    await self._wake.wait()
            by_topic: dict[str, list[Item]] = {}
            for _ in range(min(BATCH, len(self._queue))):
                cls, fields = self._queue.popleft()
                event = self._build(cls, fields)
                if event is not None:
                    by_topic.setdefault(self._topics[cls], []).append((event.encode(), event.key))
            for topic, items in by_topic.items():
                try:
                    async with asyncio.timeout(SEND_WAIT_S):
                        batches = await send_many(topic, items)
                except TimeoutError:  # no room in the producer: the broker is slow or away
                    self._count("dropped_no_room", len(items))
                    continue
                except KafkaError as exc:
                    self._count("dropped_broker_error", len(items))
                    self._say(type(exc).__name__, f"the broker: {exc!r}"[:300])
                    continue
                for sent, held in batches:
                    done = functools.partial(self._delivered, n=len(held))
                    asyncio.ensure_future(sent).add_done_callback(done)
            await asyncio.sleep(0)

    def _delivered(self, sent: asyncio.Future[Any], n: int = 1) -> None:
        if sent.cancelled():
            self._count("dropped_at_stop", n)
        elif (exc := sent.exception()) is not None:
            self._count("dropped_broker_error", n)
            self._say(type(exc).__name__, f"the broker: {exc!r}"[:300])
        else:
            self._count("sent", n)

    async def _follow_live(self) -> None:
        """The model's live version, as the deployments topic says (signed manifests: checked
        when this process has trusted keys, ROLLGUARD_TRUSTED_KEYS_DIR)."""
        try:
            trust: Trust | None = trust_of(self.settings)
        except ConfigError:
            trust = None
        newest: datetime | None = None
        while True:
            if self.settings.kafka_bootstrap is None:  # found by the sender, when it is
                await asyncio.sleep(1.0)
                continue
            consumer = make_consumer(self.settings, group_id=None, control=True)
            try:
                await consumer.start()
                topic = self.settings.topic(topics.DEPLOYMENTS.name)
                await consumer.topics()
                parts = consumer.partitions_for_topic(topic) or set()
                if not parts:
                    self._say("no_deployments", f"no {topic} topic yet: no live version known")
                    await asyncio.sleep(2.0)
                    continue
                consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
                await consumer.seek_to_beginning()
                while True:
                    for records in (await consumer.getmany(timeout_ms=1000)).values():
                        for record in records:
                            newest = self._follow(record.value, trust, newest)
            except Exception as exc:  # the topic not there yet, the broker away
                self._say(
                    f"live:{type(exc).__name__}", f"following the live version: {exc!r}"[:300]
                )
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    def _follow(self, value: bytes | None, trust: Trust | None, newest: datetime | None) -> Any:
        try:
            manifest = decode(SystemManifest, value)
        except (ValidationError, ValueError):
            return newest
        if manifest.model_id != self.model_id or not manifest.serving:  # live or known good
            return newest
        if trust is not None and not trust.check(manifest).ok:
            self._count("manifests_untrusted")
            return newest
        if newest is not None and manifest.ts < newest:
            return newest  # an older fact, replayed: not the live one
        if (manifest.model_version, manifest.system_version) != (
            self.model_version,
            self.system_version,
        ):
            log.info(
                "live_version",
                model_id=self.model_id,
                model_version=manifest.model_version,
                system_version=manifest.system_version,
            )
        self.model_version, self.system_version = manifest.model_version, manifest.system_version
        self.live.set()
        return manifest.ts


class SyncMonitor:
    """``Monitor`` for a sync server (Flask, a worker loop): it runs on a thread of its own;
    the record calls are the same and as cheap. ``with SyncMonitor(...) as monitor:``."""

    def __init__(self, model_id: str, **options: Any) -> None:
        self._options = options
        self._model_id = model_id
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.monitor: Monitor | None = None
        #: What was recorded before start() or after close(): dropped, counted here.
        self._early: Counter[str] = Counter()

    def start(self) -> SyncMonitor:
        self._thread.start()

        async def started() -> Monitor:
            monitor = Monitor(self._model_id, **self._options)
            await monitor.start()
            return monitor

        self.monitor = asyncio.run_coroutine_threadsafe(started(), self._loop).result(30)
        return self

    def close(self, flush_s: float = 5.0) -> None:
        monitor, self.monitor = self.monitor, None  # records from now on: counted, dropped
        if monitor is not None:
            stopping = asyncio.run_coroutine_threadsafe(monitor.stop(flush_s), self._loop)
            stopping.result(flush_s + 10)
            self._early.update(monitor.stats)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> SyncMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    #: What the request path calls: before start() (or after close()) a no-op that counts.
    _RECORDS = frozenset(
        {
            "record_prediction",
            "record_latency",
            "record",
            "record_outcome",
            "record_business",
            "health",
            "emit",
        }
    )

    def __getattr__(self, name: str) -> Any:
        # record_*, health, emit, stats, live, dropped: the monitor's own, called from any
        # thread (the record calls only append to its queue)
        monitor = self.monitor
        if monitor is None:
            if name in self._RECORDS:
                return self._not_started
            if name == "stats":
                return self._early
            if name == "dropped":
                return lambda: sum(self._early.values())
            raise AttributeError(name)
        return getattr(monitor, name)

    def _not_started(self, *args: Any, **kwargs: Any) -> bool:
        self._early["dropped_not_started"] += 1
        return False


def request_id() -> str:
    """A new request id, for servers that have none of their own."""
    return new_id()
