"""Decider service (faust-streaming): breaches → decisions and signed rollback commands.

Low volume, stateful: per-model state (live manifest, known-good list, command in flight,
cooldown) lives in a faust table whose changelog makes it durable. deployments, breaches and
acks are all keyed by model_id and co-partitioned, so the worker that owns a model's
partition owns its state.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import faust
from pydantic import ValidationError

from rollguard.bus import DeadLetterSink, client_options
from rollguard.events import Breach, CommandAck, Event, SystemManifest, decode, utcnow
from rollguard.logs import get_logger
from rollguard.policy import PolicySet
from rollguard.settings import RollguardSettings
from rollguard.signing import Signer
from services.decider.decisions import ModelState, apply_ack, apply_manifest, decide
from services.decider.settings import DeciderSettings

log = get_logger("rollguard.decider")
E = TypeVar("E", bound=Event)


def faust_broker_options(settings: RollguardSettings) -> dict[str, Any]:
    """The same connection settings as every other client, in faust's terms."""
    opts = client_options(settings)
    hosts = opts["bootstrap_servers"].split(",")
    out: dict[str, Any] = {"broker": ";".join(f"kafka://{h.strip()}" for h in hosts)}
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


class Decider:
    name = "decider"

    def __init__(
        self,
        settings: RollguardSettings,
        policy: PolicySet,
        signer: Signer,
        decider_settings: DeciderSettings | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.signer = signer
        self.svc = decider_settings or DeciderSettings()
        self.ready = asyncio.Event()
        self.counts: Counter[str] = Counter()

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
            loop=asyncio.get_running_loop(),
        )

        def raw(name: str) -> faust.TopicT:
            return app.topic(s.topic(name), key_serializer="raw", value_serializer="raw")

        deployments, breaches, acks = raw("deployments"), raw("breaches"), raw("acks")
        decisions_out, commands_out = raw("decisions"), raw("commands")
        states = app.Table("model-state", partitions=s.partitions, key_type=str, value_type=str)

        async def send(topic: str, value: bytes, key: bytes | None) -> object:
            return await app.topic(topic, key_serializer="raw", value_serializer="raw").send(
                key=key, value=value
            )

        dead_letters = DeadLetterSink(s, send, self.name)

        def load(model_id: str) -> ModelState:
            stored = states.get(model_id)
            if stored is None:
                return ModelState(model_id=model_id)
            return ModelState.model_validate_json(stored)

        def save(state: ModelState) -> None:
            states[state.model_id] = state.model_dump_json()

        async def each(
            stream: faust.StreamT[Any], cls: type[E], handle: Callable[[E], Awaitable[None]]
        ) -> None:
            async for event in stream.events():
                msg = event.message
                try:
                    parsed = decode(cls, msg.value)
                except (ValidationError, ValueError) as exc:
                    await dead_letters.send(msg, str(exc)[:2000], "invalid")
                    continue
                self.counts[cls.__name__] += 1
                await handle(parsed)

        async def on_manifest(manifest: SystemManifest) -> None:
            save(apply_manifest(load(manifest.model_id), manifest))
            log.info(
                "manifest",
                model_id=manifest.model_id,
                model_version=manifest.model_version,
                system_version=manifest.system_version,
                status=manifest.status,
            )

        async def on_ack(ack: CommandAck) -> None:
            state = load(ack.model_id)
            save(apply_ack(state, ack, self.policy.for_model(ack.model_id)))

        async def on_breach(breach: Breach) -> None:
            outcome = decide(
                load(breach.model_id),
                breach,
                self.policy.for_model(breach.model_id),
                utcnow(),
                self.signer,
            )
            if outcome is None:
                self.counts["duplicate_breaches"] += 1
                return
            save(outcome.state)
            decision = outcome.decision
            await decisions_out.send(key=breach.key, value=decision.encode())
            if outcome.command is not None:
                await commands_out.send(key=breach.key, value=outcome.command.encode())
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

        @app.agent(deployments)
        async def deployment_agent(stream: faust.StreamT[Any]) -> None:
            await each(stream, SystemManifest, on_manifest)

        @app.agent(breaches)
        async def breach_agent(stream: faust.StreamT[Any]) -> None:
            await each(stream, Breach, on_breach)

        @app.agent(acks)
        async def ack_agent(stream: faust.StreamT[Any]) -> None:
            await each(stream, CommandAck, on_ack)

        @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # faust's stub wants a keyword-only signal arg
        async def _ready(sender: Any, *args: Any, **kwargs: Any) -> None:
            self.ready.set()

        return app

    async def run(self) -> None:
        app = self.build_app()
        app.finalize()
        log.info("started", bootstrap=self.settings.kafka_bootstrap, app_id=app.conf.id)
        try:
            await app.start()
            await asyncio.Event().wait()
        finally:
            await app.stop()
            log.info("stopped", **self.counts)
