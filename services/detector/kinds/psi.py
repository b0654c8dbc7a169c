"""psi (rapid tier): population stability index of a signal against the reference.

Numeric signals are grouped into about ``bins`` groups of equal reference mass (quantile bins);
labels are compared category by category. Empty bins are smoothed so PSI stays finite.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, Field

from rollguard.detector_policy import DetectorBase, Tier
from rollguard_services.detector.kinds.base import (
    CategoricalView,
    DetectorKind,
    Measurement,
    NumericView,
    Phase,
    VersionInputs,
)
from rollguard_services.detector.kinds.ks import no_reference


class PsiConfig(DetectorBase):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["psi"] = "psi"
    tier: Tier = "rapid"
    min_events: int = Field(
        default=200, ge=1, description="Fewer events in a window: inconclusive."
    )
    signals: tuple[str, ...] = ("prediction", "feature:*")
    bins: int = Field(default=10, ge=2, le=100)
    moderate: float = Field(default=0.1, gt=0)
    major: float = Field(default=0.25, gt=0, description="Breach at or above this PSI.")


#: Additive smoothing of bin counts, so an empty bin never makes PSI infinite.
PSI_SMOOTHING = 0.5


def psi_value(
    expected: npt.NDArray[np.float64] | npt.NDArray[np.int64],
    actual: npt.NDArray[np.float64] | npt.NDArray[np.int64],
    smoothing: float = PSI_SMOOTHING,
) -> float:
    """Population stability index Σ (a − e)·ln(a / e) over bin shares.

    Shares are (count + smoothing) / (total + smoothing × bins), so empty bins stay finite.
    """
    e = np.asarray(expected, dtype=np.float64) + smoothing
    a = np.asarray(actual, dtype=np.float64) + smoothing
    e /= e.sum()
    a /= a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def measure(
    expected: npt.NDArray[np.int64],
    actual: npt.NDArray[np.int64],
    *,
    signal: str,
    moderate: float,
    major: float,
    min_events: int,
) -> Measurement:
    """PSI of a window (``actual``) against the baseline (``expected``) on the same bins.

    Breach at or above ``major``; ``moderate`` is reported in the evidence only.
    """
    n = int(np.sum(actual))
    if n == 0 or int(np.sum(expected)) == 0:
        return Measurement("psi", signal, "no_data", "psi", 0.0, major, n)
    value = psi_value(expected, actual)
    level = "major" if value >= major else "moderate" if value >= moderate else "none"
    evidence: dict[str, float | int | str] = {"level": level, "bins": len(actual)}
    if n < min_events:
        phase: Phase = "inconclusive"
    else:
        phase = "breach" if value >= major else "ok"
    return Measurement("psi", signal, phase, "psi", value, major, n, None, evidence)


def coarse_bins(reference_counts: npt.NDArray[np.int64], bins: int) -> npt.NDArray[np.intp]:
    """Group fine bins into about ``bins`` groups of equal reference mass (PSI's quantile bins).

    Returns the group index of every fine bin; groups that would be empty merge (ties).
    """
    total = int(reference_counts.sum())
    if total == 0:
        return np.zeros(len(reference_counts), dtype=np.intp)
    before = (np.cumsum(reference_counts) - reference_counts) / total
    group = np.minimum((before * bins + 1e-12).astype(np.intp), bins - 1)
    # Renumber so group ids are consecutive even when ties skip one.
    _, dense = np.unique(group, return_inverse=True)
    return dense.astype(np.intp)


def regroup(counts: npt.NDArray[np.int64], groups: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
    return np.bincount(groups, weights=counts, minlength=int(groups.max()) + 1).astype(np.int64)


def on_view(config: PsiConfig, view: NumericView | CategoricalView) -> Measurement:
    if isinstance(view, NumericView):
        groups = coarse_bins(view.reference_counts, config.bins)
        expected = regroup(view.reference_counts, groups)
        actual = regroup(view.counts, groups)
    else:
        labels = sorted(set(view.counts) | set(view.reference))
        shares = np.array([view.reference.get(k, 0.0) for k in labels], dtype=np.float64)
        # Shares scaled to counts so the smoothing weighs like that of a counted sample.
        expected = shares / max(shares.sum(), 1e-12) * max(sum(view.counts.values()), 1)
        actual = np.array([view.counts.get(k, 0) for k in labels], dtype=np.int64)
    return measure(
        expected,
        actual,
        signal=view.signal,
        moderate=config.moderate,
        major=config.major,
        min_events=config.min_events,
    )


def on_version(_instance: str, config: PsiConfig, inputs: VersionInputs) -> list[Measurement]:
    out: list[Measurement] = []
    for signal in inputs.matching(config.signals):
        view: NumericView | CategoricalView | None
        if signal in inputs.window.numeric:
            view = inputs.numeric_view(signal)
        elif signal in inputs.reference.categorical:
            view = CategoricalView(
                signal, inputs.categories(signal), inputs.reference.categorical[signal]
            )
        else:
            view = None
        out.append(
            on_view(config, view)
            if view is not None
            else no_reference("psi", "psi", config.major, signal, inputs.events(signal))
        )
    return out


KIND = DetectorKind(
    "psi",
    PsiConfig,
    "population stability index",
    frozenset({"prediction", "feature"}),
    on_version=on_version,
)
