"""Every other detector kind through the broker against an imported baseline."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from rollguard import baselines as bl
from rollguard import topics
from rollguard.bus import make_producer
from rollguard.events import (
    Breach,
    BusinessMetricEvent,
    HealthCheckEvent,
    OutcomeEvent,
    PredictionEvent,
    utcnow,
)
from rollguard.policy import PolicySet
from rollguard.settings import RollguardSettings
from rollguard_services.detector.app import Detector
from rollguard_services.detector.kinds.ground_truth import drift_of
from rollguard_services.detector.settings import DetectorSettings
from tests.conftest import TopicReader, run_until
from tests.factories import manifest, signed

pytestmark = pytest.mark.broker

WINDOWS = 3
PER_WINDOW = 400


def _mixture(rng: np.random.Generator, segments: np.ndarray) -> np.ndarray:
    return np.where(
        segments == "a", rng.normal(1, 1, len(segments)), rng.normal(-1, 1, len(segments))
    )


def _baseline(rng: np.random.Generator) -> list[Any]:
    n = 4000
    segments = rng.choice(np.array(["a", "b"]), n)
    columns: dict[str, list[Any]] = {
        "prediction": list(_mixture(rng, segments)),
        "feature:f0": list(rng.normal(0, 1, n)),
        "feature:segment": list(segments),
        "metric:ctr": list((rng.random(n) < 0.1).astype(float)),
        "metric:cost": [1.0] * n,
    }
    return bl.snapshots_from_table("m", "v1", columns, source="test")


async def test_health_ctr_quality_fairness_and_cost_breach_through_the_broker(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    keys: str,
) -> None:
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
            [signed(s, topics_ready) for s in _baseline(rng)],
        )
    finally:
        await producer.stop()

    start = (utcnow() - timedelta(seconds=10)).replace(microsecond=0)
    common = {"model_id": "m", "model_version": "v2"}
    for w in range(WINDOWS):
        at = start + timedelta(seconds=w)
        segments = rng.choice(np.array(["a", "b"]), PER_WINDOW)
        # Same prediction mixture as the baseline, but segment b is rarely positive (fairness)
        # and one f0 in five is null (feature quality).
        preds = _mixture(rng, segments)
        for i in range(PER_WINDOW):
            await publish(
                topics.PREDICTIONS.name,
                PredictionEvent(
                    ts=at + timedelta(milliseconds=2 * i),
                    request_id=f"r{w}-{i}",
                    prediction=float(preds[i]),
                    features={
                        "f0": None if i % 5 == 0 else float(rng.normal()),
                        "segment": str(segments[i]),
                    },
                    **common,
                ),
            )
        for i in range(60):
            ts = at + timedelta(milliseconds=10 * i)
            # CTR 2 % against a baseline of about 10 %; cost 2.0 against 1.0 per prediction.
            await publish(
                topics.BUSINESS.name,
                BusinessMetricEvent(ts=ts, metric="ctr", numerator=2, denominator=100, **common),
            )
            await publish(
                topics.BUSINESS.name, BusinessMetricEvent(ts=ts, metric="cost", value=2.0, **common)
            )
        await publish(topics.HEALTH.name, HealthCheckEvent(ts=at, ok=False, **common))
    detector = Detector(topics_ready, PolicySet(), DetectorSettings(group_id="signals", seed=2))
    wanted = {"health", "ctr", "feature_quality", "fairness", "cost"}

    found: dict[str, Breach] = {}

    before = {
        (name, tier): REGISTRY.get_sample_value(
            "rollguard_breaches_total", {"detector": name, "tier": tier}
        )
        or 0.0
        for name in wanted
        for tier in ("immediate", "rapid", "delayed")
    }

    def all_breached() -> bool:  # by detector: one of them breaching twice is not all five
        now = {
            (name, tier): REGISTRY.get_sample_value(
                "rollguard_breaches_total", {"detector": name, "tier": tier}
            )
            or 0.0
            for name in wanted
            for tier in ("immediate", "rapid", "delayed")
        }
        return {n for (n, t), v in now.items() if v > before[(n, t)]} == wanted

    await run_until(detector, all_breached, timeout_s=40)
    for record in await reader.read(
        topics.BREACHES.name,
        until=lambda r: wanted <= {Breach.model_validate_json(x.value).detector for x in r},
    ):
        b = Breach.model_validate_json(record.value)
        found.setdefault(b.detector, b)
    assert wanted <= set(found)
    assert found["health"].tier == "immediate" and found["health"].value >= 3
    ctr = found["ctr"].sustain
    assert found["ctr"].tier == "rapid" and ctr is not None
    assert ctr.severe or ctr.hits >= ctr.k  # an 80 % drop passes the severe bar at once
    assert found["ctr"].value == pytest.approx(0.8, abs=0.05) and found["ctr"].p_value is not None
    assert (found["feature_quality"].signal, found["feature_quality"].statistic) == (
        "feature:f0",
        "null_rate",
    )
    assert found["feature_quality"].value == pytest.approx(0.2)
    assert found["fairness"].tier == "delayed" and found["fairness"].value < 0.8
    assert found["cost"].value == pytest.approx(1.0)
    assert "prediction_ks" not in found  # same prediction mixture as the baseline

    # Outcomes arrive late: the same detector joins them to the predictions it still holds.
    for i in range(100):
        await publish(
            topics.OUTCOMES.name,
            OutcomeEvent(model_id="m", model_version="v2", request_id=f"r0-{i}", outcome=1.0),
        )
    await publish(
        topics.OUTCOMES.name,
        OutcomeEvent(model_id="m", model_version="v2", request_id="never-predicted", outcome=1.0),
    )
    await run_until(detector, lambda: detector.counts["outcome_events"] >= 101, timeout_s=40)
    assert detector.counts["outcomes_joined"] == 100
    assert detector.counts["outcomes_unmatched"] == 1
    assert drift_of("ground_truth", detector.versions[("m", "v2")]).n == 100
