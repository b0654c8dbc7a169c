"""Decider service (faust-streaming): breaches, requests and approvals → decisions and signed
rollback commands; applied rollbacks → verification; quiet live versions → known good.

Low volume, stateful: per-model state lives in a faust table whose changelog makes it
durable. The table is private: what others need of it is the ModelStatus published on
``model-status`` whenever it changes. Every input topic is keyed by model_id and
co-partitioned, so the worker that owns a model's partition owns its state. faust only lets a
table change inside a stream, so the timer does not touch state itself: it sends a tick for
each model with something due, and the tick agent does the work.

What an outcome publishes is first written into the state as owed and flushed, then sent and
flushed, then cleared: a kill at any point leaves either no trace of the outcome or its debts,
which the next event of that model (or the timer) sends again — a command only if its topic
does not have it yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import faust
import orjson
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from rollguard import metrics, topics
from rollguard.authority import Identity, TokenRegistry, TokenSource
from rollguard.bus import Admission, DeadLetterSink, client_options, read_topic, refusal
from rollguard.errors import BrokerUnavailable
from rollguard.events import (
    Approval,
    Breach,
    CommandAck,
    Event,
    HealthCheckEvent,
    RollbackRequest,
    Signed,
    SystemManifest,
    TrafficReport,
    decode,
    utcnow,
)
from rollguard.logs import get_logger
from rollguard.outage import OutageLimit
from rollguard.policy import PolicySource
from rollguard.settings import RollguardSettings
from rollguard.signing import Signer, Trust, TrustSource
from rollguard_services.decider.approvals import FUTURE_SKEW, approve, out_of_time, request
from rollguard_services.decider.breaches import decide, deployed_late
from rollguard_services.decider.context import NEVER, DecisionContext
from rollguard_services.decider.delivery import ConfirmedTable, Delivery
from rollguard_services.decider.outcome import DECIDER_ID, Outcome, observe
from rollguard_services.decider.settings import STATE_TABLE, DeciderSettings
from rollguard_services.decider.stall import StallWatch
from rollguard_services.decider.state import (
    FINAL_ACKS,
    ModelState,
    Owed,
    apply_ack,
    apply_health,
    apply_manifest,
    apply_traffic,
    taken,
    taken_person,
)
from rollguard_services.decider.status import status_change
from rollguard_services.decider.timers import (
    TICK_STEPS,
    Deadlines,
    due,
    expire_in_flight,
    expiring,
    next_due,
)

log = get_logger("rollguard.decider")
E = TypeVar("E", bound=Event)


def faust_broker_options(settings: RollguardSettings) -> dict[str, Any]:
    """The same connection settings as every other client, in faust's terms."""
    opts = client_options(settings)
    hosts = opts["bootstrap_servers"].split(",")
    out: dict[str, Any] = {
        "broker": ";".join(f"kafka://{h.strip()}" for h in hosts),
        "broker_client_id": opts["client_id"],
    }
    context: ssl.SSLContext | None = opts.get("ssl_context")
    if settings.security_protocol.startswith("SASL"):
        out["broker_credentials"] = faust.SASLCredentials(
            username=opts["sasl_plain_username"],
            password=opts["sasl_plain_password"],
            mechanism=opts["sasl_mechanism"],
            ssl_context=context,
        )
    elif context is not None:
        out["broker_credentials"] = faust.SSLCredentials(context)
    return out


async def final_ack_on_topic(
    settings: RollguardSettings, state: ModelState, trust: Trust
) -> CommandAck | None:
    """The final ack of the model's command in flight, if the acks topic has one.

    Asked before a command is called unacknowledged: its ack may be on the topic and not yet
    read by the ack agent. Past a broker outage longer than the command's TTL, the executor
    acked as the broker came back, 80 ms before the decider's tick expired the command; the
    ack agent read the ack 0.8 s later, too late, and an applied rollback was escalated as
    unacknowledged and never verified. Raises BrokerUnavailable when the topic cannot be
    read: no time to decide."""
    assert state.in_flight is not None
    command_id, key = state.in_flight.command_id, state.model_id.encode()
    try:
        records = await read_topic(settings, topics.ACKS.name)
    except KafkaError as exc:
        raise BrokerUnavailable(f"reading {topics.ACKS.name}: {exc}") from exc
    for record in records:
        if record.key != key:
            continue
        try:
            ack = decode(CommandAck, record.value)
        except (ValidationError, ValueError):
            continue  # the ack agent dead-letters it
        if (
            ack.command_id == command_id
            and ack.component is None
            and ack.status in FINAL_ACKS
            and trust.check(ack).ok  # a forged ack the ack agent dead-letters
        ):
            return ack
    return None


