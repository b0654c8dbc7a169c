"""Kafka plumbing in one place: clients, topic provisioning, dead letters.

Control producers use ``acks="all"`` explicitly (aiokafka's default is 1) and are idempotent
unless the broker refuses it (``start_control_producer`` asks; the embedded broker refuses). Consumers that cause effects never
auto-commit; they commit ``offset + 1`` after the effect is durable.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner, murmur2
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from rollguard import metrics, topics
from rollguard.errors import BrokerUnavailable, ConfigError
from rollguard.events import DeadLetter, DeadLetterReason, Event, Signed, utcnow
from rollguard.logs import get_logger
from rollguard.settings import RollguardSettings
from rollguard.signing import Role, Trust, TrustSource, Verdict

log = get_logger("rollguard.bus")


def client_options(settings: RollguardSettings) -> dict[str, Any]:
    """Connection options every aiokafka client gets: bootstrap, TLS and SASL."""
    if settings.kafka_bootstrap is None:
        raise ConfigError("ROLLGUARD_KAFKA_BOOTSTRAP is not set and no embedded broker is running")
    opts: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.security_protocol,
        "client_id": settings.client_id,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        try:
            opts["ssl_context"] = create_ssl_context(
                cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None,
                certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
                keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
                password=settings.ssl_password.get_secret_value()
                if settings.ssl_password
                else None,
            )
        except (OSError, ssl.SSLError) as exc:  # FileNotFoundError is an OSError
            raise ConfigError(
                "ROLLGUARD_SSL_CAFILE, ROLLGUARD_SSL_CERTFILE or ROLLGUARD_SSL_KEYFILE: "
                f"{getattr(exc, 'strerror', None) or exc}"
                + (f" ({exc.filename})" if getattr(exc, "filename", None) else "")
            ) from exc
    if settings.security_protocol.startswith("SASL"):
        if not (settings.sasl_mechanism and settings.sasl_username and settings.sasl_password):
            raise ConfigError(
                "ROLLGUARD_SECURITY_PROTOCOL is SASL_*: set ROLLGUARD_SASL_MECHANISM, "
                "ROLLGUARD_SASL_USERNAME and ROLLGUARD_SASL_PASSWORD"
            )
        opts["sasl_mechanism"] = settings.sasl_mechanism
        opts["sasl_plain_username"] = settings.sasl_username
        opts["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return opts


def make_producer(
    settings: RollguardSettings, *, control: bool, **overrides: Any
) -> AIOKafkaProducer:
    """A producer for control events (acks=all, idempotent where possible) or data events."""
    if control:
        return AIOKafkaProducer(
            **client_options(settings),
            acks="all",
            enable_idempotence=settings.enable_idempotence,
            linger_ms=0,
            **overrides,
        )
    return AIOKafkaProducer(
        **client_options(settings), acks=1, enable_idempotence=False, linger_ms=5, **overrides
    )


def make_consumer(
    settings: RollguardSettings,
    *topic_names: str,
    group_id: str | None,
    control: bool,
    **overrides: Any,
) -> AIOKafkaConsumer:
    """A consumer that never auto-commits; control consumers wait at most a few ms per fetch."""
    opts: dict[str, Any] = {
        **client_options(settings),
        # Groups are namespaced like topics, so two installations (or two test runs) sharing
        # a cluster never share a consumer group.
        "group_id": f"{settings.topic_prefix}{group_id}" if group_id else None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "rebalance_timeout_ms": settings.rebalance_timeout_ms,
    }
    if control:
        opts["fetch_max_wait_ms"] = settings.control_fetch_max_wait_ms
    opts.update(overrides)
    return AIOKafkaConsumer(*topic_names, **opts)


@contextlib.contextmanager
def _aiokafka_quiet() -> Iterator[None]:
    """aiokafka logs what it meets at ERROR (every refused connection, a refused producer id);
    where the outcome is ours to report, once and structured, its lines are held back."""
    aiokafka_log = logging.getLogger("aiokafka")
    level = aiokafka_log.level
    aiokafka_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        aiokafka_log.setLevel(level)


async def wait_for_broker(settings: RollguardSettings) -> None:
    """Return once the broker answers a metadata request; BrokerUnavailable after the timeout."""
    timeout_s = settings.connect_timeout_s
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: Exception | None = None
    with _aiokafka_quiet():
        while loop.time() < deadline:
            admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=2_000)
            try:
                await admin.start()
                await admin.list_topics()
                return
            except (KafkaError, OSError) as exc:
                last = exc
                await asyncio.sleep(0.2)
            finally:
                await admin.close()
    raise BrokerUnavailable(
        f"no Kafka broker answered at {settings.kafka_bootstrap} within {timeout_s:g}s"
        f" ({type(last).__name__ if last else 'timeout'})"
    )


def topic_configs(spec: topics.TopicSpec) -> dict[str, str]:
    """The configs a topic is created with: compaction, retention."""
    configs = {"cleanup.policy": "compact"} if spec.compacted else {}
    if spec.retention_ms is not None:
        configs["retention.ms"] = str(spec.retention_ms)
    return configs


async def provision_topics(
    settings: RollguardSettings,
    specs: Iterable[topics.TopicSpec] = topics.ALL,
    *,
    internal: Mapping[str, Mapping[str, str]] | None = None,
    must_create: bool = False,
) -> list[str]:
    """Create the topics that are missing, with explicit partitions; returns the ones created.

    Existing topics are left alone, but a partition count that differs from the settings is an
    error: the decider's tables need every control topic co-partitioned by model_id.
    """
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=10_000)
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    try:
        existing = set(await admin.list_topics())
        wanted = {settings.topic(s.name): topic_configs(s) for s in specs}
        wanted.update({name: dict(configs) for name, configs in (internal or {}).items()})
        new = [
            NewTopic(
                name,
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs=configs,
            )
            for name, configs in wanted.items()
            if name not in existing
        ]
        created = await _create(admin, new, settings, must_create=must_create) if new else []
        described = await admin.describe_topics(list(wanted))
        for desc in described:
            count = len(desc.get("partitions", []))
            if count and count != settings.partitions:
                raise ConfigError(
                    f"topic {desc['topic']} has {count} partitions, settings say "
                    f"{settings.partitions} (ROLLGUARD_PARTITIONS)"
                )
        return created
    finally:
        await admin.close()


#: CreateTopics answers per topic: another process won the race (the partition check still
#: applies), or this principal may not create topics (least privilege: docs/security.md).
_TOPIC_ALREADY_EXISTS = 36
_NOT_ALLOWED = {29: "TOPIC_AUTHORIZATION_FAILED", 31: "CLUSTER_AUTHORIZATION_FAILED"}


async def _create(
    admin: AIOKafkaAdminClient,
    new: list[NewTopic],
    settings: RollguardSettings,
    *,
    must_create: bool,
) -> list[str]:
    """The topics created of ``new``; a refusal other than "exists" or "not allowed" is a
    ConfigError naming the topic (aiokafka returns per-topic errors, it raises none)."""
    response = await admin.create_topics(new)
    created: list[str] = []
    refused: list[str] = []
    for entry in response.topic_errors:
        topic, code = entry[0], entry[1]
        if code == 0:
            created.append(topic)
        elif code in _NOT_ALLOWED:
            refused.append(topic)
        elif code != _TOPIC_ALREADY_EXISTS:
            message = entry[2] if len(entry) > 2 and entry[2] else f"error code {code}"
            raise ConfigError(f"cannot create topic {topic}: {message}")
    who = settings.sasl_username or "(no SASL user)"
    if refused and must_create:
        raise ConfigError(
            f"not allowed to create topics ({who}): {', '.join(sorted(refused))}; "
            "run `rollguard topics create` as a principal with Create on the cluster"
        )
    if refused:
        # A service that may not create topics (one principal per service): the admin's
        # `rollguard topics create` makes them; a service that needs one still missing fails
        # when it first reads or writes it, naming it.
        log.warning(
            "topics_not_created",
            reason="this principal may not create topics",
            principal=who,
            topics=sorted(refused),
        )
    return created


class SourceRecord(Protocol):
    """What a dead letter needs of a consumed message (aiokafka and faust messages have it)."""

    topic: str
    partition: int
    offset: int
    key: Any
    value: Any


Send = Callable[[str, bytes, bytes | None], Awaitable[object]]
#: A value and its key, as a producer takes them.
Item = tuple[bytes, bytes | None]
#: Hands many values to a producer; returns, per record batch, what resolves when the broker
#: has it and the items it holds.
SendMany = Callable[[str, list[Item]], Awaitable[list[tuple[Awaitable[object], list[Item]]]]]


def producer_send(producer: AIOKafkaProducer) -> Send:
    async def send(topic: str, value: bytes, key: bytes | None) -> object:
        return await producer.send_and_wait(topic, value, key=key)

    return send


#: The most of a rejected record's value a dead letter keeps: base64 makes it a third larger,
#: and the letter must stay far below the producer's 1 MiB request limit, however large the
#: record was (a record too large to copy whole is never a reason to crash).
MAX_DEAD_LETTER_RAW = 256 * 1024

#: The batch size of a dead-letter producer (``make_dead_letter_producer``): with aiokafka's
#: default of 16 KB a batch held about 15 letters and a flood went out at ~3,000 letters/s, one
#: produce request per partition at a time. Half a MiB stays below a broker's usual 1 MB
#: message.max.bytes with room to spare.
DEAD_LETTER_BATCH_BYTES = 512 * 1024


def make_dead_letter_producer(settings: RollguardSettings) -> AIOKafkaProducer:
    """A data producer (acks=1, the dead-letter topic is telemetry) with large batches."""
    return make_producer(settings, control=False, max_batch_size=DEAD_LETTER_BATCH_BYTES)


class KeyHashes:
    """aiokafka's default partitioner, each key's hash remembered: it is murmur2 in pure Python,
    about 10 µs a message, and a flood's dead letters share a handful of keys (model ids)."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._hashes: dict[bytes, int] = {}

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(_DEFAULT_PARTITIONER(key, all_partitions, available))
        found = self._hashes.get(key)
        if found is None:
            if len(self._hashes) >= self._size:
                self._hashes.clear()
            found = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[found % len(all_partitions)]


