"""Notifier service: decisions and acks → Slack, PagerDuty and webhooks, routed by tier.

The consumer turns events into notifications, stores them in the outbox (deduplicated per
channel and source event) and commits; one worker per channel drains the outbox in order. A
slow or failing channel holds up only its own queue; a message that fails for good is
recorded, counted and logged, and the channel moves on.

Every event it reads is admitted first (rollguard.bus.Admission): one not signed by a key
trusted for its type is dead-lettered as ``untrusted`` and tells nobody anything. A page is
resolved only by a ``verified`` ack, which only a decider key signs; that one is refused
unsigned even while ROLLGUARD_SIGNED_EVENTS=warn takes other unsigned events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, OrderedDict
from typing import Any

import aiohttp
from aiokafka import ConsumerRecord
from aiokafka.errors import CommitFailedError, IllegalStateError
from pydantic import ValidationError

from rollguard import metrics, topics
from rollguard.bus import Admission, DeadLetterSink, make_consumer, make_producer, refusal
from rollguard.drills import is_drill
from rollguard.events import Breach, CommandAck, Decision, decode
from rollguard.logs import get_logger
from rollguard.outage import OutageLimit, Sender
from rollguard.policy import PolicySet, PolicySource, PolicyView
from rollguard.settings import RollguardSettings
from rollguard.signing import Trust, TrustSource, Verdict
from rollguard_services.notifier.channels import configured_channels
from rollguard_services.notifier.channels.base import Channel
from rollguard_services.notifier.delivery import Pacer, deliver
from rollguard_services.notifier.notifications import (
    PAGE_ALWAYS,
    PAGE_OPENERS,
    Notification,
    channels_for,
    from_ack,
    from_decision,
)
from rollguard_services.notifier.outbox import IncidentInfo, Outbox
from rollguard_services.notifier.settings import NotifierSettings

log = get_logger("rollguard.notifier")

#: Breaches remembered so a decision can show their numbers (decisions follow within seconds).
BREACH_MEMORY = 1_000

Control = Breach | Decision | CommandAck

_CONSUMED: dict[str, type[Breach] | type[Decision] | type[CommandAck]] = {
    topics.BREACHES.name: Breach,
    topics.DECISIONS.name: Decision,
    topics.ACKS.name: CommandAck,
}

#: Why an unsigned ``verified`` ack is refused even in warn mode: it closes an incident.
UNSIGNED_VERIFIED = (
    "a verified ack resolves a page only when signed by a trusted decider key "
    "(refused unsigned even with ROLLGUARD_SIGNED_EVENTS=warn)"
)


class Notifier:
    name = "notifier"

    def __init__(
        self,
        settings: RollguardSettings,
        notifier_settings: NotifierSettings,
        policy: PolicyView | None = None,
        *,
        trust: Trust | None = None,
    ) -> None:
        """``trust``: the keys whose events it acts on (default: ``trust_of(settings)``, loaded
        when it starts)."""
        self.settings = settings
        if notifier_settings.incident_base_url is None:  # the dashboard's incident pages
            base = f"{settings.api_public_url.rstrip('/')}/incidents/"
            notifier_settings = notifier_settings.model_copy(update={"incident_base_url": base})
        self.svc = notifier_settings
        self._trust = trust
        #: Breaches, decisions and acks are taken only when signed by a key trusted for them.
        self.admission: Admission | None = None
        self.policy: PolicyView = policy if policy is not None else PolicySet()
        self.ready = asyncio.Event()
        self.counts: Counter[str] = Counter()
        self.channels: dict[str, Channel] = configured_channels(self.svc)
        self._breaches: OrderedDict[str, Breach] = OrderedDict()
        self._wake: dict[str, asyncio.Event] = {name: asyncio.Event() for name in self.channels}

    async def run(self) -> None:
        # Keys before the broker: a missing trusted keys directory stops the notifier at once.
        admission = Admission(self._trust or TrustSource(self.settings), self.name)
        admission.expect("detector", "decider")
        self.admission = admission
        outbox = await asyncio.to_thread(
            Outbox, self.svc.resolved_outbox_url(self.settings.state_dir)
        )
        by_topic = {self.settings.topic(name): cls for name, cls in _CONSUMED.items()}
        consumer = make_consumer(self.settings, *by_topic, group_id=self.svc.group_id, control=True)
        producer = make_producer(self.settings, control=False)
        limit = OutageLimit(self.settings.broker_outage_limit_s)
        dead = DeadLetterSink(self.settings, Sender(producer, limit).send, self.name)
        workers: list[asyncio.Task[None]] = []
        try:
            await producer.start()
            await consumer.start()
            if not self.channels:
                log.warning(
                    "no_channels", detail="no channel configured: notifications are logged only"
                )
            log.info("started", channels=sorted(self.channels))
            workers = [
                asyncio.create_task(self._drain(outbox, ch), name=f"notifier-{ch.name}")
                for ch in self.channels.values()
            ]
            consumed = metrics.Consumption(self.name)
            while True:
                limit.check()
                batches = await consumer.getmany(timeout_ms=200)
                consumed.took(consumer, batches)
                if not self.ready.is_set() and consumer.assignment():
                    self.ready.set()
                if not batches:
                    continue
                events: list[Control] = []
                for tp, records in batches.items():
                    for record in records:
                        try:
                            event = decode(by_topic[tp.topic], record.value)
                        except (ValidationError, ValueError) as exc:
                            reason, error = refusal(exc)
                            await dead.send(record, error, reason)
                            self.counts["dead_letters"] += 1
                            continue
                        verdict = self._verdict(admission, event)
                        if verdict.ok:
                            events.append(event)
                            continue
                        await dead.send(record, verdict.refusal, "untrusted")
                        self.counts["dead_letters"] += 1
                        self.counts["untrusted"] += 1
                        _refused(record, event, verdict)
                await self._accept(outbox, events)
                await self._commit(consumer, {tp: r[-1].offset + 1 for tp, r in batches.items()})
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await consumer.stop()
            await producer.stop()
            outbox.close()
            log.info("stopped", **self.counts)

    async def _commit(self, consumer: Any, offsets: dict[Any, int]) -> None:
        """Commit what the outbox holds. A broker away long enough for the group to move on
        refuses it: the events come again, and the outbox keeps each notification once."""
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            self.counts["commits_failed"] += 1
            log.warning("commit_failed", partitions=len(offsets), error=str(exc))

    def _verdict(self, admission: Admission, event: Control) -> Verdict:
        """Whether to act on ``event``: the admission's verdict, and never an unsigned
        ``verified`` ack (warn mode takes unsigned events, but not the one that resolves)."""
        if isinstance(event, CommandAck) and event.status == "verified" and not event.signature:
            admission.counts["unsigned"] += 1
            return Verdict(False, "unsigned", UNSIGNED_VERIFIED)
        return admission.verdict(event)

    async def _accept(self, outbox: Outbox, events: list[Control]) -> None:
        """Plan notifications for a batch and store them; decisions before acks, by time."""
        planned: list[tuple[Notification, list[str], IncidentInfo | None]] = []
        paged_now: set[str] = set()
        known: dict[str, IncidentInfo] = {}
        for event in sorted(events, key=lambda e: (not isinstance(e, Breach), e.ts)):
            if isinstance(event, Breach):
                self._breaches[event.event_id] = event
                while len(self._breaches) > BREACH_MEMORY:
                    self._breaches.popitem(last=False)
                continue
            if isinstance(event, Decision):
                breaches = [self._breaches[b] for b in event.breach_ids if b in self._breaches]
                n = from_decision(event, breaches, notify_holds=self.svc.notify_holds)
                if n is None:
                    continue
                chosen = self._route(n, paged=False)
                paged = (n.kind in PAGE_OPENERS or n.kind in PAGE_ALWAYS) and "pagerduty" in chosen
                if paged:
                    paged_now.add(n.incident_ref)
                info = IncidentInfo(n.incident_ref, event.event_id, event.tier, paged)
                known[n.incident_ref] = info
                planned.append((n, chosen, info))
            elif isinstance(event, CommandAck):
                info_or_none = known.get(event.command_id) or await asyncio.to_thread(
                    outbox.incident, event.command_id
                )
                tier = info_or_none.tier if info_or_none else None
                decision_id = info_or_none.decision_id if info_or_none else None
                n = from_ack(event, tier, decision_id)
                if n is None:
                    continue
                paged = event.command_id in paged_now or bool(info_or_none and info_or_none.paged)
                chosen = self._route(n, paged=paged)
                opened = (
                    n.kind in ("rollback_failed", "verification_failed") and "pagerduty" in chosen
                )
                opener = IncidentInfo(n.incident_ref, decision_id, tier, True) if opened else None
                if opened:
                    paged_now.add(n.incident_ref)
                planned.append((n, chosen, opener))
        if not planned:
            return
        added = await asyncio.to_thread(outbox.enqueue, planned)
        self.counts["duplicates"] += sum(len(c) for _, c, _ in planned) - len(added)
        for channel, _n in added:
            self.counts[f"queued.{channel}"] += 1
            self._wake[channel].set()
        for n, chosen, _ in planned:
            if not chosen:
                self.counts["unrouted"] += 1
                log.info("not_sent", kind=n.kind, incident=n.incident_ref, reason="no channel")

    def _route(self, n: Notification, *, paged: bool) -> list[str]:
        # Routing is policy: the model's `notifications` section, reloaded with the policy.
        if isinstance(self.policy, PolicySource):
            self.policy.refresh()
        if is_drill(n.model_id) and not self.svc.page_drills:
            self.counts["drill_quiet"] += 1  # a drill is no incident: nobody is paged for it
            return []
        routes = self.policy.for_model(n.model_id).notifications.model_dump()
        return channels_for(n, routes, self.svc.unknown_tier_channels, paged, self.channels)

    async def _drain(self, outbox: Outbox, channel: Channel) -> None:
        """Send one channel's messages in order; a failure is recorded and the next goes."""
        pacer = Pacer(channel.min_interval_s)
        wake = self._wake[channel.name]
        async with aiohttp.ClientSession() as session:
            while True:
                wake.clear()
                pending = await asyncio.to_thread(outbox.pending, channel.name)
                if not pending:
                    # Woken by the consumer; the timeout only guards against a missed wake-up.
                    await _wait(wake, 5.0)
                    continue
                for item in pending:
                    await self._send(outbox, channel, session, pacer, item.id, item.notification)

    async def _send(
        self,
        outbox: Outbox,
        channel: Channel,
        session: aiohttp.ClientSession,
        pacer: Pacer,
        message_id: int,
        n: Notification,
    ) -> None:
        body: dict[str, Any] | None = channel.render(n)
        if body is None:
            await asyncio.to_thread(outbox.finish, message_id, "skipped", 0, None, "")
            return
        result = await deliver(session, channel.url, body, self.svc, pacer)
        await asyncio.to_thread(
            outbox.finish,
            message_id,
            result.status,
            result.attempts,
            result.http_status,
            result.error,
        )
        self.counts[f"{result.status}.{channel.name}"] += 1
        metrics.NOTIFICATIONS.labels(channel.name, result.status).inc()
        self.counts[f"attempts.{channel.name}"] += result.attempts
        if result.status == "sent":
            log.info("sent", channel=channel.name, kind=n.kind, incident=n.incident_ref)
        else:
            log.error(
                "send_failed",
                channel=channel.name,
                kind=n.kind,
                incident=n.incident_ref,
                http_status=result.http_status,
                error=result.error,
            )


def _refused(record: ConsumerRecord[Any, Any], event: Control, verdict: Verdict) -> None:
    log.warning(
        "untrusted",
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        model_id=event.model_id,
        model_version=event.model_version,
        command_id=getattr(event, "command_id", None),
        event_type=type(event).__name__,
        reason=verdict.reason,
        detail=verdict.detail,
    )


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)