def owed_by(outcome: Outcome, signer: Signer) -> tuple[Owed, ...]:
    """Every event an outcome publishes, signed, in the order it is sent."""
    owed = [
        Owed(topic="decisions", value=signer.sign(d).encode().decode()) for d in outcome.decisions
    ]
    if outcome.command is not None:  # signed as it was made (outcome.signed_command)
        owed.append(
            Owed(
                topic="commands",
                value=outcome.command.encode().decode(),
                command_id=outcome.command.command_id,
            )
        )
    owed += [Owed(topic="acks", value=signer.sign(a).encode().decode()) for a in outcome.acks]
    owed += [
        Owed(topic="deployments", value=signer.sign(m).encode().decode()) for m in outcome.manifests
    ]
    return tuple(owed)


class Decider:
    name = "decider"

    def __init__(
        self,
        settings: RollguardSettings,
        policy: PolicySource,
        signer: Signer,
        decider_settings: DeciderSettings,
        tokens: TokenRegistry | None = None,
        trust: Trust | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.signer = signer
        #: What is acted on: events signed by keys trusted for their type (rollguard.signing).
        self.admission = Admission(trust or TrustSource(settings), self.name)
        self.admission.expect("deployer", "detector", "executor")
        self.svc = decider_settings
        self._tick = timedelta(seconds=decider_settings.tick_s)
        self.deadlines = Deadlines()
        self._rescan_asked = False
        #: When the partitions we hold last changed (DecisionContext.resumed_at).
        self.resumed_at = NEVER
        #: Followed as the file changes, unless fixed tokens are given (tests).
        self._token_source: TokenSource | None = None
        if tokens is None:
            self._token_source = TokenSource(settings.resolved_tokens_file)
            tokens = self._token_source.current
        self._token_error: str | None = None
        self._use_tokens(tokens)
        self.ready = asyncio.Event()
        self.counts: Counter[str] = Counter()

    def context(self, model_id: str, now: datetime | None = None) -> DecisionContext:
        """The policy in force for the model, the clock, the signing key: what a decision
        function is given besides the state and its input."""
        return DecisionContext(
            policy=self.policy.for_model(model_id),
            now=now if now is not None else utcnow(),
            signer=self.signer,
            traffic_grace=timedelta(seconds=self.svc.traffic_grace_s),
            resumed_at=self.resumed_at,
        )

    def _use_tokens(self, tokens: TokenRegistry) -> None:
        """The people of ``tokens``: who a request or an approval names (its ``key_id``),
        their keys trusted as operator keys for it."""
        self.tokens = tokens
        self.admission.with_people(tokens.trust)
        if tokens.legacy:
            log.warning(
                "tokens_legacy_ignored",
                entries=tokens.legacy,
                detail="tokens file entries with only a sha256 (an older rollguard) can no "
                "longer approve: give each person a new token (rollguard tokens create)",
            )

    def reload(self) -> None:
        """SIGHUP: reload policy and tokens; a bad policy keeps the last good one."""
        self.policy.refresh(force=True)
        self._refresh_tokens(force=True)
        self._rescan_asked = True  # deadlines follow the policy (bake_s, ...)

    def _refresh_tokens(self, *, force: bool = False) -> None:
        source = self._token_source
        if source is None:
            return
        if source.refresh(force=force):
            self._use_tokens(source.current)
            log.info("tokens_reloaded", path=str(source.path), tokens=len(self.tokens))
        if source.last_error != self._token_error:  # say it once per bad version of the file
            self._token_error = source.last_error
            if source.last_error is not None:
                log.error("tokens_rejected", error=source.last_error, kept="last good tokens")

    def build_app(self) -> faust.App:
        s = self.settings
        app = faust.App(
            f"{s.topic_prefix}{self.svc.app_id}",
            **faust_broker_options(s),
            store=self.svc.store,
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication_factor,
            producer_acks=-1,
            broker_session_timeout=s.session_timeout_ms / 1000,
            broker_heartbeat_interval=s.heartbeat_interval_ms / 1000,
            broker_rebalance_timeout=s.rebalance_timeout_ms / 1000,
            consumer_auto_offset_reset="earliest",
            web_enabled=False,
            # No on_leader timers here: without faust's leader topic, the decider needs no
            # topic but those `rollguard topics create` makes (least privilege, no Create).
            topic_disable_leader=True,
            loop=asyncio.get_running_loop(),
        )

        def raw(name: str, **kw: Any) -> faust.TopicT:
            return app.topic(s.topic(name), key_serializer="raw", value_serializer="raw", **kw)

        deployments, breaches, acks = raw("deployments"), raw("breaches"), raw("acks")
        approvals, requests, health = raw("approvals"), raw("requests"), raw("health")
        decisions_out, commands_out = raw("decisions"), raw("commands")
        traffic = raw(topics.TRAFFIC.name)
        status_out = raw(topics.MODEL_STATUS.name)
        ticks = app.topic(
            self.svc.ticks_topic(s.topic_prefix),
            key_serializer="raw",
            value_serializer="raw",
            partitions=s.partitions,
            internal=True,
        )
        states = ConfirmedTable(  # made as app.Table makes one
            app,
            name=STATE_TABLE,
            beacon=app.tables.beacon,
            partitions=s.partitions,
            key_type=str,
            value_type=str,
        )
        app.tables.add(states)
        delivery = Delivery(app, OutageLimit(s.broker_outage_limit_s), self.counts)

        async def send(topic: str, value: bytes, key: bytes | None) -> object:
            raw_topic = app.topic(topic, key_serializer="raw", value_serializer="raw")
            return await delivery.send(raw_topic, key, value)

        dead_letters = DeadLetterSink(s, send, self.name)
        admission = self.admission

        outputs = {
            "decisions": decisions_out,
            "commands": commands_out,
            "acks": acks,
            "deployments": deployments,
        }
        # One event at a time per model: a handler holds its model from load to store, so two
        # agents (a breach and a tick, say) never write over each other's state.
        locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

        # When each model next has something due: the timer looks at those models only. Every
        # state stored here reschedules its model; the whole table is read once after a
        # rebalance (the partitions we hold changed) and after a policy reload (bake_s, ...).
        deadlines = self.deadlines = Deadlines()
        rescan = [True]
        scanned: list[Any] = [-1, utcnow()]  # (table size, next safety rescan) at the last scan

        def keep(state: ModelState, encoded: str) -> None:
            states[state.model_id] = encoded
            deadlines.schedule(state.model_id, next_due(state, self.context(state.model_id)))

        def load(model_id: str) -> ModelState:
            stored = states.get(model_id)
            if stored is None:
                return ModelState(model_id=model_id)
            return ModelState.model_validate_json(stored)

        @contextlib.asynccontextmanager
        async def model(model_id: str) -> AsyncIterator[ModelState]:
            """The model's state, held; debts a killed run left are settled first."""
            async with locks[model_id]:
                state = load(model_id)
                if state.owed:
                    state = await settle(state)
                yield state

        async def send_owed(model_id: str, owed: tuple[Owed, ...]) -> None:
            key = model_id.encode()
            await delivery.send_all([(outputs[i.topic], key, i.value.encode()) for i in owed])

        async def settle(state: ModelState) -> ModelState:
            """Send again what a run killed mid-publish owed; a command only if it is not on
            its topic (the executor would refuse a second copy as a replay)."""
            owed = state.owed
            if any(item.command_id for item in owed):
                on_topic = {
                    orjson.loads(r.value).get("command_id")
                    for r in await read_topic(s, topics.COMMANDS.name)
                    if r.key == state.model_id.encode()
                }
                owed = tuple(
                    i for i in owed if i.command_id is None or i.command_id not in on_topic
                )
            await send_owed(state.model_id, owed)
            settled = state.model_copy(update={"owed": ()})
            keep(settled, settled.model_dump_json())
            await delivery.confirm(states)
            self.counts["owed_resent"] += len(owed)
            log.warning(
                "owed_resent",
                model_id=state.model_id,
                events=[i.topic for i in owed],
                already_published=len(state.owed) - len(owed),
            )
            return settled

        async def store(before: ModelState, after: ModelState, now: datetime) -> None:
            """Keep the new state, durably before the input counts as handled; publish the
            model's status when what it shows changed.

            faust commits the offset of an event once its handler returns, whether or not the
            changelog write it made has left the producer: killed in between, a restarted
            decider had lost an applied ack (its offset committed, its effect not) and
            escalated a rollback that had succeeded as unacknowledged. So a changed state is
            flushed here."""
            encoded = after.model_dump_json()
            status = status_change(before, after, now)
            if status is not None:
                await delivery.send(status_out, status.key, self.signer.sign(status).encode())
                self.counts["status_published"] += 1
            if encoded != states.get(after.model_id):
                keep(after, encoded)
                await delivery.confirm(states)

        async def publish(before: ModelState, outcome: Outcome, now: datetime) -> None:
            """Owed, flushed; sent, flushed; cleared (see the module's docstring)."""
            model_id = outcome.state.model_id
            owed = owed_by(outcome, self.signer)
            if owed:
                owing = outcome.state.model_copy(update={"owed": owed})
                keep(owing, owing.model_dump_json())
                await delivery.confirm(states)
                await send_owed(model_id, owed)
            observe(outcome)
            for decision in outcome.decisions:
                self.counts[f"decision_{decision.action}"] += 1
                log.warning(
                    "decision",
                    model_id=decision.model_id,
                    model_version=decision.model_version,
                    action=decision.action,
                    rollback_level=decision.level,
                    reasons=[r.code for r in decision.reasons],
                    command_id=decision.command_id,
                )
            for ack in outcome.acks:
                self.counts[f"ack_{ack.status}"] += 1
            for manifest in outcome.manifests:
                self.counts[f"manifest_{manifest.status}"] += 1
            # Last, so whoever sees a command in flight in the status finds it on its topic.
            await store(before, outcome.state.model_copy(update={"owed": ()}), now)

        #: (topic, partition) → records behind its highwater after the last one read
        lag: dict[tuple[str, int], int] = {}

        def lag_now() -> None:
            """rollguard_consumer_lag_records per input topic, over the partitions held."""
            held = {(tp.topic, tp.partition) for tp in app.consumer.assignment()}
            for key in [k for k in lag if k not in held]:
                del lag[key]
            for topic in inputs:
                behind = sum(v for (t, _), v in lag.items() if t == topic)
                metrics.CONSUMER_LAG.labels(self.name, topic).set(behind)

        async def each(
            stream: faust.StreamT[Any], cls: type[E], handle: Callable[[E], Awaitable[None]]
        ) -> None:
            async for event in stream.events():
                msg = event.message
                metrics.EVENTS_CONSUMED.labels(self.name, msg.topic).inc()
                stall.took(msg.topic, msg.partition, msg.offset)
                high = app.consumer.highwater(msg.tp)
                if high is not None:
                    lag[(msg.topic, msg.partition)] = max(0, high - msg.offset - 1)
                try:
                    parsed = decode(cls, msg.value)
                except (ValidationError, ValueError) as exc:
                    kind, why = refusal(exc)  # malformed bytes or an invalid event
                    await dead_letters.send(msg, why[:2000], kind)
                    continue
                if isinstance(parsed, Signed):
                    verdict = admission.verdict(parsed)
                    if not verdict.ok:
                        await dead_letters.send(msg, verdict.refusal, "untrusted")
                        continue
                if isinstance(parsed, RollbackRequest | Approval):
                    late = out_of_time(parsed, utcnow(), self.svc.people_input_ttl_s)
                    if late is not None:
                        admission.counts["expired"] += 1
                        await dead_letters.send(msg, late, "untrusted")
                        continue
                self.counts[cls.__name__] += 1
                await handle(parsed)

        def replayed(event: Event, model_id: str) -> None:
            self.counts["replays_ignored"] += 1
            log.warning(
                "replay_ignored",
                model_id=model_id,
                event_type=type(event).__name__,
                event_id=event.event_id,
            )

        async def on_manifest(manifest: SystemManifest) -> None:
            async with model(manifest.model_id) as before:
                fresh = taken(before, manifest.event_id)
                if fresh is None:
                    return replayed(manifest, manifest.model_id)
                after, late = deployed_late(fresh, apply_manifest(fresh, manifest), manifest)
                ctx = self.context(manifest.model_id)
                outcome = decide(after, late, ctx, late=True) if late is not None else None
                if outcome is not None and outcome.decisions:  # its breach came first
                    self.counts["breaches_decided_late"] += 1
                    await publish(before, outcome, ctx.now)
                else:
                    await store(before, outcome.state if outcome else after, ctx.now)
            arrived.pop(manifest.model_id, asyncio.Event()).set()  # wakes a waiting breach
            log.info(
                "manifest",
                model_id=manifest.model_id,
                model_version=manifest.model_version,
                system_version=manifest.system_version,
                status=manifest.status,
            )

        async def on_ack(ack: CommandAck) -> None:
            if ack.executor_id == DECIDER_ID:
                return  # our own verified acks
            async with model(ack.model_id) as before:
                ctx = self.context(ack.model_id)
                after = apply_ack(before, ack, ctx)
                await store(before, after, ctx.now)
            if after.verifying is not None and after.verifying != before.verifying:
                applied = after.verifying.metrics.get("time_to_applied_s")
                if applied is not None:  # bad version live → the rollback applied
                    metrics.TIME_TO_ROLLBACK.observe(applied)
            log.info(
                "ack",
                model_id=ack.model_id,
                command_id=ack.command_id,
                status=ack.status,
                component=ack.component,
                ends_flight=before.in_flight is not None and after.in_flight is None,
            )

        async def on_health(check: HealthCheckEvent) -> None:
            async with model(check.model_id) as before:
                await store(before, apply_health(before, check), utcnow())

        async def on_traffic(report: TrafficReport) -> None:
            # A report per active version every few seconds: read cheaply, stored only when it
            # counts towards a verification.
            if not states.get(report.model_id):
                return
            async with model(report.model_id) as before:
                after = apply_traffic(before, report)
                if after is not before:
                    await store(before, after, utcnow())
                    self.counts["traffic_counted"] += 1

        # A new version's first breach can be read before its deployment (another topic,
        # another agent): held as not_live_version it would cost the incident its rollback.
        arrived: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        #: (model, version) → until when (loop time) its breaches wait for its manifest.
        waiting: dict[tuple[str, str], float] = {}
        parked = [0]  # breaches waiting right now

        def deployed(state: ModelState, version: str) -> bool:
            return any(
                m is not None and m.model_version == version
                for m in [state.live, *state.known_good]
            )

        def known(state: ModelState, version: str) -> bool:
            """Seen before: deployed, or breached already (a version rolled back away from
            has no manifest left in the state, and none is coming)."""
            return (
                deployed(state, version) or version in state.last_breach or (version in state.quiet)
            )

        async def manifest_of(breach: Breach) -> None:
            """Wait, up to ``manifest_wait_s`` from the version's first such breach, until a
            manifest of the breach's version is stored: only for a breach made just now of a
            version the decider has never seen; breaches of it read meanwhile (side by side)
            wait for the same time, later ones not at all."""
            key = (breach.model_id, breach.model_version)
            limit = self.svc.manifest_wait_s
            fresh = utcnow() - breach.ts < timedelta(seconds=max(limit, 1.0) * 4)
            state = load(breach.model_id)
            if not fresh or known(state, key[1]):
                return
            # Never more than half the breach actors parked here: the rest keep the stream
            # (and the deployments it waits for) moving.
            if key not in waiting and parked[0] >= max(1, self.svc.breach_concurrency // 2):
                return
            loop = asyncio.get_running_loop()
            if key not in waiting:
                if len(waiting) >= 10_000:
                    waiting.clear()
                waiting[key] = loop.time() + limit
                self.counts["breaches_waited_for_manifest"] += 1
            until = waiting[key]
            parked[0] += 1
            try:
                while (
                    not deployed(load(breach.model_id), key[1])
                    and (left := until - loop.time()) > 0
                ):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(arrived[breach.model_id].wait(), left)
            finally:
                parked[0] -= 1
            log.info(
                "breach_waited_for_manifest",
                model_id=key[0],
                model_version=key[1],
                deployed=deployed(load(breach.model_id), key[1]),
            )

        async def on_breach(breach: Breach) -> None:
            await manifest_of(breach)
            async with model(breach.model_id) as before:
                ctx = self.context(breach.model_id)
                outcome = decide(before, breach, ctx)
                if outcome is None:
                    self.counts["duplicate_breaches"] += 1
                    return
                if not outcome.decisions:
                    self.counts["breaches_quieted"] += 1  # a non-live version, said once
                await publish(before, outcome, ctx.now)

        def usable_until(event: RollbackRequest | Approval) -> datetime:
            """After this, ``out_of_time`` refuses ``event`` whatever is remembered."""
            return event.ts + timedelta(seconds=self.svc.people_input_ttl_s) + FUTURE_SKEW

        def signer_of_input(event: RollbackRequest | Approval) -> Identity | None:
            """The person whose key signed ``event``; nobody for an unsigned one (taken in
            warn mode), whose key_id anyone could have written."""
            return self.tokens.lookup(event.key_id) if event.signature else None

        async def on_request(req: RollbackRequest) -> None:
            who = signer_of_input(req)
            async with model(req.model_id) as before:
                fresh = taken_person(before, req.event_id, usable_until(req), utcnow())
                if fresh is None:
                    return replayed(req, req.model_id)
                ctx = self.context(req.model_id)
                await publish(before, request(fresh, req, who, ctx), ctx.now)

        async def on_approval(approval: Approval) -> None:
            who = signer_of_input(approval)
            async with model(approval.model_id) as before:
                fresh = taken_person(before, approval.event_id, usable_until(approval), utcnow())
                if fresh is None:
                    return replayed(approval, approval.model_id)
                ctx = self.context(approval.model_id)
                await publish(before, approve(fresh, approval, who, ctx), ctx.now)

        async def on_tick(model_id: str) -> None:
            async with model(model_id) as state:
                ctx = self.context(model_id)
                steps = TICK_STEPS
                if expiring(state, ctx):
                    try:
                        ack = await final_ack_on_topic(s, state, self.admission.trust)
                    except BrokerUnavailable as exc:
                        log.warning("expiry_deferred", model_id=model_id, error=str(exc)[:300])
                        steps = tuple(t for t in TICK_STEPS if t is not expire_in_flight)
                        ack = None
                    if ack is not None:
                        after = apply_ack(state, ack, ctx)
                        await store(state, after, ctx.now)
                        self.counts["acks_read_before_expiry"] += 1
                        log.info(
                            "ack",
                            model_id=model_id,
                            command_id=ack.command_id,
                            status=ack.status,
                            read_before_expiry=True,
                        )
                        state = after
                for step in steps:
                    outcome = step(state, ctx)
                    if outcome is not None:
                        await publish(state, outcome, ctx.now)
                        state = outcome.state

        @app.agent(deployments)
        async def deployment_agent(stream: faust.StreamT[Any]) -> None:
            await each(stream, SystemManifest, on_manifest)

        # Breaches of different models are decided side by side (a storm of a fleet's breaches
        # waits on the broker's acks, not on a core); those of one model still one at a time
        # (its lock), in whatever order they are read.
        @app.agent(breaches, concurrency=self.svc.breach_concurrency)
        async def breach_agent(stream: faust.StreamT[Any]) -> None:
            await each(stream, Breach, on_breach)

        @app.agent(traffic)
        async def traffic_agent(stream: faust.StreamT[Any]) -> None:
            await each(stream, TrafficReport, on_traffic)

        @app.agent(acks)
        async def ack_agent(stream: faust.StreamT[Any]) -> None:
            await each(stream, CommandAck, on_ack)

        @app.agent(health)
        async def health_agent(stream: faust.StreamT[Any]) -> None:
            await each(stream, HealthCheckEvent, on_health)

        @app.agent(requests)
        async def request_agent(stream: faust.StreamT[Any]) -> None:
            await each(stream, RollbackRequest, on_request)

        @app.agent(approvals)
        async def approval_agent(stream: faust.StreamT[Any]) -> None:
            await each(stream, Approval, on_approval)

        @app.agent(ticks)
        async def tick_agent(stream: faust.StreamT[Any]) -> None:
            async for event in stream.events():
                await on_tick(event.message.key.decode())

        @app.timer(self.svc.tick_s)  # type: ignore[untyped-decorator]  # faust's timer is untyped
        async def tick() -> None:
            reloaded = self.policy.refresh()
            self._refresh_tokens()
            now = utcnow()
            # Read the whole table again when what it holds may have changed without a
            # store of ours (a rebalance, the changelog still being recovered: its size
            # moved), after a policy reload, and every rescan_s as a safety net.
            asked, self._rescan_asked = self._rescan_asked, False
            if rescan[0] or reloaded or asked or len(states) != scanned[0] or now >= scanned[1]:
                rescan[0] = False
                for model_id, stored in list(states.items()):
                    state = ModelState.model_validate_json(stored)
                    deadlines.schedule(model_id, next_due(state, self.context(model_id, now)))
                scanned[:] = [len(states), now + timedelta(seconds=self.svc.rescan_s)]
                self.counts["timer_rescans"] += 1
            due_now: list[tuple[Any, bytes | None, bytes]] = []
            due_ids = deadlines.pop_due(now)
            for i, model_id in enumerate(due_ids):
                try:
                    stored = states.get(model_id)
                except Exception:
                    # Never lose a deadline to a failed look: the rest are looked at next tick.
                    for rest in due_ids[i:]:
                        deadlines.schedule(rest, now + self._tick)
                    raise
                if stored is None:  # a partition another worker holds now
                    continue
                state = ModelState.model_validate_json(stored)
                ctx = self.context(model_id, now)
                if state.owed or due(state, ctx):
                    due_now.append((ticks, model_id.encode(), b""))
                    # The tick's handler stores the new state and reschedules; should it find
                    # nothing to do after all, look again a few ticks on.
                    deadlines.schedule(model_id, now + 4 * self._tick)
                    continue
                later = next_due(state, ctx)
                # Due soon but not yet (a verification waiting out its traffic grace, say):
                # look again next tick.
                deadlines.schedule(
                    model_id, later if later is None or later > now else now + self._tick
                )
            self.counts["timer_ticks_sent"] += len(due_now)
            await delivery.send_all(due_now)
            if not app.in_recovery:
                self.counts["partitions_unstuck"] += len(await stall.check(app, inputs))
            lag_now()

        mine = s.topic(topics.BREACHES.name)
        stall = StallWatch()
        inputs = {
            t.get_topic_name()
            for t in (deployments, breaches, acks, approvals, requests, health, traffic)
        }

        @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # faust's stub wants a keyword-only signal arg
        async def _ready(sender: Any, *args: Any, **kwargs: Any) -> None:
            rescan[0] = True  # the partitions, and so the states, we hold changed
            self.resumed_at = utcnow()
            held = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == mine)
            log.info("partitions_assigned", topic=mine, partitions=held)
            self.ready.set()

        return app

    async def run(self) -> None:
        app = self.build_app()
        app.finalize()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no SIGHUP
            log.info("sighup_unavailable", hint="policy files are still watched for changes")
        log.info("started", bootstrap=self.settings.kafka_bootstrap, app_id=app.conf.id)
        try:
            await app.start()
            await asyncio.Event().wait()
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            await app.stop()
            refused = {f"untrusted_{k}": v for k, v in self.admission.counts.items()}
            log.info("stopped", **self.counts, **refused)