_DEFAULT_PARTITIONER = DefaultPartitioner()


def producer_batches(producer: AIOKafkaProducer) -> SendMany:
    """Send many values as record batches built here (partitioned as aiokafka would), one
    future per batch: ``producer.send`` costs a future, a partitioner call and an accumulator
    lookup per message, two thirds of a dead letter's cost in a flood."""
    hashes = KeyHashes()

    async def send_many(
        topic: str, items: list[Item]
    ) -> list[tuple[Awaitable[object], list[Item]]]:
        partitions = sorted(await producer.partitions_for(topic))
        by_partition: dict[int, list[Item]] = {}
        for item in items:
            by_partition.setdefault(hashes(item[1], partitions, partitions), []).append(item)
        sent: list[tuple[Awaitable[object], list[Item]]] = []
        for partition, group in by_partition.items():
            batch = producer.create_batch()
            held: list[Item] = []
            for value, key in group:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    sent.append(
                        (await producer.send_batch(batch, topic, partition=partition), held)
                    )
                    batch, held = producer.create_batch(), []
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        sent.append((await producer.send(topic, value, key=key), [(value, key)]))
                        continue
                held.append((value, key))
            if held:
                sent.append((await producer.send_batch(batch, topic, partition=partition), held))
        return sent

    return send_many


