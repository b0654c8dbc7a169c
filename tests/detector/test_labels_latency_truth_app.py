"""PSI on label predictions, latency percentiles and the ground-truth join, through the broker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import numpy as np
import pytest

from rollguard import baselines as bl
from rollguard import topics
from rollguard.bus import make_producer
from rollguard.events import Breach, LatencyEvent, OutcomeEvent, PredictionEvent, utcnow
from rollguard.policy import PolicySet
from rollguard.settings import RollguardSettings
from rollguard_services.detector.app import Detector
from rollguard_services.detector.settings import DetectorSettings
from tests.conftest import TopicReader, until
from tests.factories import manifest, signed

pytestmark = pytest.mark.broker

LABELS = np.array(["a", "b", "c"])
COMMON = {"model_id": "m", "model_version": "v2"}


async def _breaches(reader: TopicReader, wanted: set[str]) -> dict[str, Breach]:
    found: dict[str, Breach] = {}
    for record in await reader.read(
        topics.BREACHES.name,
        until=lambda r: wanted <= {Breach.model_validate_json(x.value).detector for x in r},
        timeout_s=30,
    ):
        breach = Breach.model_validate_json(record.value)
        found.setdefault(breach.detector, breach)
    return found


async def test_label_mix_slow_responses_and_wrong_outcomes_breach(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    keys: str,
) -> None:
    rng = np.random.default_rng(5)
    await publish(
        topics.DEPLOYMENTS.name, signed(manifest("v1", status="known_good"), topics_ready)
    )
    await publish(topics.DEPLOYMENTS.name, signed(manifest("v2", status="live"), topics_ready))
    baseline = list(rng.choice(LABELS, 4000, p=[0.5, 0.3, 0.2]))
    producer = make_producer(topics_ready, control=True)
    await producer.start()
    try:
        snapshots = bl.snapshots_from_table("m", "v1", {"prediction": baseline}, source="test")
        await bl.publish(
            producer,
            topics_ready.topic(topics.BASELINES.name),
            [signed(s, topics_ready) for s in snapshots],
        )
    finally:
        await producer.stop()

    start = (utcnow() - timedelta(seconds=20)).replace(microsecond=0)
    predicted: list[str] = []
    for w in range(3):  # the mix moves from 50/30/20 to 20/30/50: PSI about 0.55
        at = start + timedelta(seconds=w)
        for i, label in enumerate(rng.choice(LABELS, 400, p=[0.2, 0.3, 0.5])):
            predicted.append(str(label))
            await publish(
                topics.PREDICTIONS.name,
                PredictionEvent(
                    ts=at + timedelta(milliseconds=2 * i),
                    request_id=f"r{len(predicted) - 1}",
                    prediction=str(label),
                    **COMMON,
                ),
            )
    for i in range(101):  # 800 ms each against a 100 ms SLA; the last one closes the window
        await publish(
            topics.LATENCY.name,
            LatencyEvent(
                ts=start + timedelta(seconds=5 if i == 100 else 0, milliseconds=i),
                request_id=f"l{i}",
                latency_ms=800.0,
                status="ok",
                **COMMON,
            ),
        )

    detector = Detector(topics_ready, PolicySet(), DetectorSettings(group_id="labels", seed=3))
    task = asyncio.create_task(detector.run())
    try:
        found = await _breaches(reader, {"prediction_psi", "latency"})
        psi, latency = found["prediction_psi"], found["latency"]
        assert (psi.signal, psi.tier, psi.kind) == ("prediction", "rapid", "psi")
        assert psi.value > 0.25
        assert (latency.tier, latency.statistic) == ("immediate", "p99_ms")
        assert latency.value > 500

        # Outcomes arrive late: right for the first 200 predictions, wrong for the next 300.
        for i in range(500):
            right = predicted[i]
            wrong = "b" if right != "b" else "a"
            await publish(
                topics.OUTCOMES.name,
                OutcomeEvent(request_id=f"r{i}", outcome=right if i < 200 else wrong, **COMMON),
            )
        await until(lambda: detector.counts["outcomes_joined"] >= 500, timeout_s=30)
        # The next window of v2 to close is judged with the loss seen so far.
        later = utcnow() - timedelta(seconds=3)
        for i in range(5):
            await publish(
                topics.PREDICTIONS.name,
                PredictionEvent(ts=later, request_id=f"late{i}", prediction="a", **COMMON),
            )
        truth = (await _breaches(reader, {"ground_truth"}))["ground_truth"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert (truth.tier, truth.statistic, truth.signal) == (
        "delayed",
        "page_hinkley",
        "outcome_loss",
    )
    assert truth.value > 50 and truth.n == 500
    assert truth.evidence["mean_loss"] == pytest.approx(300 / 500)
