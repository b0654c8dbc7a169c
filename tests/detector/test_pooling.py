"""Windows that fit the traffic (issue 14, part 4), through the broker with the default
policy untouched: a model that scores a few requests a minute gets conclusive tests on pooled
windows (its KS/PSI breach holds 200 predictions, its error-rate breach 50 requests), and one
at 100,000 events a second is judged window by window, none pooled. The events are an
independent client's bytes (orjson documents, not our event classes), dated in event time:
the quiet model's hour of traffic is sent in a second."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import numpy as np
import orjson
import pytest

from rollguard import baselines as bl
from rollguard import topics
from rollguard.bus import make_producer
from rollguard.events import Breach, utcnow
from rollguard.policy import PolicySet
from rollguard.settings import RollguardSettings
from rollguard_services.detector.app import Detector
from rollguard_services.detector.settings import DetectorSettings
from tests.conftest import HEAVY, TopicReader, run_until
from tests.factories import manifest, signed

pytestmark = pytest.mark.broker


async def _send(settings: RollguardSettings, topic: str, docs: list[dict[str, object]]) -> None:
    producer = make_producer(settings, control=False)
    await producer.start()
    try:
        name = settings.topic(topic)
        for doc in docs:
            await producer.send(name, orjson.dumps(doc), key=b"m")
        await producer.flush()
    finally:
        await producer.stop()


def _stamps(ago: float, spacing: float, n: int) -> list[str]:
    """``n`` event times ``spacing`` apart from a whole second ``ago`` seconds back."""
    base = utcnow().replace(microsecond=0) - timedelta(seconds=ago)
    return [
        (base + timedelta(seconds=i * spacing)).isoformat().replace("+00:00", "Z") for i in range(n)
    ]


@HEAVY
@pytest.mark.parametrize("rate", ["6_a_minute", "100k_a_second"])
async def test_the_default_policy_concludes_from_a_few_events_a_minute_to_100k_a_second(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    keys: str,
    rate: str,
) -> None:
    for m in (manifest("v1", "s1", "known_good"), manifest("v2", "s2", "live")):
        await publish(topics.DEPLOYMENTS.name, signed(m, topics_ready))
    rng = np.random.default_rng(4)
    baseline = signed(
        bl.numeric_snapshot("m", "v1", "prediction", rng.normal(0, 1, 5000)), topics_ready
    )
    await publish(topics.BASELINES.name, baseline)

    quiet = rate == "6_a_minute"
    n, spacing = (300, 10.0) if quiet else (150_000, 1e-5)
    ago = 4000.0 if quiet else 30.0
    shifted = rng.normal(1.0, 1, n)  # v2's output moved by 1 sigma
    common = {"model_id": "m", "model_version": "v2", "system_version": "s2"}
    await _send(
        topics_ready,
        topics.PREDICTIONS.name,
        [
            {
                **common,
                "ts": ts,
                "request_id": f"p{i}",
                "prediction": float(x),
            }
            for i, (ts, x) in enumerate(zip(_stamps(ago, spacing, n), shifted, strict=True))
        ],
    )
    requests = 80 if quiet else 20_000
    failed = rng.random(requests) < 0.4
    await _send(
        topics_ready,
        topics.LATENCY.name,
        [
            {
                **common,
                "ts": ts,
                "request_id": f"l{i}",
                "latency_ms": 20.0,
                "status": "error" if failed[i] else "ok",
            }
            for i, ts in enumerate(_stamps(ago, spacing if quiet else 5e-5, requests))
        ],
    )

    detector = Detector(
        topics_ready, PolicySet(), DetectorSettings(group_id=f"pool-{rate}", seed=1)
    )
    await run_until(
        detector,
        lambda: (
            detector.counts["breaches_rapid"] >= 1 and detector.counts["breaches_immediate"] >= 1
        ),
        timeout_s=60,
    )
    breaches = [
        Breach.model_validate_json(r.value)
        for r in await reader.read(topics.BREACHES.name, until=lambda rs: len(rs) >= 2)
    ]
    drift = next(b for b in breaches if b.tier == "rapid" and b.kind in ("ks", "psi"))
    errors = next(b for b in breaches if b.detector == "error_rate")
    drift_s = (drift.window_end - drift.window_start).total_seconds()
    errors_s = (errors.window_end - errors.window_start).total_seconds()
    if quiet:
        # No window of 1 s holds more than one prediction: the tests ran on pooled windows.
        assert drift.n >= 200 and drift_s >= 199 * spacing, (drift.n, drift_s)
        assert errors.n >= 50 and errors_s >= 49 * spacing, (errors.n, errors_s)
        assert detector.counts["windows_pooled"] >= 199
        assert detector.counts["latency_windows_pooled"] >= 49
    else:
        assert drift.n >= 10_000 and drift_s <= 1.0, (drift.n, drift_s)  # a 1 s window or part
        assert errors_s <= 1.0
        # Judged as they close. On a loaded machine a window can close idle while the next
        # batch is still being fetched (nothing reached it for idle_close_s of wall time) and
        # its few late events pool with the next: seen once in 3 runs on 2 busy cores (and
        # once for a latency window, in a clean-clone run of the whole suite).
        assert detector.counts["windows_pooled"] <= 2, detector.counts["windows_pooled"]
        assert detector.counts["latency_windows_pooled"] <= 2
