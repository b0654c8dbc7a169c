from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
from aiokafka import ConsumerRecord, TopicPartition

from rollguard import baselines as bl
from rollguard.events import Breach, PredictionEvent
from rollguard.policy import WindowPolicy
from rollguard_services.detector.pooling import pooled
from rollguard_services.detector.windows import (
    CategoricalAccumulator,
    LatencyWindows,
    MetricSums,
    NumericAccumulator,
    Reservoir,
    VersionWindow,
    VersionWindows,
)


def fold(windows: LatencyWindows, ts: list[float], errors: list[bool]) -> list:
    n = len(ts)
    return windows.add(
        ("m", "v1"), "s1", np.array(ts), np.full(n, 10.0), np.array(errors, dtype=bool)
    )


def test_a_later_event_closes_the_window() -> None:
    windows = LatencyWindows(lambda _: WindowPolicy(seconds=1.0, close_grace_s=0.5))
    assert fold(windows, [100.1, 100.5, 100.9], [True, False, False]) == []
    closed = fold(windows, [101.2], [False])
    assert len(closed) == 1
    w = closed[0]
    assert (w.start, w.end, w.n, w.errors, int(w.counts.sum())) == (100.0, 101.0, 3, 1, 3)
    assert len(windows) == 1  # the new window is open


def test_late_events_fold_into_the_open_window() -> None:
    windows = LatencyWindows(lambda _: WindowPolicy(seconds=1.0))
    fold(windows, [200.5], [False])
    assert fold(windows, [199.7], [True]) == []
    (w,) = windows.close_idle(now=1e12)
    assert (w.start, w.n, w.errors) == (200.0, 2, 1)


def test_one_batch_spanning_windows_closes_each() -> None:
    windows = LatencyWindows(lambda _: WindowPolicy(seconds=1.0))
    closed = fold(windows, [10.1, 11.2, 11.3, 12.5], [False, True, True, False])
    assert [(w.start, w.n, w.errors) for w in closed] == [(10.0, 1, 0), (11.0, 2, 2)]


def test_idle_windows_close_after_grace_and_state_is_dropped() -> None:
    windows = LatencyWindows(lambda _: WindowPolicy(seconds=1.0, close_grace_s=0.5))
    fold(windows, [50.2], [False])
    assert windows.close_idle(now=51.4) == []
    assert len(windows.close_idle(now=51.5)) == 1
    assert len(windows) == 0


def test_count_based_windows_hold_exactly_their_count() -> None:
    windows = VersionWindows(lambda _: WindowPolicy(seconds=60.0), max_events=100)
    key = ("m", "v2")
    # 250 events in one time bucket, in two batches that do not line up with the count.
    for ts in (np.linspace(0.0, 1.0, 130), np.linspace(1.0, 2.0, 120)):
        for window, sel in windows.spans(key, None, ts, now=5.0, counted=True):
            window.n += int(np.count_nonzero(np.ones(len(ts), np.bool_)[sel]))
    closed = windows.close_ready(now=5.0)
    assert [w.n for w in closed] == [100, 100]
    assert [w.n for w in windows.open_windows(key)] == [50]
    assert windows.late == 0  # a window that filled up is not a closed time bucket
    # Business and health events ride along: they do not count.
    (only,) = windows.spans(key, None, np.array([2.5]), now=5.0)
    assert only[0].n == 50


async def test_rapid_tests_slide_over_the_last_windows() -> None:
    from benchmarks.common import offline_detector
    from rollguard import baselines as bl
    from tests.factories import manifest

    detector = offline_detector(window_events=200, rapid_span_windows=3)
    detector.on_manifest(manifest("v1", status="known_good"))
    detector.versions[("m", "v1")].capture = None
    detector.on_manifest(manifest("v2", status="live"))
    rng = np.random.default_rng(4)
    detector.install_baseline(bl.numeric_snapshot("m", "v1", "prediction", rng.normal(0, 1, 5000)))
    found: list[Breach] = []

    async def capture(breaches: Any) -> None:
        found.extend(breaches)

    detector.publish = capture  # type: ignore[method-assign]
    start = float(int(time.time()) - 60)  # all 1,000 in one 1-second bucket
    records = [
        ConsumerRecord(
            detector._predictions_topic,
            0,
            i,
            0,
            0,
            b"m",
            PredictionEvent(
                ts=datetime.fromtimestamp(start + i / 1000, UTC),
                model_id="m",
                model_version="v2",
                request_id=f"r{i}",
                prediction=float(rng.normal(1.0, 1)),
            ).encode(),
            None,
            1,
            1,
            (),
        )
        for i in range(1000)
    ]
    await detector.process({TopicPartition(detector._predictions_topic, 0): records})
    assert detector.counts["evaluations"] == 5  # five full windows of 200, closed at once
    ks = [b for b in found if b.detector == "prediction_ks"]
    assert ks, found
    # The span grows to the last three windows and then slides: 200 events in window 1 (a
    # 1-sigma shift passes the severe bar, so k-of-n does not hold it back), 400 in window 2,
    # then 600 (windows 3, 4, 5).
    assert [b.n for b in ks] == [200, 400, 600, 600, 600]
    assert ks[0].sustain is not None and ks[0].sustain.severe
    assert len({b.window_start for b in ks}) == 1  # one time bucket: spans start together


