"""The detector through the broker: breaches for a bad version, dead letters for bad input."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import numpy as np
import orjson
import pytest

from rollguard import topics
from rollguard.events import Breach, DeadLetter, LatencyEvent, utcnow
from rollguard.policy import PolicySet
from rollguard.settings import RollguardSettings
from rollguard_services.detector.app import Detector
from rollguard_services.detector.settings import DetectorSettings
from tests.conftest import TopicReader, run_until

pytestmark = pytest.mark.broker


def traffic(version: str, n: int, error_rate: float, seed: int) -> list[LatencyEvent]:
    rng = np.random.default_rng(seed)
    start = utcnow() - timedelta(seconds=5)
    return [
        LatencyEvent(
            ts=start + timedelta(milliseconds=2 * i),
            model_id="m",
            model_version=version,
            request_id=f"{version}-{i}",
            latency_ms=float(rng.uniform(5, 30)),
            status="error" if rng.random() < error_rate else "ok",
        )
        for i in range(n)
    ]


async def test_bad_version_breaches_good_one_does_not_and_bad_input_is_dead_lettered(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
) -> None:
    for event in traffic("v1", 400, 0.01, seed=1) + traffic("v2", 400, 0.25, seed=2):
        await publish(topics.LATENCY.name, event)
    poison = [
        b"\x00\x01 not json",
        b'{"model_id": "m", "latency_ms": NaN}',
        orjson.dumps(
            {
                "model_id": "m",
                "model_version": "v1",
                "request_id": "r",
                "latency_ms": -3,
                "status": "ok",
                "schema": "LatencyEvent/v1",
            }
        ),
        orjson.dumps(
            {
                "model_id": "m",
                "model_version": "v1",
                "request_id": "r",
                "latency_ms": 3,
                "status": "ok",
                "schema": "LatencyEvent/v2",
            }
        ),
    ]
    for raw in poison:
        await publish(topics.LATENCY.name, raw, key=b"m")

    detector = Detector(topics_ready, PolicySet(), DetectorSettings(group_id="det-test"))
    await run_until(
        detector,
        lambda: detector.counts["breaches"] >= 1 and detector.counts["latency_events"] == 800,
    )
    assert detector.counts["dead_letters"] == 4

    breaches = [
        Breach.model_validate_json(r.value)
        for r in await reader.read(topics.BREACHES.name, until=lambda r: len(r) >= 1)
    ]
    assert {b.model_version for b in breaches} == {"v2"}
    first = breaches[0]
    assert (first.detector, first.tier, first.statistic) == (
        "error_rate",
        "immediate",
        "wilson_lower",
    )
    assert first.value > 0.05 and first.n >= 50
    assert first.window_end - first.window_start == timedelta(seconds=1)

    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await reader.read(topics.DEADLETTER.name, until=lambda r: len(r) >= 4)
    ]
    assert sorted(letter.error.split(":")[0] for letter in letters) == [
        "invalid",
        "invalid",
        "malformed",
        "malformed",
    ]
    assert all(letter.source_topic == topics_ready.topic(topics.LATENCY.name) for letter in letters)
    assert any("latency_ms" in letter.error for letter in letters)
    assert any("schema" in letter.error for letter in letters)
