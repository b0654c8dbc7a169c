"""Drift detection through the broker: baseline from the topic, sustained KS breach, bad input."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import numpy as np
import orjson
import pytest

from rollguard import baselines as bl
from rollguard import topics
from rollguard.bus import make_producer
from rollguard.detector_policy import FalseAlarmPolicy
from rollguard.events import Breach, DeadLetter, PredictionEvent, utcnow
from rollguard.policy import ModelPolicy, PolicySet
from rollguard.settings import RollguardSettings
from rollguard_services.detector.app import Detector
from rollguard_services.detector.settings import DetectorSettings
from tests.conftest import TopicReader, run_until
from tests.factories import manifest, signed

pytestmark = pytest.mark.broker


def predictions(version: str, n: int, shift: float, seed: int) -> list[PredictionEvent]:
    rng = np.random.default_rng(seed)
    start = utcnow() - timedelta(seconds=10)
    start = start.replace(microsecond=0)
    return [
        PredictionEvent(
            ts=start + timedelta(milliseconds=2.5 * i),  # 400 per 1 s window
            model_id="m",
            model_version=version,
            request_id=f"{version}-{i}",
            prediction=float(rng.normal(shift, 1)),
            features={"f0": float(rng.normal(0, 1))},
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("severe", [True, False], ids=["severe-in-the-first-window", "k-of-n"])
async def test_sustained_ks_breach_against_the_published_baseline(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    keys: str,
    severe: bool,
) -> None:
    """A 1-sigma shift (KS D about 0.4 on 400 events): past the severe bar it is published
    from its first window (issue 14); with the bar off (severe_p 0), after k of n."""
    rng = np.random.default_rng(0)
    await publish(
        topics.DEPLOYMENTS.name, signed(manifest("v1", status="known_good"), topics_ready)
    )
    await publish(topics.DEPLOYMENTS.name, signed(manifest("v2", status="live"), topics_ready))
    producer = make_producer(topics_ready, control=True)
    await producer.start()
    try:
        await bl.publish(
            producer,
            topics_ready.topic(topics.BASELINES.name),
            [
                signed(bl.numeric_snapshot("m", "v1", signal, rng.normal(0, 1, 5000)), topics_ready)
                for signal in ("prediction", "feature:f0")
            ],
        )
    finally:
        await producer.stop()
    for event in predictions("v2", 1200, shift=1.0, seed=3):
        await publish(topics.PREDICTIONS.name, event)
    good = orjson.loads(predictions("v2", 1, 0.0, 9)[0].encode())
    bad = [
        {**good, "features": {}},  # missing feature
        {**good, "features": {"f0": "high"}},  # wrong type
        {**good, "model_version": "v9"},  # no manifest for this version
    ]
    for doc in bad:
        await publish(topics.PREDICTIONS.name, orjson.dumps(doc), key=b"m")

    policy = (
        PolicySet()
        if severe
        else PolicySet(defaults=ModelPolicy(false_alarm=FalseAlarmPolicy(severe_p=0.0)))
    )
    detector = Detector(topics_ready, policy, DetectorSettings(group_id="drift", seed=1))
    await run_until(
        detector,
        lambda: detector.counts["breaches"] >= 1 and detector.counts["dead_letters"] >= 3,
        timeout_s=40,
    )

    assert detector.counts["baselines"] == 2
    assert detector.counts["dead_letters"] == 3
    breaches = [
        Breach.model_validate_json(r.value)
        for r in await reader.read(topics.BREACHES.name, until=lambda r: len(r) >= 1)
    ]
    first = breaches[0]
    assert (first.detector, first.signal, first.tier, first.model_version) == (
        "prediction_ks",
        "prediction",
        "rapid",
        "v2",
    )
    assert first.kind == "ks" and first.evidence["method"] == "exact"
    assert first.value >= 0.1
    assert first.sustain is not None and (first.sustain.k, first.sustain.n) == (2, 3)
    if severe:
        assert first.evidence["sustain"] == "1/3 severe"
        assert first.sustain.severe and first.sustain.hits == 1
    else:
        assert first.evidence["sustain"] == "2/3"
        assert not first.sustain.severe and first.sustain.hits >= 2
    assert first.version_events is not None and first.version_events >= 800
    assert first.version_first_event_ts is not None
    assert not any(b.signal == "feature:f0" for b in breaches)

    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await reader.read(topics.DEADLETTER.name, until=lambda r: len(r) >= 3)
    ]
    reasons = sorted(letter.error for letter in letters)
    assert any("features.f0: missing" in r for r in reasons)
    assert any("features.f0: expected a number" in r for r in reasons)
    assert any("'v9' has no manifest" in r for r in reasons)


async def test_garbage_on_the_baselines_topic_is_dead_lettered(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    keys: str,
) -> None:
    rng = np.random.default_rng(5)
    good = signed(bl.numeric_snapshot("m", "v1", "prediction", rng.normal(0, 1, 500)), topics_ready)
    await publish(topics.BASELINES.name, b"{not a snapshot", key=b"m")
    await publish(topics.BASELINES.name, good)
    detector = Detector(topics_ready, PolicySet(), DetectorSettings(group_id="bl-garbage"))
    await run_until(detector, lambda: detector.ready.is_set(), timeout_s=40)
    assert detector.counts["baselines"] == 1
    (letter,) = [
        DeadLetter.model_validate_json(r.value)
        for r in await reader.read(topics.DEADLETTER.name, until=lambda r: len(r) >= 1)
    ]
    assert letter.source_topic == topics_ready.topic(topics.BASELINES.name)
    assert letter.consumer == "detector" and letter.error.startswith("malformed")
