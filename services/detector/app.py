"""Detector service: consumes data topics in batches, keeps windows, publishes breaches.

The high-volume stage, so it is a plain aiokafka getmany loop, not a faust agent.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from aiokafka import ConsumerRecord

from rollguard import topics
from rollguard.bus import (
    DeadLetterSink,
    decode_batch,
    make_consumer,
    make_producer,
    producer_send,
)
from rollguard.detector_policy import ErrorRateConfig, LatencyConfig
from rollguard.events import Breach, LatencyEvent, PredictionEvent
from rollguard.logs import get_logger
from rollguard.policy import PolicySet
from rollguard.settings import RollguardSettings
from services.detector import detectors
from services.detector.settings import DetectorSettings
from services.detector.windows import LatencyWindow, LatencyWindows, VersionKey

log = get_logger("rollguard.detector")


@dataclass
class VersionSeen:
    """Since when, and how much, a model version has sent (for MTTD and blast radius)."""

    first_ts: float
    events: int = 0
    last_wall: float = 0.0


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
        self.seen: dict[VersionKey, VersionSeen] = {}
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
            self._forget_quiet_versions(time.time())
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
        now = time.time()
        for key, events in groups.items():
            seen = self.seen.setdefault(key, VersionSeen(events[0].ts.timestamp()))
            seen.events += len(events)
            seen.last_wall = now
            closed += self.windows.add(
                key,
                events[-1].system_version,
                np.fromiter((e.ts.timestamp() for e in events), np.float64, len(events)),
                np.fromiter((e.latency_ms for e in events), np.float64, len(events)),
                np.fromiter((e.status == "error" for e in events), np.bool_, len(events)),
            )
        return closed

    def _forget_quiet_versions(self, now: float) -> None:
        """Versions that stopped sending are forgotten after a TTL: state stays bounded."""
        quiet = [k for k, v in self.seen.items() if now - v.last_wall > self.svc.version_ttl_s]
        for key in quiet:
            del self.seen[key]

    async def _count_predictions(self, records: list[ConsumerRecord[Any, Any]]) -> None:
        good, rejected = decode_batch(records, PredictionEvent)
        await self.dead_letters.reject_all(rejected)
        self.counts["prediction_events"] += len(good)
        self.counts["dead_letters"] += len(rejected)

    def judge(self, window: LatencyWindow) -> list[Breach]:
        """Run the window's detectors; one Breach per measurement in phase ``breach``."""
        policy = self.policy.for_model(window.model_id)
        found: list[tuple[str, detectors.Measurement, str]] = []
        for name, config in policy.detectors.items():
            if not config.enabled:
                continue
            if isinstance(config, ErrorRateConfig):
                m = detectors.error_rate(
                    window.errors,
                    window.n,
                    threshold=config.threshold,
                    min_events=config.min_events,
                    confidence=config.confidence,
                )
            elif isinstance(config, LatencyConfig):
                m = detectors.latency(
                    window.counts,
                    sla_ms=config.sla_ms,
                    p99_multiplier=config.p99_multiplier,
                    min_events=config.min_events,
                )
            else:
                continue
            found.append((name, m, config.tier))
        seen = self.seen.get((window.model_id, window.model_version))
        breaches = []
        for name, m, tier in found:
            log.debug(
                "measurement",
                model_id=window.model_id,
                model_version=window.model_version,
                detector=name,
                phase=m.phase,
                value=m.value,
                n=m.n,
            )
            if m.phase != "breach":
                continue
            evidence = dict(m.evidence)
            evidence["kind"] = m.detector
            if seen is not None:
                # What the decider needs for MTTD (first event → breach) and blast radius.
                evidence["version_first_event_ts"] = seen.first_ts
                evidence["version_events"] = seen.events
            breaches.append(
                Breach(
                    model_id=window.model_id,
                    model_version=window.model_version,
                    system_version=window.system_version,
                    detector=name,
                    signal=m.signal,
                    statistic=m.statistic,
                    value=m.value,
                    p_value=m.p_value,
                    threshold=m.threshold,
                    window_start=datetime.fromtimestamp(window.start, UTC),
                    window_end=datetime.fromtimestamp(window.end, UTC),
                    n=m.n,
                    tier=tier,
                    evidence=evidence,
                )
            )
        return breaches
