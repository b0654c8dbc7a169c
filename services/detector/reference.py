"""What a window is compared with: a known-good version with its own baseline when it has
one; else the baseline of the last known-good version, else the previous live version's
concurrent window (canary-style), else nothing; a known-good version never with a version
that is not known good."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from rollguard import baselines as bl
from rollguard.events import BaselineSnapshot
from rollguard_services.detector.state import ModelState, VersionState
from rollguard_services.detector.windows import VersionKey, VersionWindow, VersionWindows


@dataclass(frozen=True)
class NumericRef:
    grid: bl.Grid | None
    counts: npt.NDArray[np.int64] | None
    sample: npt.NDArray[np.float64]


@dataclass
class Reference:
    """A baseline snapshot set or a concurrent window, as the detector kinds read it."""

    source: str  # baseline:<version> / concurrent:<version> / none
    numeric: dict[str, NumericRef] = field(default_factory=dict)
    categorical: dict[str, dict[str, float]] = field(default_factory=dict)
    #: metric → (rate, successes, n); successes and n where counts exist.
    metrics: dict[str, tuple[float, float | None, float | None]] = field(default_factory=dict)


def grid_of(snapshot: BaselineSnapshot) -> bl.Grid:
    low = snapshot.rates.get("min", snapshot.bin_edges[0])
    high = snapshot.rates.get("max", snapshot.bin_edges[-1])
    return bl.Grid(np.array(snapshot.bin_edges, dtype=np.float64), float(low), float(high))


def of_baseline(version: str, snapshots: dict[str, BaselineSnapshot]) -> Reference:
    ref = Reference(f"baseline:{version}")
    for signal, s in snapshots.items():
        if s.bin_edges:
            counts = np.array(s.counts, dtype=np.int64) if s.counts else None
            ref.numeric[signal] = NumericRef(
                grid_of(s), counts, np.array(s.reference, dtype=np.float64)
            )
        elif s.categories:
            ref.categorical[signal] = dict(s.categories)
        elif signal.startswith("metric:") and "rate" in s.rates:
            ref.metrics[signal[len("metric:") :]] = (
                s.rates["rate"],
                s.rates.get("successes"),
                s.rates.get("n"),
            )
    return ref


def of_window(version: str, w: VersionWindow) -> Reference:
    ref = Reference(f"concurrent:{version}")
    for signal, acc in w.numeric.items():
        counts = acc.counts if acc.grid is not None and len(acc.counts) else None
        ref.numeric[signal] = NumericRef(acc.grid, counts, acc.reservoir.values().copy())
    for signal, cat in w.categorical.items():
        ref.categorical[signal] = {k: float(v) for k, v in cat.counts.items()}
    for metric, sums in w.metrics.items():
        successes = sums.numerator if sums.ratio_events else sums.total
        n = sums.denominator if sums.ratio_events else float(sums.n)
        ref.metrics[metric] = (sums.rate, successes, n)
    return ref


def choose(
    window: VersionWindow,
    model: ModelState,
    baselines: dict[VersionKey, dict[str, BaselineSnapshot]],
    versions: dict[VersionKey, VersionState],
    open_windows: VersionWindows,
) -> Reference:
    """The reference for one closed window of ``window.key``."""
    model_id, version = window.key
    if version in model.known_good and (model_id, version) in baselines:
        # What good looked like for this very version (imported, or captured while it was
        # known good): a restored version is verified against it, so a rollback onto inputs
        # that drifted is seen to leave the restored version drifted too (issue 14).
        return of_baseline(version, baselines[(model_id, version)])
    good = model.reference_version(version)
    if good is not None and (model_id, good) in baselines:
        return of_baseline(good, baselines[(model_id, good)])
    if version in model.known_good:
        # Judged by absolute thresholds until a baseline of another known-good version is
        # there, never against a version that is not known good: a restored version compared
        # with the bad one it replaced (its last second, 0.29 PSI) failed its verification.
        return Reference("none")
    other = next((v for v in (model.live, model.previous_live, good) if v and v != version), None)
    if other is None:
        return Reference("none")
    other_key = (model_id, other)
    candidates = list(versions[other_key].recent) if other_key in versions else []
    candidates += open_windows.open_windows(other_key)
    concurrent = next((w for w in candidates if w.start == window.start and w.n), None)
    if concurrent is None:
        return Reference("none")
    return of_window(other, concurrent)
