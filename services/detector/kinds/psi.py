"""psi (rapid tier): population stability index of a signal against the reference.

Numeric signals are grouped into about ``bins`` groups of equal reference mass (quantile bins);
labels are compared category by category. Empty bins are smoothed so PSI stays finite.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, Field
from scipy.stats import chi2

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
    alpha: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="Significance after correction of the PSI's chi-square p-value, besides "
        "the PSI itself.",
    )


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


def psi_p_value(value: float, n: int, reference_n: float | None, bins: int) -> float:
    """How likely a PSI this large is between two samples of one distribution: for small
    differences PSI is the chi-square statistic over the sample sizes, so
    ``value / (1/n + 1/N)`` follows chi-square with ``bins - 1`` degrees of freedom
    (``reference_n`` None: a reference of shares, taken as exact)."""
    scale = 1.0 / n + (1.0 / reference_n if reference_n else 0.0)
    return float(chi2.sf(value / scale, max(bins - 1, 1)))


def measure(
    expected: npt.NDArray[np.int64] | npt.NDArray[np.float64],
    actual: npt.NDArray[np.int64],
    *,
    signal: str,
    moderate: float,
    major: float,
    min_events: int,
    alpha: float = 0.01,
    reference_n: float | None = None,
) -> Measurement:
    """PSI of a window (``actual``) against the baseline (``expected``) on the same bins.

    Breach at or above ``major`` with a p-value (``psi_p_value``) below ``alpha`` after the
    evaluation's correction; ``moderate`` is reported in the evidence only.
    """
    n = int(np.sum(actual))
    if n == 0 or int(np.sum(expected)) == 0:
        return Measurement("psi", signal, "no_data", "psi", 0.0, major, n)
    value = psi_value(expected, actual)
    level = "major" if value >= major else "moderate" if value >= moderate else "none"
    evidence: dict[str, float | int | str] = {"level": level, "bins": len(actual), "alpha": alpha}
    p = psi_p_value(value, n, reference_n, len(actual))
    if n < min_events:
        phase: Phase = "inconclusive"
    else:
        phase = "breach" if value >= major and p < alpha else "ok"
    return Measurement("psi", signal, phase, "psi", value, major, n, p, evidence)


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
    reference_n: float | None = None
    if isinstance(view, NumericView):
        groups = coarse_bins(view.reference_counts, config.bins)
        expected = regroup(view.reference_counts, groups)
        actual = regroup(view.counts, groups)
        reference_n = float(view.reference_counts.sum())
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
        alpha=config.alpha,
        reference_n=reference_n,
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