def test_windows_short_of_events_pool_until_they_have_them() -> None:
    rng = np.random.default_rng(2)
    grid = bl.grid_from_sample(rng.normal(0, 1, 1000))

    def window(i: int) -> VersionWindow:  # one second, 60 predictions
        w = VersionWindow("m", "v1", "s1", 100.0 + i, 1.0, n=60)
        w.numeric["prediction"] = NumericAccumulator(grid, Reservoir(100, rng))
        w.numeric["prediction"].add(rng.normal(0, 1, 60))
        w.categorical["c"] = CategoricalAccumulator()
        w.categorical["c"].add(["a", "b", None])
        w.metrics["ctr"] = MetricSums(60, 0.0, 3, 60, 60)
        return w

    held: VersionWindow | None = None
    for i in range(3):
        ready, held = pooled(held, window(i), need=200, max_seconds=3600)
        assert ready is None and held is not None and held.n == 60 * (i + 1)
    ready, held = pooled(held, window(3), need=200, max_seconds=3600)
    assert held is None and ready is not None
    # One window of four seconds, everything in it added up.
    assert (ready.start, ready.end, ready.n) == (100.0, 104.0, 240)
    acc = ready.numeric["prediction"]
    assert acc.n == 240 and int(acc.counts.sum()) == 240
    assert len(acc.reservoir.values()) == 100 and acc.reservoir.seen == 240  # capped, weighted
    assert ready.categorical["c"].counts == {"a": 4, "b": 4} and ready.categorical["c"].nulls == 4
    assert (ready.metrics["ctr"].numerator, ready.metrics["ctr"].denominator) == (12, 240)
    # Windows may close out of order (count-based, idle): the pool spans both.
    late, early = window(5), window(2)
    _, out_of_order = pooled(None, late, need=200, max_seconds=3600)
    _, out_of_order = pooled(out_of_order, early, need=200, max_seconds=3600)
    assert out_of_order is not None and (out_of_order.start, out_of_order.end) == (102.0, 106.0)
    # A window with enough on its own is judged as it is; a pool stops at max_seconds.
    alone = window(9)
    assert pooled(None, alone, need=50, max_seconds=3600) == (alone, None)
    ready, held = pooled(None, window(0), need=200, max_seconds=1.0)
    assert ready is not None and held is None and ready.n == 60


def test_pooled_latency_windows_add_up() -> None:
    windows = LatencyWindows(lambda _: WindowPolicy(seconds=1.0))
    first = fold(windows, [100.1, 100.2], [True, False])
    closed = fold(windows, [101.5], [True]) + first
    (w,) = closed
    ready, held = pooled(None, w, need=3, max_seconds=3600)
    assert ready is None and held is w
    (nxt,) = fold(windows, [102.5], [False])
    ready, held = pooled(held, nxt, need=3, max_seconds=3600)
    assert held is None and ready is not None
    assert (ready.start, ready.end, ready.n, ready.errors, int(ready.counts.sum())) == (
        100.0,
        102.0,
        3,
        2,
        3,
    )


def test_a_window_folds_its_pieces_when_read_as_if_it_had_them_at_once() -> None:
    """Issue 15: a window keeps each batch's rows as a piece and folds them when first read;
    the accumulators come out as one fold of all the rows would make them, a window short of
    events is pooled with its pieces still unfolded, and pieces never pile up unbounded."""
    from benchmarks.common import offline_detector
    from rollguard_services.detector.windows import MAX_PIECES

    folder = offline_detector().folder
    rng = np.random.default_rng(3)
    model = folder.model("m")
    model.grids["prediction"] = bl.grid_from_sample(rng.normal(0, 1, 2000))
    n = 300
    feature = rng.normal(0, 1, n)
    feature[::7] = np.nan
    columns = {
        "prediction": rng.normal(0, 1, n),
        "feature:a": feature,
        "feature:c": [None if i % 11 == 0 else f"c{i % 3}" for i in range(n)],
    }

    def part(lo: int, hi: int) -> dict[str, Any]:
        return {s: c[lo:hi] for s, c in columns.items()}

    whole = VersionWindow("m", "v1", None, 0.0, 1.0)
    folder.fold_columns(whole, columns, slice(None))
    pieces = VersionWindow("m", "v1", None, 0.0, 1.0)
    for lo in range(0, 200, 20):
        folder.fold_columns(pieces, part(lo, lo + 20), slice(None))
    mask = np.zeros(100, dtype=np.bool_)
    mask[::2] = True  # a batch spanning two windows hands each a mask
    folder.fold_columns(pieces, part(200, 300), mask)
    folder.fold_columns(pieces, part(200, 300), ~mask)
    assert len(pieces.pending) == 12 and pieces.n == n  # counted, not folded yet

    num, ref = pieces.numeric, whole.numeric  # reading folds
    assert pieces.pending == []
    for signal in ("prediction", "feature:a"):
        assert (num[signal].n, num[signal].nulls) == (ref[signal].n, ref[signal].nulls)
        assert sorted(num[signal].reservoir.values()) == sorted(ref[signal].reservoir.values())
    assert num["prediction"].counts.tolist() == ref["prediction"].counts.tolist()
    assert pieces.categorical["feature:c"].counts == whole.categorical["feature:c"].counts
    assert pieces.categorical["feature:c"].nulls == whole.categorical["feature:c"].nulls

    # Pooling two short windows moves the pieces over, still unfolded.
    a, b = (VersionWindow("m", "v1", None, float(i), 1.0) for i in range(2))
    folder.fold_columns(a, part(0, 5), slice(None))
    folder.fold_columns(b, part(5, 9), slice(None))
    held, _ = pooled(None, a, need=200, max_seconds=60)
    assert held is None
    _, kept = pooled(a, b, need=200, max_seconds=60)
    assert kept is a and len(a.pending) == 2 and b.pending == [] and a.n == 9
    assert a.numeric["prediction"].n == 9 and (a.start, a.end) == (0.0, 2.0)

    # A window that gets its rows from many batches folds every MAX_PIECES of them.
    busy = VersionWindow("m", "v1", None, 0.0, 1.0)
    for i in range(MAX_PIECES + 3):
        folder.fold_columns(busy, part(i % 290, i % 290 + 2), slice(None))
    assert len(busy.pending) == 3 and busy._numeric["prediction"].n == 2 * MAX_PIECES