class DeadLetterSink:
    """Sends what a consumer cannot accept to the dead-letter topic, and counts it by reason.

    ``send`` sends one letter and waits for the broker: for consumers that handle one record at
    a time. ``queue`` hands a batch's letters to the producer without waiting and logs one line
    per source partition; ``delivered`` waits until every queued letter is on the topic, and a
    consumer calls it before it commits past them (a crash in between sends them again). So a
    flood of bad records costs the real traffic little: letters are written without building a
    model each, and go out as record batches built here (with ``send_many``; without it, 500
    sends at a time).
    """

    def __init__(
        self,
        settings: RollguardSettings,
        send: Send,
        consumer: str,
        *,
        send_many: SendMany | None = None,
    ) -> None:
        self._topic = settings.topic(topics.DEADLETTER.name)
        self._send = send
        self._send_many = send_many
        self._consumer = consumer
        self._pending: list[tuple[Awaitable[object] | None, list[Item]]] = []
        #: Letters written, by reason (counted when written, before they are sent).
        self.counts: Counter[str] = Counter()
        #: Letters the broker has acknowledged.
        self.sent = 0

    def letter(
        self, record: SourceRecord, error: str, reason: DeadLetterReason
    ) -> tuple[bytes, bytes | None]:
        """The dead letter's bytes (``DeadLetter.encode()``'s, written directly: a model built
        and dumped per letter was most of a flood's cost) and its key. The event id derives
        from the source and the bytes, so a record refused again after a redelivery gets the
        same letter."""
        raw = record.value if isinstance(record.value, bytes) else b""
        key = record.key if isinstance(record.key, bytes) else None
        if key is not None and len(key) > 256:
            key = key[:256]
        sha256 = hashlib.sha256(raw).hexdigest()
        where = f"{self._consumer}:{record.topic}:{record.partition}:{record.offset}:{sha256}"
        self.counts[reason] += 1
        metrics.DEAD_LETTERS.labels(self._consumer, reason).inc()
        value = orjson.dumps(
            {
                "event_id": hashlib.blake2b(where.encode(), digest_size=16).hexdigest(),
                "ts": utcnow(),
                "schema": DeadLetter.SCHEMA,
                "model_id": key.decode(errors="replace") if key else None,
                "source_topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "consumer": self._consumer,
                "reason": reason,
                "error": f"{reason}: {error}"[:4000],
                "raw_b64": base64.b64encode(raw[:MAX_DEAD_LETTER_RAW]).decode(),
                "raw_size": len(raw),
                "raw_sha256": sha256,
                "raw_truncated": len(raw) > MAX_DEAD_LETTER_RAW,
            },
            option=orjson.OPT_UTC_Z,
        )
        return value, key

    async def send(self, record: SourceRecord, error: str, kind: DeadLetterReason) -> None:
        value, key = self.letter(record, error, kind)
        log.warning(
            "dead_lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            model_id=key.decode(errors="replace") if key else None,
            reason=kind,
            error=error[:300],
        )
        await self._send(self._topic, value, key)
        self.sent += 1

    async def queue(self, rejected: Iterable[Rejected]) -> None:
        """Hand letters to the producer; ``delivered`` waits for them."""
        by_source: dict[tuple[str, int], list[Rejected]] = {}
        for r in rejected:
            by_source.setdefault((r.record.topic, r.record.partition), []).append(r)
        items: list[Item] = []
        for (topic, partition), letters in by_source.items():
            log.warning(
                "dead_lettered",
                topic=topic,
                partition=partition,
                offset=letters[0].record.offset,
                last_offset=letters[-1].record.offset,
                count=len(letters),
                reasons=dict(Counter(r.kind for r in letters)),
                error=letters[0].error[:300],
            )
            items += [self.letter(r.record, r.error, r.kind) for r in letters]
        if not items:
            return
        if self._send_many is not None:
            with contextlib.suppress(KafkaError):  # sent one by one in ``delivered``
                self._pending += await self._send_many(self._topic, items)
                return
        self._pending.append((None, items))

    async def delivered(self) -> None:
        """Return once every queued letter is on the topic. Letters whose batch the producer
        failed to deliver, or that were never handed over, go through ``send`` (which may wait
        out a broker outage, or raise)."""
        pending, self._pending = self._pending, []
        outcomes = iter(
            await asyncio.gather(*(d for d, _ in pending if d is not None), return_exceptions=True)
        )
        again: list[Item] = []
        for delivery, items in pending:
            if delivery is not None:
                outcome = next(outcomes)
                if not isinstance(outcome, BaseException):
                    continue
                if not isinstance(outcome, KafkaError):
                    raise outcome
            again += items
        self.sent += sum(len(items) for _, items in pending) - len(again)
        for start in range(0, len(again), 500):
            chunk = again[start : start + 500]
            await asyncio.gather(*(self._send(self._topic, value, key) for value, key in chunk))
            self.sent += len(chunk)

    async def reject_all(self, rejected: Iterable[Rejected]) -> None:
        """``queue`` and ``delivered`` in one."""
        await self.queue(rejected)
        await self.delivered()


