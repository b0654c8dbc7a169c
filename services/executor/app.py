"""Executor service: verifies signed commands, applies them once, acknowledges, then commits.

Order per command: inbox row + owed ack (one transaction) → publish acks → effect → effect
record + owed ack (one transaction) → publish acks → commit ``offset + 1``. A crash anywhere
leads to redelivery, and the inbox turns redelivery into the remaining steps only.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from pydantic import ValidationError

from rollguard import topics
from rollguard.bus import DeadLetterSink, make_consumer, make_producer, producer_send
from rollguard.errors import ConfigError
from rollguard.events import AckStatus, CommandAck, RollbackCommand, decode, utcnow
from rollguard.logs import get_logger
from rollguard.settings import RollguardSettings
from rollguard.signing import load_trusted_keys, verify_command
from services.executor.appliers.base import Applier, Effect
from services.executor.appliers.registry import RegistryApplier
from services.executor.inbox import Inbox
from services.executor.settings import ExecutorSettings

log = get_logger("rollguard.executor")


class _Revocations(ConsumerRebalanceListener):  # type: ignore[misc]
    """Remembers partitions taken away, so their offsets are never committed by us."""

    def __init__(self) -> None:
        self.owned: set[TopicPartition] = set()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.owned -= set(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.owned |= set(assigned)


class Executor:
    name = "executor"

    def __init__(
        self, settings: RollguardSettings, executor_settings: ExecutorSettings | None = None
    ) -> None:
        self.settings = settings
        self.svc = executor_settings or ExecutorSettings()
        self.ready = asyncio.Event()
        self.counts: Counter[str] = Counter()
        self.trusted = load_trusted_keys(settings.resolved_trusted_keys_dir)

    def build_applier(self, producer: AIOKafkaProducer) -> Applier:
        if self.svc.applier == "registry":
            return RegistryApplier(producer, self.settings.topic(topics.DEPLOYMENTS.name))
        raise ConfigError(f"unknown applier {self.svc.applier!r}; known: registry")

    async def run(self) -> None:
        self.inbox = Inbox(self.settings.resolved_executor_db_url)
        producer = make_producer(self.settings, control=True)
        consumer = make_consumer(
            self.settings,
            group_id=self.svc.group_id,
            control=True,
        )
        listener = _Revocations()
        consumer.subscribe([self.settings.topic(topics.COMMANDS.name)], listener=listener)
        try:
            await producer.start()
            await consumer.start()
            self.applier = self.build_applier(producer)
            self.dead_letters = DeadLetterSink(self.settings, producer_send(producer), self.name)
            self._acks_topic = self.settings.topic(topics.ACKS.name)
            log.info(
                "started",
                bootstrap=self.settings.kafka_bootstrap,
                executor_id=self.svc.executor_id,
                applier=self.applier.name,
                trusted_keys=sorted(self.trusted),
            )
            await self._flush_acks(producer)  # acks owed from before a crash
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                if not self.ready.is_set() and consumer.assignment():
                    self.ready.set()
                for tp, records in batches.items():
                    for record in records:
                        await self.handle(record, producer)
                        if tp in listener.owned:
                            await consumer.commit({tp: record.offset + 1})
        finally:
            await consumer.stop()
            await producer.stop()
            self.inbox.close()
            log.info("stopped", **self.counts)

    def _ack(
        self,
        command: RollbackCommand,
        status: AckStatus,
        detail: str,
        *,
        suffix: str = "",
        retriable: bool = False,
        timings: dict[str, float] | None = None,
    ) -> CommandAck:
        ack_id = uuid.uuid5(uuid.NAMESPACE_OID, f"{command.command_id}:{status}{suffix}").hex
        return CommandAck(
            event_id=ack_id,
            model_id=command.model_id,
            model_version=command.model_version,
            system_version=command.system_version,
            command_id=command.command_id,
            status=status,
            executor_id=self.svc.executor_id,
            detail=detail,
            retriable=retriable,
            timings=timings or {},
        )

    async def _flush_acks(self, producer: AIOKafkaProducer) -> None:
        for ack_id, payload in self.inbox.unsent():
            key = CommandAck.model_validate_json(payload).key
            await producer.send_and_wait(self._acks_topic, payload, key=key)
            self.inbox.mark_sent(ack_id)

    async def handle(self, record: ConsumerRecord[Any, Any], producer: AIOKafkaProducer) -> None:
        bound = log.bind(topic=record.topic, partition=record.partition, offset=record.offset)
        try:
            command = decode(RollbackCommand, record.value)
        except (ValidationError, ValueError) as exc:
            await self.dead_letters.send(record, str(exc)[:2000], "invalid")
            return
        bound = bound.bind(
            model_id=command.model_id,
            model_version=command.model_version,
            command_id=command.command_id,
        )
        source = (record.topic, record.partition, record.offset)
        row = self.inbox.get(command.command_id)
        if row is not None and (row.topic, row.partition, row.offset) != source:
            # The same command id at another offset: a replay. It never acts twice.
            self.counts["replayed"] += 1
            self.inbox.owe(
                self._ack(
                    command,
                    "rejected",
                    f"replayed: command first seen at {row.topic}[{row.partition}]@{row.offset}",
                    suffix=f":replay:{record.topic}:{record.partition}:{record.offset}",
                )
            )
            bound.warning("rejected", reason="replayed")
        elif row is None:
            verdict = verify_command(command, self.trusted, utcnow())
            issued = (utcnow() - command.issued_at).total_seconds()
            if verdict.ok:
                ack = self._ack(command, "received", "", timings={"since_issued_s": issued})
                self.inbox.receive(
                    command.command_id, source, command.model_id, "received", "", ack
                )
                bound.info("received")
            else:
                detail = f"{verdict.reason}: {verdict.detail}"
                ack = self._ack(command, "rejected", detail)
                self.inbox.receive(
                    command.command_id, source, command.model_id, "rejected", detail, ack
                )
                self.counts["rejected"] += 1
                bound.warning("rejected", reason=verdict.reason, detail=verdict.detail)
        await self._flush_acks(producer)

        row = self.inbox.get(command.command_id)
        if row is not None and row.status == "received":
            started = asyncio.get_running_loop().time()
            effect = await self._apply_with_retry(command)
            took = asyncio.get_running_loop().time() - started
            timings = {
                "apply_s": took,
                "since_issued_s": (utcnow() - command.issued_at).total_seconds(),
            }
            ack = self._ack(
                command, effect.status, effect.detail, retriable=effect.retriable, timings=timings
            )
            self.inbox.finish(command.command_id, effect.status, effect.detail, ack)
            self.counts[effect.status] += 1
            bound.info(effect.status, detail=effect.detail, apply_s=round(took, 4))
            await self._flush_acks(producer)

    async def _apply_with_retry(self, command: RollbackCommand) -> Effect:
        delay = self.svc.retry_initial_s
        while True:
            effect = await self.applier.apply(command)
            if effect.status == "applied" or not effect.retriable:
                return effect
            if utcnow() + timedelta(seconds=delay) >= command.expires_at:
                return Effect("failed", f"gave up before expiry: {effect.detail}", retriable=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.svc.retry_max_s)