async def test_the_immediate_tier_is_judged_before_the_batch_s_predictions_are_folded() -> None:
    """Issue 15: a batch with a latency window that breaches and a fleet's predictions
    publishes the error-rate breach first, before any prediction of that batch is folded."""
    from benchmarks.common import offline_detector
    from rollguard.events import LatencyEvent
    from tests.factories import manifest

    detector = offline_detector()
    detector.on_manifest(manifest("v1", status="known_good"))
    detector.on_manifest(manifest("v2", status="live"))
    seen_at: list[tuple[str, int]] = []

    async def capture(breaches: Any) -> None:
        seen_at.extend((b.detector, detector.counts["prediction_events"]) for b in breaches)

    detector.publish = capture  # type: ignore[method-assign]
    start = float(int(time.time()) - 30)

    def record(topic: str, i: int, value: bytes) -> ConsumerRecord[bytes, bytes]:
        return ConsumerRecord(topic, 0, i, 0, 0, b"m", value, None, 1, len(value), ())

    latency = [
        LatencyEvent(
            ts=datetime.fromtimestamp(start + (i % 400) / 400 + (1 if i >= 400 else 0), UTC),
            model_id="m",
            model_version="v2",
            request_id=f"l{i}",
            latency_ms=10.0,
            status="error" if i < 400 and i % 2 else "ok",  # half of window 1 fails
        ).encode()
        for i in range(401)
    ]
    predictions = [
        PredictionEvent(
            ts=datetime.fromtimestamp(start + i / 1000, UTC),
            model_id=f"fleet{i % 50}",
            model_version="v1",
            request_id=f"p{i}",
            prediction=0.5,
        ).encode()
        for i in range(2000)
    ]
    batches = {
        TopicPartition(detector._predictions_topic, 0): [
            record(detector._predictions_topic, i, v) for i, v in enumerate(predictions)
        ],
        TopicPartition(detector._latency_topic, 0): [
            record(detector._latency_topic, i, v) for i, v in enumerate(latency)
        ],
    }
    await detector.process(batches)
    assert detector.counts["prediction_events"] == 2000
    errors = [at for name, at in seen_at if name == "error_rate"]
    assert errors == [0], seen_at  # published with no prediction of the batch folded yet


def test_kinds_judged_on_every_window_see_its_rows_before_it_joins_the_pool() -> None:
    """Review of issue 15's pieces: a short window joining a held pool hands its unfolded rows
    to the pool; the kinds judged on every window (the immediate tier's, ground truth) must
    be judged on it first, with its rows in it."""
    from benchmarks.common import offline_detector
    from rollguard_services.detector import pooling

    detector = offline_detector()
    folder = detector.folder
    folder.model("m")
    every, _ = pooling.split(folder.configs("m"), detector.kinds)
    assert every, "the shipped defaults judge some kinds on every window"
    seen: list[int] = []
    evaluate = detector._evaluate

    def spy(window: VersionWindow, *args: Any) -> list[Breach]:
        acc = window.numeric.get("prediction")
        seen.append(acc.n if acc is not None else 0)
        return evaluate(window, *args)

    detector._evaluate = spy  # type: ignore[method-assign]
    for i in range(3):
        w = VersionWindow("m", "v1", None, 100.0 + i, 1.0)
        folder.fold_columns(w, {"prediction": np.full(5, 0.5)}, slice(None))
        detector.close_version_window(w)
    assert seen == [5, 5, 5]  # each short window judged with its own 5 rows
    held = folder.version(("m", "v1")).held
    assert held is not None and held.n == 15 and held.numeric["prediction"].n == 15
