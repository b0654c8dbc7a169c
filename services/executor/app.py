"""Executor service: verifies signed commands, applies them once, acknowledges, then commits.

Order per command: inbox row + owed ack (one transaction) → publish → for each component step
in order: effect → step record + its ack (one transaction) → publish → live pointer → outcome
+ final ack + invalidation (one transaction) → publish → commit ``offset + 1``. When a step
fails, the steps already done are undone in reverse order (compensation), each acked, and the
command is acked ``failed``. A crash anywhere leads to redelivery, and the inbox turns
redelivery into the remaining steps only; an effect whose record the crash prevented is set
again, which appliers make harmless by setting state rather than toggling it.

Everything it publishes is signed with the executor key (``signer_of(settings, "executor")``):
acks and invalidations before the inbox owes them, the live pointer's manifests as it sends
them. Commands are taken only when signed by a trusted decider key (``verify_command``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import structlog
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError
from pydantic import ValidationError

from rollguard import metrics, topics
from rollguard.bus import DeadLetterSink, make_consumer, make_producer, refusal
from rollguard.errors import BrokerUnavailable
from rollguard.events import (
    AckStatus,
    CommandAck,
    RollbackCommand,
    decode,
    utcnow,
)
from rollguard.invalidations import invalidation_for, publish_invalidation
from rollguard.logs import get_logger
from rollguard.outage import OutageLimit, Sender
from rollguard.policy import PolicySet, PolicyView
from rollguard.settings import RollguardSettings
from rollguard.signing import Signer, Trust, TrustSource, signer_of, verify_command
from rollguard_services.executor.appliers import build_appliers
from rollguard_services.executor.appliers.base import Applier, Effect, Step
from rollguard_services.executor.appliers.registry import LivePointer
from rollguard_services.executor.inbox import Inbox, InboxRow, Source, StepKey, StepRow
from rollguard_services.executor.plans import Plan, Refusal, plan_for
from rollguard_services.executor.settings import ExecutorSettings

log = get_logger("rollguard.executor")

#: The step that moves rollguard's own live pointer, recorded like a component step.
POINTER = StepKey("live_pointer")


class _Revocations(ConsumerRebalanceListener):  # type: ignore[misc]
    """Remembers partitions taken away, so their offsets are never committed by us."""

    def __init__(self) -> None:
        self.owned: set[TopicPartition] = set()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.owned -= set(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.owned |= set(assigned)
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in self.owned))


class Executor:
    name = "executor"

    def __init__(
        self,
        settings: RollguardSettings,
        executor_settings: ExecutorSettings,
        policy: PolicyView | None = None,
        *,
        signer: Signer | None = None,
        trust: Trust | None = None,
    ) -> None:
        """``signer`` and ``trust``: the executor key and the keys it trusts (default: loaded
        from the settings here, ``signer_of(settings, "executor")`` and ``trust_of``), so a
        missing or unreadable key stops the executor before it touches the broker."""
        self.settings = settings
        self.svc = executor_settings
        #: The level-2 restore order is policy (rollback.component_order), per model.
        self.policy: PolicyView = policy if policy is not None else PolicySet()
        self.ready = asyncio.Event()
        self.counts: Counter[str] = Counter()
        #: Followed as the trusted keys directory changes, unless fixed keys are given (tests).
        self._trust_source = TrustSource(settings) if trust is None else None
        self.trust = trust if trust is not None else self._trust_source.current  # type: ignore[union-attr]
        #: Signs every ack, invalidation and pointer move before it is owed or published.
        self.signer = signer if signer is not None else signer_of(settings, "executor")
        self._crash_hits = 0

    async def run(self) -> None:
        self.inbox = Inbox(self.settings.resolved_executor_db_url)
        self.appliers: dict[str, Applier] = {}
        producer = make_producer(self.settings, control=True)
        limit = OutageLimit(self.settings.broker_outage_limit_s)
        # Every ack, pointer and invalidation waits out a broker outage: none is owed for long.
        sender = Sender(producer, limit)
        consumer = make_consumer(self.settings, group_id=self.svc.group_id, control=True)
        listener = _Revocations()
        consumer.subscribe([self.settings.topic(topics.COMMANDS.name)], listener=listener)
        try:
            self.appliers = build_appliers(self.svc)
            await producer.start()
            await consumer.start()
            self.pointer = LivePointer(
                sender, self.settings.topic(topics.DEPLOYMENTS.name), self.signer
            )
            self.dead_letters = DeadLetterSink(self.settings, sender.send, self.name)
            self._acks_topic = self.settings.topic(topics.ACKS.name)
            self._invalidations_topic = self.settings.topic(topics.INVALIDATIONS.name)
            log.info(
                "started",
                bootstrap=self.settings.kafka_bootstrap,
                executor_id=self.svc.executor_id,
                appliers=sorted(self.appliers),
                trusted_decider_keys=sorted(self.trust.roles().get("decider", [])),
                key_id=self.signer.key_id,
            )
            if not self.trust.roles().get("decider"):
                log.warning(
                    "no_trusted_keys",
                    consumer=self.name,
                    roles=["decider"],
                    trusted_dir=str(self.settings.resolved_trusted_keys_dir),
                    detail="every command will be rejected: put the decider's public key there",
                )
            await self._flush(sender)  # what was owed from before a crash
            consumed = metrics.Consumption(self.name)
            while True:
                limit.check()
                batches = await consumer.getmany(timeout_ms=200)
                consumed.took(consumer, batches)
                if not self.ready.is_set() and consumer.assignment():
                    self.ready.set()
                for tp, records in batches.items():
                    for record in records:
                        await self.handle(record, sender)
                        self._crash_point("before_commit")
                        if tp in listener.owned:
                            await self._commit(consumer, tp, record.offset + 1)
        finally:
            await consumer.stop()
            await producer.stop()
            for applier in self.appliers.values():
                await applier.close()
            self.inbox.close()
            log.info("stopped", **self.counts)

    async def _commit(self, consumer: Any, tp: TopicPartition, offset: int) -> None:
        """Commit past a handled command. A broker away long enough for the group to move
        on refuses the commit: the command comes again, and the inbox makes it a no-op."""
        try:
            await consumer.commit({tp: offset})
        except (CommitFailedError, IllegalStateError) as exc:
            self.counts["commits_failed"] += 1
            log.warning("commit_failed", topic=tp.topic, partition=tp.partition, error=str(exc))

    def _crash_point(self, name: str) -> None:
        """Crash tests only: die here as a power cut would, without any cleanup."""
        if self.svc.crash_at != name:
            return
        self._crash_hits += 1
        if self._crash_hits >= self.svc.crash_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def _ack(
        self,
        command: RollbackCommand,
        status: AckStatus,
        detail: str,
        *,
        suffix: str = "",
        retriable: bool = False,
        timings: dict[str, float] | None = None,
        component: str | None = None,
        compensation: bool = False,
        attempts: int = 0,
    ) -> CommandAck:
        if component is not None:
            suffix = f":{component}{':compensate' if compensation else ''}{suffix}"
        ack_id = uuid.uuid5(uuid.NAMESPACE_OID, f"{command.command_id}:{status}{suffix}").hex
        ack = CommandAck(
            event_id=ack_id,
            model_id=command.model_id,
            model_version=command.model_version,
            system_version=command.system_version,
            command_id=command.command_id,
            status=status,
            executor_id=self.svc.executor_id,
            detail=detail,
            retriable=retriable,
            component=component,
            compensation=compensation,
            attempts=attempts,
            timings=timings or {},
        )
        # Signed here, before the inbox owes it: what is re-sent after a crash is this one.
        return self.signer.sign(ack)

    async def _flush(self, sender: Sender) -> None:
        """Publish every owed invalidation, then every owed ack, marking each sent.

        Invalidations first: whoever sees a command's ``applied`` ack can rely on its
        invalidation being on the topic already.
        """
        for owed_inv in self.inbox.owed_invalidations():
            invalidation = owed_inv.event
            await publish_invalidation(
                sender, self._invalidations_topic, invalidation, owed_inv.payload
            )
            self.inbox.mark_invalidation_sent(invalidation.event_id)
        for owed_ack in self.inbox.owed():
            ack = owed_ack.event
            await sender.send_and_wait(self._acks_topic, owed_ack.payload, key=ack.key)
            if ack.component is None:
                metrics.ACKS.labels(ack.status).inc()
            if ack.component is None and ack.status in ("applied", "failed", "rejected"):
                self._crash_point("after_ack")
            self.inbox.mark_sent(ack.event_id)

    def plan(self, command: RollbackCommand) -> Plan | Refusal:
        """The component steps of ``command`` in order, or why it cannot be executed."""
        return plan_for(command, self.policy, self.svc)

    async def handle(self, record: ConsumerRecord[Any, Any], sender: Sender) -> None:
        bound = log.bind(topic=record.topic, partition=record.partition, offset=record.offset)
        try:
            command = decode(RollbackCommand, record.value)
        except (ValidationError, ValueError) as exc:
            reason, error = refusal(exc)
            await self.dead_letters.send(record, error, reason)
            return
        bound = bound.bind(
            model_id=command.model_id,
            model_version=command.model_version,
            command_id=command.command_id,
        )
        source = Source(record.topic, record.partition, record.offset)
        row = self.inbox.get(command.command_id)
        if row is not None and row.source != source:
            # The same command id at another offset: a replay. It never acts twice.
            self.counts["replayed"] += 1
            self.inbox.owe(
                self._ack(
                    command,
                    "rejected",
                    f"replayed: command first seen at {row.source}",
                    suffix=f":replay:{source.topic}:{source.partition}:{source.offset}",
                )
            )
            bound.warning("rejected", reason="replayed")
        elif row is None:
            self._receive(command, source, bound)
            self._crash_point("after_receive")
            await self._flush(sender)
            received = self.inbox.get(command.command_id)
            if received is not None and received.status == "rejected":
                self.counts["rejected"] += 1  # counted once its ack is published
        await self._flush(sender)

        row = self.inbox.get(command.command_id)
        if row is not None and row.status == "received":
            await self._execute(command, sender, bound)
            await self._flush(sender)
            final = self.inbox.get(command.command_id)
            if final is not None:
                self.counts[final.status] += 1  # counted once its ack is published

    def _receive(
        self,
        command: RollbackCommand,
        source: Source,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> None:
        if self._trust_source is not None and self._trust_source.refresh():
            self.trust = self._trust_source.current
            bound.info(
                "trusted_keys_reloaded", decider_keys=len(self.trust.roles().get("decider", []))
            )
        verdict = verify_command(command, self.trust, utcnow())
        plan = self.plan(command)
        reason: str
        # A bad signature or an expired command says so before what its plan would refuse.
        if not verdict.ok:
            reason, detail = verdict.reason, verdict.detail
        elif isinstance(plan, Refusal):
            reason, detail = plan.reason, plan.detail
        else:
            issued = (utcnow() - command.issued_at).total_seconds()
            ack = self._ack(command, "received", "", timings={"since_issued_s": issued})
            row = InboxRow(command.command_id, source, command.model_id, "received", "")
            self.inbox.receive(row, ack)
            bound.info("received", steps=[s.component for s in plan.steps])
            return
        text = f"{reason}: {detail}"
        ack = self._ack(command, "rejected", text)
        row = InboxRow(command.command_id, source, command.model_id, "rejected", text)
        self.inbox.receive(row, ack)
        bound.warning("rejected", reason=reason, detail=detail)

    async def _execute(
        self,
        command: RollbackCommand,
        sender: Sender,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> None:
        """Run the remaining steps of a received command, compensating when one fails."""
        plan = self.plan(command)
        assert isinstance(plan, Plan), "a command that cannot be planned is rejected at receive"
        cid = command.command_id
        done = self.inbox.steps(cid)
        per_component = plan.per_component
        loop = asyncio.get_running_loop()
        started = loop.time()
        attempts_total = 0
        changed: list[Step] = []
        failed: tuple[str, StepRow] | None = None

        for step in plan.steps:
            prior = done.get(StepKey(step.component))
            if prior is None:
                prior, attempts = await self._run_step(
                    command, step, command.expires_at, per_component, sender, bound
                )
                attempts_total += attempts
            if prior.status != "applied":
                failed = (step.component, prior)
                break
            changed.append(step)

        if failed is None and POINTER not in done:
            pointer_step = Step(
                command,
                POINTER.component,
                from_version=command.from_manifest.system_version,
                to_version=command.to_manifest.system_version,
            )
            # Not counted in the ack's attempts: those are calls to the outside systems.
            effect, _ = await self._apply_with_retry(
                self.pointer, pointer_step, command.expires_at, bound
            )
            self._crash_point("after_effect")
            self.inbox.record_step(cid, POINTER, StepRow.of(effect), None)
            if effect.status != "applied":
                failed = (POINTER.component, StepRow.of(effect))
        elif failed is None and done[POINTER].status != "applied":
            failed = (POINTER.component, done[POINTER])

        timings = {
            "apply_s": loop.time() - started,
            "since_issued_s": (utcnow() - command.issued_at).total_seconds(),
        }
        if failed is None:
            applied_at = utcnow()
            recorded = self.inbox.steps(cid)
            if per_component:
                what = ", ".join(
                    f"{s.component} {s.from_version} → {s.to_version}" for s in plan.steps
                )
            else:
                what = recorded[StepKey(plan.steps[0].component)].detail
            detail = f"{what}; {recorded[POINTER].detail}"
            ack = self._ack(command, "applied", detail, timings=timings, attempts=attempts_total)
            invalidation = self.signer.sign(invalidation_for(command, applied_at))
            self.inbox.finish(cid, "applied", detail, ack, invalidation)
            bound.info("applied", detail=detail, apply_s=round(timings["apply_s"], 4))
            return

        component, row = failed
        undone = await self._compensate(command, changed, done, per_component, sender, bound)
        detail = f"{component} failed: {row.detail}"
        if undone:
            detail += f"; {undone}"
        ack = self._ack(
            command,
            "failed",
            detail,
            retriable=row.retriable,
            timings=timings,
            attempts=attempts_total,
        )
        self.inbox.finish(cid, "failed", detail, ack)
        bound.warning("failed", detail=detail, retriable=row.retriable)

    async def _run_step(
        self,
        command: RollbackCommand,
        step: Step,
        deadline: datetime,
        per_component: bool,
        sender: Sender,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> tuple[StepRow, int]:
        """Apply one step (forward or compensating) with retries, record it with its ack in one
        transaction, publish; returns the recorded outcome and the attempts it took."""
        effect, attempts = await self._apply_with_retry(
            self._applier_for(step), step, deadline, bound
        )
        self._crash_point("after_effect")
        row = StepRow.of(effect)
        ack = None
        if per_component:
            ack = self._ack(
                command,
                effect.status,
                effect.detail,
                component=step.component,
                compensation=step.compensation,
                retriable=effect.retriable,
                attempts=attempts,
            )
        self.inbox.record_step(
            command.command_id, StepKey(step.component, step.compensation), row, ack
        )
        if step.compensation:
            bound.warning("compensated", component=step.component, status=effect.status)
        else:
            bound.info("step", component=step.component, status=effect.status, detail=effect.detail)
        await self._flush(sender)
        return row, attempts

    async def _compensate(
        self,
        command: RollbackCommand,
        changed: list[Step],
        done: dict[StepKey, StepRow],
        per_component: bool,
        sender: Sender,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> str:
        """Undo the changed steps, last first; what it did, in words for the final ack."""
        deadline = utcnow() + timedelta(seconds=self.svc.compensation_deadline_s)
        restored: list[str] = []
        stuck: list[str] = []
        for step in reversed(changed):
            if step.from_version == step.to_version:
                continue  # nothing was changed, so nothing to undo
            undo = step.undo()
            prior = done.get(StepKey(step.component, compensation=True))
            if prior is None:
                prior, _ = await self._run_step(
                    command, undo, deadline, per_component, sender, bound
                )
            if prior.status == "applied":
                restored.append(f"{step.component} back to {undo.to_version}")
            else:
                stuck.append(f"{step.component} ({prior.detail})")
        words = []
        if restored:
            words.append("compensated: " + ", ".join(restored))
        if stuck:
            words.append("COMPENSATION FAILED, needs a person: " + ", ".join(stuck))
        return "; ".join(words)

    def _applier_for(self, step: Step) -> Applier:
        name = self.svc.applier_for(step.command.model_id, step.component)
        assert name is not None, "steps without an applier are rejected at receive"
        return self.appliers[name]

    async def _apply_with_retry(
        self,
        applier: Applier,
        step: Step,
        deadline: datetime,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> tuple[Effect, int]:
        """Call the applier until it applies, fails for good, or the next try passes the
        deadline; retriable failures back off exponentially, or as the target asks."""
        if step.from_version == step.to_version and not step.compensation:
            return Effect("applied", f"{step.component} already at {step.to_version}"), 0
        delay = self.svc.retry_initial_s
        attempts = 0
        while True:
            attempts += 1
            try:
                effect = await applier.apply(step)
            except BrokerUnavailable:
                # The broker away beyond the outage limit is not this step's failure: the
                # executor stops, and the command, redelivered, resumes at this step.
                raise
            except Exception as exc:
                # A broken applier must not stop the executor (and every other model's
                # rollbacks with it): it is this command's failure, kept with its cause.
                bound.exception("applier_raised", applier=applier.name)
                effect = Effect("failed", f"applier {applier.name} raised {exc!r}"[:500])
            if effect.status == "applied" or not effect.retriable:
                return effect, attempts
            wait = max(delay, effect.retry_after_s or 0.0)
            if utcnow() + timedelta(seconds=wait) >= deadline:
                return Effect(
                    "failed",
                    f"gave up after {attempts} attempt(s) at the deadline "
                    f"{deadline.isoformat()}: {effect.detail}",
                    retriable=True,
                ), attempts
            bound.info("retrying", component=step.component, wait_s=wait, detail=effect.detail)
            await asyncio.sleep(wait)
            delay = min(delay * 2, self.svc.retry_max_s)
