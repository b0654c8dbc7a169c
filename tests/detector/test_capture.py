"""Baseline capture from a version marked known good, and windows that close on a watermark."""

from __future__ import annotations

import numpy as np
import orjson
from aiokafka import ConsumerRecord, TopicPartition

from rollguard.events import PredictionEvent
from rollguard.policy import PolicySet, WindowPolicy
from rollguard.settings import RollguardSettings
from rollguard_services.detector.app import Detector
from rollguard_services.detector.settings import DetectorSettings
from rollguard_services.detector.windows import VersionWindows
from tests.factories import manifest

TP = TopicPartition("t.predictions", 0)


def _records(version: str, n: int) -> list[ConsumerRecord[bytes, bytes]]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        raw = PredictionEvent(
            model_id="m",
            model_version=version,
            request_id=f"{version}-{i}",
            prediction=float(rng.normal()),
            features={"city": "ab"[i % 2]},
        ).encode()
        out.append(ConsumerRecord(TP.topic, 0, i, 0, 0, b"m", raw, None, 1, len(raw), ()))
    return out


async def test_known_good_version_is_captured_as_the_baseline() -> None:
    settings = RollguardSettings(kafka_bootstrap="127.0.0.1:1", topic_prefix="t.")
    detector = Detector(settings, PolicySet(), DetectorSettings(baseline_events=300, seed=1))
    detector.on_manifest(manifest("v1", status="known_good"))
    await detector.process({TP: _records("v1", 200)})
    assert ("m", "v1") not in detector.baselines  # 200 < 300 events
    await detector.process({TP: _records("v1", 200)})
    captured = detector.baselines[("m", "v1")]
    assert set(captured) == {"prediction", "feature:city"}
    assert captured["prediction"].n == 400 and len(captured["prediction"].bin_edges) > 100
    assert captured["feature:city"].categories == {"a": 0.5, "b": 0.5}
    assert detector.counts["baselines_captured"] == 1
    # A later known-good mark of the same version does not capture again.
    detector.on_manifest(manifest("v1", status="known_good"))
    assert detector.versions[("m", "v1")].capture is None


def test_malformed_batch_members_fall_back_and_keep_the_rest() -> None:
    from rollguard_services.detector.decoding import decode_predictions

    good = _records("v1", 3)
    bad = ConsumerRecord(TP.topic, 0, 9, 0, 0, b"m", orjson.dumps({"model_id": 1}), None, 1, 1, ())
    batch, rejected = decode_predictions([good[0], bad, good[1], good[2]])
    assert [r.offset for r in batch.records] == [0, 1, 2]
    assert [(r.record.offset, r.kind) for r in rejected] == [(9, "invalid")]
    fast, none = decode_predictions(good)
    assert none == [] and fast.request_ids(np.arange(1)).to_pylist() == ["v1-0"]
    assert (batch.path, fast.path) == ("pydantic", "arrow")
    assert abs(fast.ts[0] - batch.ts[0]) < 1e-6  # fast and pydantic paths agree on time


def test_version_windows_close_on_watermark_or_idleness_not_on_another_topic() -> None:
    windows = VersionWindows(lambda _: WindowPolicy(seconds=1.0, close_grace_s=0.3), lateness_s=2.0)
    key = ("m", "v2")
    windows.spans(key, None, np.array([100.2, 102.5]), now=1_000.0)  # windows 100 and 102
    windows.spans(key, None, np.array([100.7]), now=1_000.0)  # another topic, still window 100
    assert windows.close_ready(now=1_000.5) == []
    (first,) = [w for w in windows.open_windows(key) if w.start == 100.0]
    assert first.end == 101.0
    windows.spans(key, None, np.array([103.1]), now=1_000.6)  # watermark 103.1 ≥ 101 + 2
    assert [w.start for w in windows.close_ready(now=1_000.6)] == [100.0]
    windows.spans(key, None, np.array([99.0]), now=1_000.7)  # older than anything open: late
    assert windows.late == 1
    assert [w.start for w in windows.close_ready(now=2_000.0)] == [102.0, 103.0]
