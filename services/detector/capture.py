"""Baselines captured from a version just marked known good: when a capture is complete and
the snapshots it yields (numeric reference samples with quantile bins, category shares, rates).
"""

from __future__ import annotations

import numpy as np

from rollguard import baselines as bl
from rollguard.events import BaselineSnapshot
from rollguard_services.detector.settings import DetectorSettings
from rollguard_services.detector.state import Capture
from rollguard_services.detector.windows import VersionWindow


def capture_due(capture: Capture, svc: DetectorSettings, now: float) -> bool:
    """Enough events, or long enough with at least the minimum a baseline needs."""
    enough = capture.window.n >= svc.baseline_events
    old = now - capture.started_wall >= svc.baseline_seconds
    return enough or (old and capture.window.n >= bl.MIN_ROWS)


def snapshots_of(window: VersionWindow, rng: np.random.Generator) -> list[BaselineSnapshot]:
    """Baseline snapshots from what a known-good version sent during its capture."""
    out: list[BaselineSnapshot] = []
    mid, ver = window.model_id, window.model_version
    for signal, acc in window.numeric.items():
        sample = acc.reservoir.values()
        if len(sample):
            out.append(bl.numeric_snapshot(mid, ver, signal, sample, nulls=acc.nulls, rng=rng))
    for signal, cat in window.categorical.items():
        labels: list[str | None] = [k for k, c in cat.counts.items() for _ in range(c)]
        out.append(bl.categorical_snapshot(mid, ver, signal, labels + [None] * cat.nulls))
    for metric, sums in window.metrics.items():
        successes = sums.numerator if sums.ratio_events else sums.total
        n = sums.denominator if sums.ratio_events else float(sums.n)
        out.append(bl.metric_snapshot(mid, ver, f"metric:{metric}", sums.rate, n, successes))
    return out
