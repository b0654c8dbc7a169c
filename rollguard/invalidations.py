"""Invalidations of a bad model version's outputs, and the client downstream consumers use.

When a rollback is applied the executor publishes one ``OutputInvalidation`` for the bad
version: outputs it made from when it went live to when the rollback was applied are
suspect. Downstream consumers (a feature store, a decision log, a batch scorer) ask
``is_invalid(model_id, model_version, ts)`` and drop or recompute what matches.

Key: ``<model_id>:<model_version>:<live_since>``, not ``model_id`` alone. The topic is
compacted, and compaction keeps the last message per key: keyed by ``model_id`` it would keep
only a model's latest invalidation and silently forget every earlier bad version. One key
per live period of a version keeps each one, and a redelivered or replayed invalidation
(same key, same event id) collapses into the one already there. Messages still go to the
partition the default partitioner gives ``model_id``, so all events of one model share a
partition as everywhere else.

The executor signs each invalidation with its key (rollguard.signing) before it owes it; a
reader given the installation's trust keeps only those.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from rollguard import topics
from rollguard.bus import client_options
from rollguard.events import OutputInvalidation, RollbackCommand, decode
from rollguard.outage import Sender
from rollguard.settings import RollguardSettings
from rollguard.signing import Trust


def invalidation_for(command: RollbackCommand, applied_at: datetime) -> OutputInvalidation:
    """The invalidation an applied ``command`` owes; its event id depends on the command only."""
    bad = command.from_manifest
    return OutputInvalidation(
        event_id=uuid.uuid5(uuid.NAMESPACE_OID, f"{command.command_id}:invalidation").hex,
        ts=applied_at,
        model_id=command.model_id,
        model_version=bad.model_version,
        system_version=bad.system_version,
        bad_versions=[bad.model_version],
        valid_from=bad.ts,
        valid_to=applied_at,
        command_id=command.command_id,
    )


def invalidation_key(invalidation: OutputInvalidation) -> bytes:
    """One key per live period of one version (see the module docstring for why)."""
    since = invalidation.valid_from.isoformat()
    return f"{invalidation.model_id}:{invalidation.model_version}:{since}".encode()


async def publish_invalidation(
    sender: Sender, topic: str, invalidation: OutputInvalidation, payload: bytes | None = None
) -> None:
    """Send to the partition of ``model_id`` under the per-version key (waiting out a broker
    outage, as ``sender`` does). ``payload``: the bytes to send, when the invalidation was
    stored signed before (the executor's outbox), so a re-send is the same message; default
    its encoding."""
    await sender.send_partitioned(
        topic,
        payload if payload is not None else invalidation.encode(),
        key=invalidation_key(invalidation),
        by=invalidation.model_id.encode(),
    )


@dataclass
class InvalidationIndex:
    """The latest invalidation per key, as compaction would leave the topic. Given ``trust``
    (``rollguard.signing.trust_of``), only invalidations signed by a trusted executor key are
    kept: a forged one would make downstream drop good outputs."""

    by_key: dict[bytes, OutputInvalidation] = field(default_factory=dict)
    #: Records that were not valid invalidations (skipped, never fatal for a reader).
    skipped: int = 0
    trust: Trust | None = None
    #: Valid invalidations refused by ``trust`` (skipped too, counted apart).
    untrusted: int = 0

    def add(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            self.skipped += 1
            return
        if value is None:  # a tombstone: the invalidation was withdrawn
            self.by_key.pop(key, None)
            return
        try:
            invalidation = decode(OutputInvalidation, value)
        except (ValidationError, ValueError):
            self.skipped += 1
            return
        if self.trust is not None and not self.trust.check(invalidation).ok:
            self.untrusted += 1
            return
        self.by_key[key] = invalidation

    def matching(
        self, model_id: str | None = None, model_version: str | None = None
    ) -> Iterator[OutputInvalidation]:
        for inv in sorted(self.by_key.values(), key=lambda i: (i.model_id, i.valid_from)):
            if model_id is not None and inv.model_id != model_id:
                continue
            if model_version is not None and model_version not in inv.bad_versions:
                continue
            yield inv

    def is_invalid(self, model_id: str, model_version: str, ts: datetime) -> bool:
        """Whether an output of ``model_version`` made at ``ts`` (timezone-aware) is invalid.

        The interval is closed: an output made at the instant the rollback was applied was
        still made by the bad version.
        """
        return any(
            inv.valid_from <= ts <= inv.valid_to for inv in self.matching(model_id, model_version)
        )


class InvalidationClient:
    """Reads the compacted invalidations topic into an ``InvalidationIndex``, no consumer group.

    ``await client.catch_up()`` reads up to the end offsets as of the call; call it again to
    pick up newer invalidations. Use as ``async with InvalidationClient(settings) as client``.
    ``trust``: keep only invalidations signed by a trusted executor key (see
    ``InvalidationIndex``); without it every valid one is kept.
    """

    def __init__(self, settings: RollguardSettings, trust: Trust | None = None) -> None:
        self.settings = settings
        self.topic = settings.topic(topics.INVALIDATIONS.name)
        self.index = InvalidationIndex(trust=trust)
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> InvalidationClient:
        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.settings.control_fetch_max_wait_ms,
        )
        await consumer.start()
        self._consumer = consumer
        try:
            await consumer.topics()  # refreshes cluster metadata
            parts = consumer.partitions_for_topic(self.topic) or set()
            consumer.assign([TopicPartition(self.topic, p) for p in sorted(parts)])
            await consumer.seek_to_beginning()
        except BaseException:
            await consumer.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def catch_up(self, timeout_s: float = 10.0) -> InvalidationIndex:
        """Read everything published before this call; TimeoutError if that takes longer."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("use InvalidationClient as an async context manager")
        assigned = consumer.assignment()
        if not assigned:
            return self.index
        ends = await consumer.end_offsets(list(assigned))

        async def behind() -> bool:
            for tp, end in ends.items():
                if await consumer.position(tp) < end:
                    return True
            return False

        async def read() -> None:
            while await behind():
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    for record in records:
                        self.index.add(record.key, record.value)

        await asyncio.wait_for(read(), timeout_s)
        return self.index

    def is_invalid(self, model_id: str, model_version: str, ts: datetime) -> bool:
        return self.index.is_invalid(model_id, model_version, ts)
