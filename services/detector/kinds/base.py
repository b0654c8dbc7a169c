"""The contract of a detector kind, apart from its implementations.

A kind is one module: its config class (what a policy sets), the streams it needs folded, and
pure evaluation functions that read windows and return Measurements with a phase (ok / breach /
inconclusive / no_data), never raising for an expected outcome. Optional hooks fold what only
that kind needs (segment tallies, joined outcomes). The registry (``kinds/__init__.py``) names
every kind in one explicit dict; the service dispatches through it alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from rollguard import baselines as bl
from rollguard.detector_policy import DetectorBase
from rollguard_services.detector.decoding import Column
from rollguard_services.detector.measurement import Judged, Measurement, Phase
from rollguard_services.detector.reference import Reference
from rollguard_services.detector.state import VersionState
from rollguard_services.detector.windows import LatencyWindow, VersionKey, VersionWindow

#: The streams a kind can need folded.
Stream = Literal["latency", "prediction", "feature", "business", "health", "outcome"]
#: Which rows of a batch go to one window.
Selection = slice | npt.NDArray[np.bool_]

C = TypeVar("C", bound=DetectorBase)


@dataclass(frozen=True)
class NumericView:
    """A numeric signal of a window span against its reference, both counted on one grid."""

    signal: str
    counts: npt.NDArray[np.int64]
    reference_counts: npt.NDArray[np.int64]
    sample: npt.NDArray[np.float64]
    reference_sample: npt.NDArray[np.float64]


@dataclass(frozen=True)
class CategoricalView:
    signal: str
    counts: dict[str, int]
    reference: dict[str, float]  # shares (or counts) of the reference


def numeric_view(
    signal: str, span: list[VersionWindow], ref: Reference, rng: np.random.Generator
) -> NumericView | None:
    """The span's values of one signal against the reference, counted on one grid."""
    r = ref.numeric.get(signal)
    accs = [w.numeric[signal] for w in span if signal in w.numeric]
    if r is None or not accs or len(r.sample) == 0:
        return None
    grids = {id(a.grid) for a in accs}
    sample = np.concatenate([a.reservoir.values() for a in accs])
    cap = accs[-1].reservoir.cap
    if len(sample) > cap:
        sample = rng.choice(sample, cap, replace=False)
    grid: bl.Grid
    if len(grids) == 1 and accs[0].grid is not None:
        grid = accs[0].grid
        counts = np.sum([a.counts for a in accs], axis=0).astype(np.int64)
    else:
        grid = r.grid or bl.grid_from_sample(r.sample)
        counts = grid.count(sample)
    same_grid = r.grid is not None and (r.grid is grid or np.array_equal(r.grid.edges, grid.edges))
    ref_counts = r.counts if same_grid and r.counts is not None else grid.count(r.sample)
    return NumericView(signal, counts, ref_counts, sample, r.sample)


@dataclass
class VersionInputs:
    """What a version-window kind may read: the closed window, the rapid span ending with it,
    the version's running state and the reference. Numeric views are built once per signal and
    shared by every kind of the evaluation."""

    window: VersionWindow
    span: list[VersionWindow]
    state: VersionState
    reference: Reference
    rng: np.random.Generator
    _views: dict[str, NumericView | None] = field(default_factory=dict)

    def numeric_view(self, signal: str) -> NumericView | None:
        if signal not in self._views:
            self._views[signal] = numeric_view(signal, self.span, self.reference, self.rng)
        return self._views[signal]

    def matching(self, patterns: tuple[str, ...]) -> list[str]:
        """Signals of the window named by ``patterns`` (``feature:*`` matches every feature)."""
        signals = list(self.window.numeric) + list(self.window.categorical)
        out: list[str] = []
        for p in patterns:
            if p.endswith(":*"):
                out += [s for s in signals if s.startswith(p[:-1]) and s not in out]
            elif p in signals and p not in out:
                out.append(p)
        return out

    def categories(self, signal: str) -> dict[str, int]:
        """Category counts of one signal over the span."""
        out: dict[str, int] = {}
        for w in self.span:
            cat = w.categorical.get(signal)
            if cat is not None:
                for k, v in cat.counts.items():
                    out[k] = out.get(k, 0) + v
        return out

    def events(self, signal: str) -> int:
        w = self.window
        return w.numeric[signal].n if signal in w.numeric else w.categorical[signal].n


@dataclass(frozen=True)
class JoinNeed:
    """What a kind needs of the prediction ↔ outcome join."""

    #: Keep predictions waiting for their outcome, at most this many per model (None: no need).
    max_pending: int | None = None
    #: ...for at most this long.
    ttl_s: float | None = None
    #: Carry this feature's value with each waiting prediction.
    segment: str | None = None


@dataclass(frozen=True)
class JoinedOutcomes:
    """Outcomes of one version matched to their predictions in one batch."""

    key: VersionKey
    predictions: list[float | str]
    outcomes: list[float | str]
    segments: list[dict[str, str | None]]
    state: VersionState
    #: The state of the version this one is compared with (the last known good), if any.
    reference_state: VersionState | None


@dataclass(frozen=True)
class DetectorKind(Generic[C]):
    """One detector kind: its config, the streams it needs, its evaluation and fold hooks."""

    name: str
    config: type[C]
    description: str
    streams: frozenset[Stream]
    #: Evaluated when a latency window closes (immediate tier checks).
    on_latency: Callable[[C, LatencyWindow], list[Measurement]] | None = None
    #: Evaluated when a version window closes (every other kind), with the instance name.
    on_version: Callable[[str, C, VersionInputs], list[Measurement]] | None = None
    #: Re-tests a breach after the multiple-testing correction (KS: the exact test).
    confirm: Callable[[C, Measurement, VersionInputs], Measurement] | None = None
    #: Folds what only this kind needs out of a window's prediction columns.
    fold_predictions: (
        Callable[[str, C, VersionWindow, dict[str, Column], Selection], None] | None
    ) = None
    join: Callable[[C], JoinNeed] | None = None
    fold_outcomes: Callable[[str, C, JoinedOutcomes], None] | None = None
    #: The reservoir this kind needs per numeric signal (the exact tests' sample cap).
    reservoir: Callable[[C], int] | None = None
    #: Judged on pooled windows when one is short of events (pooling.py). False for a kind
    #: that measures what it keeps across windows (joined outcomes): judged on every window.
    pooled: bool = True


AnyKind = DetectorKind[Any]

__all__ = ["AnyKind", "DetectorKind", "Judged", "Measurement", "Phase", "VersionInputs"]
