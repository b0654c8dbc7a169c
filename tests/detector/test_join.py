"""The ground-truth join state: bounded, consumed once, newest first; and error-rate fairness,
which needs the segment of each joined prediction."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka import ConsumerRecord, TopicPartition

from rollguard import topics
from rollguard.events import Breach, OutcomeEvent, utcnow
from rollguard.policy import ModelPolicy, PolicySet, WindowPolicy
from rollguard.settings import RollguardSettings
from rollguard_services.detector import arrow
from rollguard_services.detector.app import Detector
from rollguard_services.detector.join import GENERATIONS, PendingJoin
from rollguard_services.detector.kinds.fairness import FairnessConfig
from rollguard_services.detector.kinds.ground_truth import GroundTruthConfig
from rollguard_services.detector.settings import DetectorSettings


def _ids(start: int, n: int) -> Any:
    return arrow.strings([f"r{i}" for i in range(start, start + n)])


def test_the_state_stays_within_its_bound_and_the_oldest_give_up_first() -> None:
    join = PendingJoin()
    limit = 400
    evicted = sum(
        join.add(_ids(100 * b, 100), "v1", np.arange(100.0), {}, now=0.0, limit=limit)
        for b in range(10)
    )
    assert limit - limit // GENERATIONS <= len(join) <= limit
    assert evicted == 1000 - len(join)
    found = join.match(["r0", "r999", f"r{1000 - len(join)}"])
    assert found[0] is None  # among the oldest: gave up
    assert found[1] is not None and found[1].prediction == 99.0
    assert found[2] is not None  # the oldest one still held


def test_an_outcome_matches_once_and_the_newest_prediction_answers() -> None:
    join = PendingJoin()
    join.add(_ids(0, 3), "v1", np.array([0.1, 0.2, 0.3]), {}, now=0.0, limit=8)
    join.add(_ids(2, 8), "v2", ["a", "b", "c", "d", "e", "f", "g", "h"], {}, now=1.0, limit=8)
    r2, r1, unknown = join.match(["r2", "r1", "nobody"])
    assert r2 is not None and (r2.version, r2.prediction) == ("v2", "a")  # the later one
    assert r1 is None  # its generation gave up for the newer ones (bound 8)
    assert unknown is None
    assert join.match(["r2"]) == [None]  # consumed
    assert len(join) == 7


def test_predictions_give_up_after_the_ttl() -> None:
    join = PendingJoin()
    join.add(_ids(0, 10), "v1", np.zeros(10), {}, now=100.0, limit=80)
    join.add(_ids(10, 10), "v1", np.zeros(10), {}, now=200.0, limit=80)
    assert join.expire(now=250.0, ttl=100.0) == 10
    assert join.match(["r0", "r15"])[0] is None and len(join) == 9


def test_segments_travel_with_the_prediction() -> None:
    join = PendingJoin()
    join.add(_ids(0, 2), "v1", np.array([0.9, 0.1]), {"segment": ["a", "b"]}, now=0.0, limit=8)
    (got,) = join.match(["r1"])
    assert got is not None and got.segments == {"segment": "b"} and got.prediction == 0.1


def _record(topic: str, offset: int, raw: bytes) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(topic, 0, offset, 0, 0, b"m", raw, None, 1, len(raw), ())


def _prediction(i: int, ts: str, segment: str) -> bytes:
    doc = {
        "ts": ts,
        "model_id": "m",
        "model_version": "v2",
        "request_id": f"r{i}",
        "prediction": 0.9,
        "features": {"segment": segment},
    }
    return orjson.dumps(doc)


async def test_error_rate_fairness_breaches_when_one_segment_is_wrong_more_often() -> None:
    settings = RollguardSettings(kafka_bootstrap="127.0.0.1:1", topic_prefix="t.")
    policy = PolicySet(
        defaults=ModelPolicy(
            window=WindowPolicy(seconds=1.0),
            detectors={
                "ground_truth": GroundTruthConfig(),
                "fairness": FairnessConfig(metric="error_rate", min_events=50),
            },
        )
    )
    detector = Detector(settings, policy, DetectorSettings(seed=1, lateness_s=0.5))
    predictions = settings.topic(topics.PREDICTIONS.name)
    outcomes = settings.topic(topics.OUTCOMES.name)
    tp, to = TopicPartition(predictions, 0), TopicPartition(outcomes, 0)
    published: list[Breach] = []

    async def capture(breaches: Any) -> None:
        published.extend(breaches)

    detector.publish = capture  # type: ignore[method-assign]
    second = int(time.time()) - 30
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    segments = ["a", "b"] * 200
    records = [
        _record(predictions, i, _prediction(i, f"{stamp}.{i:06d}Z", segment))
        for i, segment in enumerate(segments)
    ]
    await detector.process({tp: records})
    # Every prediction said positive; segment a was right every time, segment b half the time.
    wrong = {f"r{i}" for i in range(1, len(segments), 4)}
    events = [
        OutcomeEvent(
            ts=utcnow(),
            model_id="m",
            model_version="v2",
            request_id=f"r{i}",
            outcome=0.0 if f"r{i}" in wrong else 1.0,
        )
        for i in range(len(segments))
    ]
    await detector.process({to: [_record(outcomes, i, e.encode()) for i, e in enumerate(events)]})
    assert detector.counts["outcomes_joined"] == len(segments)
    # A later prediction moves the watermark past the first window: it closes and is judged.
    later = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second + 5))
    late = _prediction(10_000, f"{later}.000000Z", "a")
    await detector.process({tp: [_record(predictions, 10_000, late)]})
    (fair,) = [b for b in published if b.detector == "fairness"]
    assert fair.value == pytest.approx(0.0)  # best segment's error rate 0 over the worst's 0.5
    assert fair.evidence["highest"] == "b" and fair.evidence["metric"] == "error_rate"
    # counted afresh next time
    assert "fairness" not in detector.versions[("m", "v2")].kind_state


def test_an_id_predicted_twice_is_answered_by_the_later_prediction() -> None:
    join = PendingJoin()
    join.add(arrow.strings(["a"]), "v1", np.array([0.1]), {}, now=0.0, limit=80)
    join.add(arrow.strings(["a"]), "v2", np.array([0.2]), {}, now=1.0, limit=80)  # same generation
    (got,) = join.match(["a"])
    assert got is not None and (got.version, got.prediction) == ("v2", 0.2)
    assert join.match(["a"]) == [None]  # consumed; the earlier copy does not answer either


async def test_the_join_ttl_is_the_models_own_not_the_defaults() -> None:
    """Review bug: the TTL was read from policy.defaults, so a model's own join_ttl_s was
    ignored. Here the defaults wait a day and model ``m`` waits 5 s."""
    settings = RollguardSettings(kafka_bootstrap="127.0.0.1:1", topic_prefix="t.")
    slow = {"ground_truth": GroundTruthConfig(join_ttl_s=86_400.0)}
    policy = PolicySet(
        defaults=ModelPolicy(detectors=slow),
        models={"m": ModelPolicy(detectors={"ground_truth": GroundTruthConfig(join_ttl_s=5.0)})},
    )
    detector = Detector(settings, policy, DetectorSettings(seed=1))
    predictions = settings.topic(topics.PREDICTIONS.name)
    tp = TopicPartition(predictions, 0)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time()))
    other = orjson.loads(_prediction(1, f"{stamp}.000000Z", "a"))
    other.update(model_id="other", request_id="o1")
    await detector.process(
        {
            tp: [
                _record(predictions, 0, _prediction(0, f"{stamp}.000000Z", "a")),
                _record(predictions, 1, orjson.dumps(other)),
            ]
        }
    )
    assert len(detector.models["m"].pending) == 1 and len(detector.models["other"].pending) == 1
    detector.folder.forget_quiet(time.time() + 10)
    assert len(detector.models["m"].pending) == 0  # gave up after its own 5 s
    assert len(detector.models["other"].pending) == 1  # still within the default day
    assert detector.counts["join_expired"] == 1