_E = TypeVar("_E", bound=Event)
_S = TypeVar("_S", bound=Signed)


@dataclass(frozen=True)
class Rejected:
    """A record that did not become an event, and why."""

    record: ConsumerRecord[Any, Any]
    kind: DeadLetterReason
    error: str


def decode_batch(
    records: list[ConsumerRecord[Any, Any]], cls: type[_E]
) -> tuple[list[tuple[ConsumerRecord[Any, Any], _E]], list[Rejected]]:
    """Parse a batch with orjson and validate it in one pydantic call.

    When the batch fails, its errors name the records that failed, and the others are
    validated again in one call: one bad record never takes good ones down with it, and a
    batch that is mostly bad (a flood) costs two calls, not one per record.
    """
    parsed: list[tuple[ConsumerRecord[Any, Any], Any]] = []
    rejected: list[Rejected] = []
    for record in records:
        try:
            parsed.append((record, orjson.loads(record.value)))
        except (orjson.JSONDecodeError, TypeError) as exc:
            rejected.append(Rejected(record, "malformed", str(exc)))
    adapter = _batch_adapter(cls)
    try:
        events = adapter.validate_python([doc for _, doc in parsed])
        return [(rec, e) for (rec, _), e in zip(parsed, events, strict=True)], rejected
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
    by_record: dict[int, list[ErrorDetails]] = {}
    for error in errors:
        at = error["loc"][0] if error["loc"] else None
        if not isinstance(at, int):  # not an error of one record: take them one by one
            return _one_by_one(parsed, cls, rejected)
        by_record.setdefault(at, []).append({**error, "loc": error["loc"][1:]})
    rejected += [
        Rejected(parsed[i][0], "invalid", _describe(errs)) for i, errs in by_record.items()
    ]
    rest = [(rec, doc) for i, (rec, doc) in enumerate(parsed) if i not in by_record]
    events = adapter.validate_python([doc for _, doc in rest])
    return [(rec, e) for (rec, _), e in zip(rest, events, strict=True)], rejected


