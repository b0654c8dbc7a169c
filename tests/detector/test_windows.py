from __future__ import annotations

import numpy as np

from rollguard.policy import WindowPolicy
from services.detector.windows import LatencyWindows


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
