"""Detector service: consumes data topics in batches, keeps windows, publishes breaches.

The high-volume stage, so it is a plain aiokafka getmany loop, not a faust agent.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import numpy as np
import structlog
from aiokafka import ConsumerRecord

from rollguard import topics
from rollguard.bus import (
    DeadLetterSink,
    decode_batch,
    make_consumer,
    make_producer,
    producer_send,
)
from rollguard.events import Breach, LatencyEvent, PredictionEvent
from rollguard.logs import get_logger
from rollguard.policy import PolicySet
from rollguard.settings import RollguardSettings
from services.detector import detectors
from services.detector.settings import DetectorSettings
from services.detector.windows import LatencyWindow, LatencyWindows, VersionKey

log = get_logger("rollguard.detector")


class Detector:
    name = "detector"

    def __init__(
        self,
        settings: RollguardSettings,
        policy: PolicySet,
        detector_settings: DetectorSettings | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.svc = detector_settings or DetectorSettings()
        self.ready = asyncio.Event()
        self.windows = LatencyWindows(lambda model_id: policy.for_model(model_id).window)
        self.counts: Counter[str] = Counter()
        self._latency_topic = settings.topic(topics.LATENCY.name)
        self._predictions_topic = settings.topic(topics.PREDICTIONS.name)
        self._breach_topic = settings.topic(topics.BREACHES.name)

    async def run(self) -> None:
        consumer = make_consumer(
            self.settings,
            self._latency_topic,
            self._predictions_topic,
            group_id=self.svc.group_id,
            control=False,
            fetch_max_wait_ms=self.svc.fetch_max_wait_ms,
            max_poll_records=self.svc.max_batch,
        )
        producer = make_producer(self.settings, control=True)
        try:
            await producer.start()
            await consumer.start()
            self.dead_letters = DeadLetterSink(self.settings, producer_send(producer), self.name)
            log.info("started", bootstrap=self.settings.kafka_bootstrap, group=self.svc.group_id)
            await self._loop(consumer, producer)
        finally:
            await consumer.stop()
            await producer.stop()
            log.info("stopped", **self.counts)

    async def _loop(self, consumer: Any, producer: Any) -> None:
        while True:
            batches = await consumer.getmany(
                timeout_ms=self.svc.poll_timeout_ms, max_records=self.svc.max_batch
            )
            if not self.ready.is_set() and consumer.assignment():
                self.ready.set()
            closed: list[LatencyWindow] = []
            for tp, records in batches.items():
                if tp.topic == self._latency_topic:
                    closed += await self._fold_latency(records)
                else:
                    await self._count_predictions(records)
            closed += self.windows.close_idle(time.time())
            for window in closed:
                for breach in self.judge(window):
                    await producer.send_and_wait(
                        self._breach_topic, breach.encode(), key=breach.key
                    )
                    self.counts["breaches"] += 1
                    log.warning(
                        "breach",
                        model_id=breach.model_id,
                        model_version=breach.model_version,
                        detector=breach.detector,
                        value=round(breach.value, 4),
                        threshold=breach.threshold,
                        n=breach.n,
                        tier=breach.tier,
                    )
            if batches:
                await consumer.commit()

    async def _fold_latency(self, records: list[ConsumerRecord[Any, Any]]) -> list[LatencyWindow]:
        good, rejected = decode_batch(records, LatencyEvent)
        await self.dead_letters.reject_all(rejected)
        self.counts["latency_events"] += len(good)
        self.counts["dead_letters"] += len(rejected)
        groups: dict[VersionKey, list[LatencyEvent]] = defaultdict(list)
        for _, event in good:
            groups[(event.model_id, event.model_version)].append(event)
        closed: list[LatencyWindow] = []
        for key, events in groups.items():
            closed += self.windows.add(
                key,
                events[-1].system_version,
                np.fromiter((e.ts.timestamp() for e in events), np.float64, len(events)),
                np.fromiter((e.latency_ms for e in events), np.float64, len(events)),
                np.fromiter((e.status == "error" for e in events), np.bool_, len(events)),
            )
        return closed

    async def _count_predictions(self, records: list[ConsumerRecord[Any, Any]]) -> None:
        good, rejected = decode_batch(records, PredictionEvent)
        await self.dead_letters.reject_all(rejected)
        self.counts["prediction_events"] += len(good)
        self.counts["dead_letters"] += len(rejected)

    def judge(self, window: LatencyWindow) -> list[Breach]:
        """Run the window's detectors; one Breach per measurement in phase ``breach``."""
        policy = self.policy.for_model(window.model_id)
        found: list[tuple[detectors.Measurement, str]] = []
        if policy.error_rate.enabled:
            m = detectors.error_rate(
                window.errors,
                window.n,
                threshold=policy.error_rate.threshold,
                min_events=policy.error_rate.min_events,
                confidence=policy.error_rate.confidence,
            )
            found.append((m, policy.error_rate.tier))
        if policy.latency.enabled:
            m = detectors.latency(
                window.counts,
                sla_ms=policy.latency.sla_ms,
                p99_multiplier=policy.latency.p99_multiplier,
                min_events=policy.latency.min_events,
            )
            found.append((m, policy.latency.tier))
        breaches = []
        for m, tier in found:
            structlog.get_logger("rollguard.detector").debug(
                "measurement",
                model_id=window.model_id,
                model_version=window.model_version,
                detector=m.detector,
                phase=m.phase,
                value=m.value,
                n=m.n,
            )
            if m.phase != "breach":
                continue
            breaches.append(
                Breach(
                    model_id=window.model_id,
                    model_version=window.model_version,
                    system_version=window.system_version,
                    detector=m.detector,
                    signal=m.signal,
                    statistic=m.statistic,
                    value=m.value,
                    p_value=m.p_value,
                    threshold=m.threshold,
                    window_start=datetime.fromtimestamp(window.start, UTC),
                    window_end=datetime.fromtimestamp(window.end, UTC),
                    n=m.n,
                    tier=tier,
                    evidence=m.evidence,
                )
            )
        return breaches
