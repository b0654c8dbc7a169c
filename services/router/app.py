"""Router service: serves synthetic traffic with the live version and follows the live pointer.

It reads rollguard.deployments from the beginning without a consumer group (every router
instance needs every pointer change), and emits prediction and latency events. A manifest
moves the pointer only when signed by a key trusted for it (deployer, or the decider for a
known-good mark, the executor for a rollback's move); any other is dead-lettered, untrusted.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from rollguard import topics
from rollguard.bus import Admission, DeadLetterSink, make_consumer, make_producer
from rollguard.events import SystemManifest, decode
from rollguard.logs import get_logger
from rollguard.outage import OutageLimit, Sender
from rollguard.sdk import Monitor
from rollguard.settings import RollguardSettings
from rollguard.signing import Trust, TrustSource
from rollguard_services.router.serving import Router, switch_report
from rollguard_services.router.settings import RouterSettings

log = get_logger("rollguard.router")


class RouterService:
    name = "router"

    def __init__(
        self,
        settings: RollguardSettings,
        router_settings: RouterSettings,
        *,
        trust: Trust | None = None,
    ) -> None:
        """``trust``: the keys whose manifests move the pointer (default: ``trust_of(settings)``,
        loaded when it starts)."""
        self.settings = settings
        self._trust = trust
        #: What moves the pointer: manifests signed by a key trusted for them.
        self.admission: Admission | None = None
        self.dead_letters: DeadLetterSink | None = None
        self._limit = OutageLimit(settings.broker_outage_limit_s)
        self.svc = router_settings
        self.ready = asyncio.Event()
        self.router = Router(
            self.svc.model_id,
            dict(self.svc.versions),
            np.random.default_rng(self.svc.seed),
            shadow_fraction=self.svc.shadow_fraction,
            input_shift=self.svc.input_shift,
        )
        self.counts: Counter[str] = Counter()
        #: The telemetry path, the SDK's: the router names each event's version itself.
        self.monitor = Monitor(self.svc.model_id, settings=settings, follow_live=False)
        #: Traffic can be paused (rate 0) without stopping the pointer follower.
        self.rate_rps = self.svc.rate_rps
        self._switches_logged = 0

    async def run(self) -> None:
        admission = Admission(self._trust or TrustSource(self.settings), self.name)
        admission.expect("deployer")
        self.admission = admission
        producer = make_producer(self.settings, control=False)
        consumer = make_consumer(self.settings, group_id=None, control=True)
        try:
            await producer.start()
            await consumer.start()
            # A refused manifest is rare (a forgery, a misconfigured key): one letter at a time
            # on the telemetry producer, waiting out an outage like the pointer does.
            self.dead_letters = DeadLetterSink(
                self.settings, Sender(producer, self._limit).send, self.name
            )
            topic = self.settings.topic(topics.DEPLOYMENTS.name)
            await consumer.topics()  # refreshes cluster metadata
            partitions = consumer.partitions_for_topic(topic) or set()
            consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
            await consumer.seek_to_beginning()
            log.info(
                "started",
                bootstrap=self.settings.kafka_bootstrap,
                model_id=self.svc.model_id,
                versions=sorted(self.svc.versions),
            )
            self.ready.set()
            await self.monitor.start()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._follow(consumer, admission, self.dead_letters))
                tasks.create_task(self._serve())
        finally:
            await self.monitor.stop(flush_s=1.0)
            await consumer.stop()
            await producer.stop()
            log.info(
                "stopped",
                served=dict(self.router.served),
                shadowed=dict(self.router.shadowed),
                telemetry_dropped=self.monitor.dropped(),
                telemetry_sent=self.monitor.stats["sent"],
            )

    async def _follow(
        self, consumer: AIOKafkaConsumer, admission: Admission, letters: DeadLetterSink
    ) -> None:
        while True:
            self._limit.check()
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    try:
                        manifest = decode(SystemManifest, record.value)
                    except (ValidationError, ValueError):
                        continue  # the decider dead-letters bad manifests; we only follow
                    if manifest.model_id != self.router.model_id:
                        continue  # another model's: its own consumers judge it
                    verdict = admission.verdict(manifest)
                    if not verdict.ok:
                        # Refused here too: it would have moved this router's traffic.
                        self.counts["manifests_untrusted"] += 1
                        await letters.send(record, verdict.refusal, "untrusted")
                        continue
                    if self.router.follow(manifest):
                        log.info(
                            "live_pointer",
                            model_id=manifest.model_id,
                            model_version=manifest.model_version,
                            system_version=manifest.system_version,
                            previous=self.router.previous,
                            offset=record.offset,
                        )

    async def _serve(self) -> None:
        """Serve ``rate_rps`` requests a second; their telemetry goes out through the SDK
        (rollguard.sdk.Monitor), as a model server's would: it never waits for it, and what it
        could not hand over (the broker away, no room) is dropped and counted."""
        loop = asyncio.get_running_loop()
        last, owed = loop.time(), 0.0
        while True:
            await asyncio.sleep(self.svc.tick_s)
            now = loop.time()
            owed += (now - last) * self.rate_rps
            last = now
            n = int(owed)
            owed -= n
            for event in self.router.serve(n):
                self.monitor.emit(event)
            self._log_switches()

    def _log_switches(self) -> None:
        """Log each switch once, when the new version has served its first request."""
        while self._switches_logged < len(self.router.switches):
            switch = self.router.switches[self._switches_logged]
            if switch.switch_ms is None:
                return
            self._switches_logged += 1
            log.info(
                "switched",
                model_id=self.router.model_id,
                model_version=switch.to_version,
                system_version=switch.system_version,
                switch_ms=round(switch.switch_ms, 3),
                propagation_ms=(
                    None if switch.propagation_ms is None else round(switch.propagation_ms, 3)
                ),
            )

    def switch_report(self) -> dict[str, float]:
        """Switch times so far: consumed → first served, and published → consumed (ms)."""
        return switch_report(self.router.switches)