class Admission:
    """What a consumer of control events takes: only events signed by a key trusted for their
    type (rollguard.signing.Trust); the rest become ``untrusted`` rejections, dead-lettered with
    the reason like any refused record. Unsigned events taken in ``warn`` mode are counted and
    said once per event type."""

    def __init__(self, trust: Trust | TrustSource, consumer: str) -> None:
        #: Followed as the trusted keys directory changes, when a source is given.
        self.source = trust if isinstance(trust, TrustSource) else None
        self._base = trust.current if isinstance(trust, TrustSource) else trust
        #: Adds keys the directory does not hold (the decider: each person's, from the tokens).
        self._people: Callable[[Trust], Trust] | None = None
        self.trust = self._base
        self.consumer = consumer
        #: Events refused, by reason (unsigned, unknown_key, wrong_role, bad_signature);
        #: ``unsigned_taken`` in warn mode.
        self.counts: Counter[str] = Counter()
        self._warned: set[str] = set()
        self._said_error: str | None = None

    def expect(self, *roles: Role) -> list[Role]:
        """Say, once, which of ``roles`` (whose events this consumer acts on) no trusted key
        speaks for: everything they sign would be refused (a fresh state directory, a trusted
        directory not mounted). Returns them."""
        missing = [r for r in roles if not self.trust.roles().get(r)]
        if missing:
            where = self.source.settings.resolved_trusted_keys_dir if self.source else None
            log.warning(
                "no_trusted_keys",
                consumer=self.consumer,
                roles=missing,
                trusted_dir=str(where) if where else None,
                detail="every event these roles sign will be refused: put their public keys "
                "there (rollguard keys list where they run)",
            )
        return missing

    def with_people(self, people: Callable[[Trust], Trust]) -> None:
        """Trust, besides the directory's keys, what ``people`` adds to them."""
        self._people = people
        self.trust = people(self._base)

    def refresh(self, within_s: float | None = None) -> None:
        """Take the trusted keys directory as it is now (at most once a second, or once per
        ``within_s``)."""
        source = self.source
        if source is None:
            return
        if source.refresh(within_s=within_s):
            self._base = source.current
            self.trust = self._people(self._base) if self._people else self._base
            log.info(
                "trusted_keys_reloaded",
                consumer=self.consumer,
                keys={role: len(kids) for role, kids in self._base.roles().items()},
            )
        if source.last_error != self._said_error:
            self._said_error = source.last_error
            if source.last_error is not None:
                log.error("trusted_keys_rejected", error=source.last_error, kept="last good keys")

    def verdict(self, event: Signed) -> Verdict:
        self.refresh()
        verdict = self.trust.check(event)
        if verdict.reason == "unknown_key" and self.source is not None:
            # A key made a moment ago (keys generate, then deploy record): look again now,
            # though at most five times a second, so a flood of forgeries costs little.
            self.refresh(within_s=0.2)
            verdict = self.trust.check(event)
        if verdict.ok and verdict.reason == "unsigned":
            self.counts["unsigned_taken"] += 1
            name = type(event).__name__
            if name not in self._warned:
                self._warned.add(name)
                log.warning(
                    "unsigned_taken",
                    consumer=self.consumer,
                    event_type=name,
                    detail="ROLLGUARD_SIGNED_EVENTS=warn; set it to require once every "
                    "producer signs",
                )
        elif not verdict.ok:
            self.counts[verdict.reason] += 1
        return verdict

    def admit(
        self, decoded: list[tuple[ConsumerRecord[Any, Any], _S]]
    ) -> tuple[list[tuple[ConsumerRecord[Any, Any], _S]], list[Rejected]]:
        taken: list[tuple[ConsumerRecord[Any, Any], _S]] = []
        refused: list[Rejected] = []
        for record, event in decoded:
            verdict = self.verdict(event)
            if verdict.ok:
                taken.append((record, event))
            else:
                refused.append(Rejected(record, "untrusted", verdict.refusal))
        return taken, refused


def _one_by_one(
    parsed: list[tuple[ConsumerRecord[Any, Any], Any]], cls: type[_E], rejected: list[Rejected]
) -> tuple[list[tuple[ConsumerRecord[Any, Any], _E]], list[Rejected]]:
    good: list[tuple[ConsumerRecord[Any, Any], _E]] = []
    for record, doc in parsed:
        try:
            good.append((record, cls.model_validate(doc)))
        except ValidationError as exc:
            rejected.append(Rejected(record, "invalid", _first_error(exc)))
    return good, rejected


def refusal(exc: ValueError) -> tuple[DeadLetterReason, str]:
    """Why ``rollguard.events.decode`` refused a value, as a dead letter says it."""
    if isinstance(exc, ValidationError):
        return "invalid", _first_error(exc)
    return "malformed", str(exc)


def _first_error(exc: ValidationError) -> str:
    return _describe(exc.errors(include_url=False, include_context=False, include_input=False))


def _describe(errs: list[ErrorDetails]) -> str:
    first = errs[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(event)"
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{loc}: {first['msg']}{more}"


_ADAPTERS: dict[type[Event], TypeAdapter[Any]] = {}


def _batch_adapter(cls: type[Event]) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(cls)
    if adapter is None:
        adapter = _ADAPTERS[cls] = TypeAdapter(list[cls])  # type: ignore[valid-type]
    return adapter


async def read_topic(
    settings: RollguardSettings, name: str, *, timeout_s: float = 10.0
) -> list[ConsumerRecord[Any, Any]]:
    """Every record of a topic as it is now, read from the beginning without a group.

    For command-line readers (``deploy check``, ``approve``): it stops at the end offsets it
    saw when it started, so it terminates on a live topic.
    """
    consumer = make_consumer(settings, group_id=None, control=True)
    out: list[ConsumerRecord[Any, Any]] = []
    try:
        await consumer.start()
        await consumer.topics()
        topic = settings.topic(name) if not name.startswith(settings.topic_prefix) else name
        parts = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not parts:
            return out
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s

        async def behind() -> bool:
            for tp in parts:
                if await consumer.position(tp) < ends[tp]:
                    return True
            return False

        while await behind():
            if loop.time() > deadline:
                raise BrokerUnavailable(f"reading {topic} did not finish within {timeout_s:g}s")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


async def start_control_producer(
    settings: RollguardSettings,
) -> tuple[AIOKafkaProducer, RollguardSettings]:
    """A started control producer, idempotent if the broker can do it; if it refuses the
    producer id (the embedded broker does), one warning and acks=all without idempotence.
    Returns the settings that worked, for the next producer."""
    while True:
        producer = make_producer(settings, control=True)
        try:
            with _aiokafka_quiet():  # a refused producer id is reported below, once
                await producer.start()
            return producer, settings
        except KafkaConnectionError as exc:
            await producer.stop()
            raise BrokerUnavailable(
                f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}"
            ) from exc
        except KafkaError as exc:
            await producer.stop()
            if not settings.enable_idempotence:
                raise
            log.warning(
                "idempotence_refused",
                bootstrap=settings.kafka_bootstrap,
                error=type(exc).__name__,
                fallback="acks=all without idempotence",
            )
            settings = settings.model_copy(update={"enable_idempotence": False})


async def negotiate_idempotence(settings: RollguardSettings) -> RollguardSettings:
    """The settings with idempotence as the broker supports it (asked once, at start)."""
    producer, settings = await start_control_producer(settings)
    await producer.stop()
    return settings


async def publish_one(settings: RollguardSettings, name: str, event: Event, key: bytes) -> None:
    """Publish one control event with a short-lived producer (for the CLI)."""
    producer, _ = await start_control_producer(settings)
    try:
        await producer.send_and_wait(settings.topic(name), event.encode(), key=key)
    except KafkaConnectionError as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    finally:
        await producer.stop()
