"""ks (rapid tier): two-sample Kolmogorov–Smirnov of a numeric signal against the reference.

Cheap approximate D and p from counts on one grid on every evaluation; a breach that survives
the multiple-testing correction is confirmed with the exact scipy.stats.ks_2samp on the capped
samples before it is published.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, Field
from scipy.special import kolmogorov
from scipy.stats import ks_2samp

from rollguard.detector_policy import DetectorBase, Tier
from rollguard_services.detector.kinds.base import (
    DetectorKind,
    Measurement,
    NumericView,
    Phase,
    VersionInputs,
)


class KsConfig(DetectorBase):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["ks"] = "ks"
    tier: Tier = "rapid"
    min_events: int = Field(
        default=200, ge=1, description="Fewer events in a window: inconclusive."
    )
    signals: tuple[str, ...] = Field(
        default=("prediction", "feature:*"),
        description="prediction, feature:<name>, or feature:* for every numeric feature.",
    )
    alpha: float = Field(default=0.01, gt=0, lt=1, description="Significance after correction.")
    min_effect: float = Field(
        default=0.05, gt=0, le=1, description="KS D needed besides significance."
    )
    reservoir: int = Field(
        default=2_000, ge=100, le=100_000, description="Cap of the exact-test samples."
    )


def ks_exact(
    sample: npt.NDArray[np.float64], reference: npt.NDArray[np.float64]
) -> tuple[float, float]:
    """(D, p) of scipy.stats.ks_2samp, two-sided, method ``auto`` (exact for small samples)."""
    res = ks_2samp(sample, reference)
    return float(res.statistic), float(res.pvalue)


def ks_from_counts(
    counts: npt.NDArray[np.int64], reference_counts: npt.NDArray[np.int64]
) -> tuple[float, float]:
    """Approximate two-sample KS (D, p) from counts on the same bins.

    D is the largest gap between the two empirical CDFs at the bin edges (never above the exact
    D; below it by at most the mass of one bin); p is the asymptotic Kolmogorov tail at the
    effective size n·m/(n+m). Cost depends on the number of bins, not on n.
    """
    n, m = int(counts.sum()), int(reference_counts.sum())
    if n == 0 or m == 0:
        return 0.0, 1.0
    gap = np.abs(np.cumsum(counts) / n - np.cumsum(reference_counts) / m)
    d = float(gap.max())
    en = n * m / (n + m)
    return d, float(min(1.0, kolmogorov(math.sqrt(en) * d)))


def measure(
    counts: npt.NDArray[np.int64],
    reference_counts: npt.NDArray[np.int64],
    *,
    signal: str,
    alpha: float,
    min_effect: float,
    min_events: int,
) -> Measurement:
    """Approximate KS of a window against a reference, both binned on the same edges.

    Breach needs significance (p < alpha; the service corrects alpha for multiple tests and
    confirms with ks_exact) and a material effect (D >= min_effect).
    """
    n = int(counts.sum())
    if n == 0 or int(reference_counts.sum()) == 0:
        return Measurement("ks", signal, "no_data", "ks_d", 0.0, min_effect, n)
    d, p = ks_from_counts(counts, reference_counts)
    evidence: dict[str, float | int | str] = {
        "alpha": alpha,
        "reference_n": int(reference_counts.sum()),
        "method": "histogram",
    }
    if n < min_events:
        phase: Phase = "inconclusive"
    else:
        phase = "breach" if p < alpha and d >= min_effect else "ok"
    return Measurement("ks", signal, phase, "ks_d", d, min_effect, n, p, evidence)


def on_view(config: KsConfig, view: NumericView) -> Measurement:
    return measure(
        view.counts,
        view.reference_counts,
        signal=view.signal,
        alpha=config.alpha,
        min_effect=config.min_effect,
        min_events=config.min_events,
    )


def no_reference(kind: str, statistic: str, threshold: float, signal: str, n: int) -> Measurement:
    """Nothing to compare a signal with (no baseline, no concurrent window): inconclusive."""
    return Measurement(
        kind, signal, "inconclusive", statistic, 0.0, threshold, n, None, {"reason": "no_reference"}
    )


def on_version(_instance: str, config: KsConfig, inputs: VersionInputs) -> list[Measurement]:
    out: list[Measurement] = []
    for signal in inputs.matching(config.signals):
        if signal not in inputs.window.numeric:
            continue  # KS reads numbers only; labels are PSI's
        view = inputs.numeric_view(signal)
        out.append(
            on_view(config, view)
            if view is not None
            else no_reference("ks", "ks_d", config.min_effect, signal, inputs.events(signal))
        )
    return out


def confirm_view(m: Measurement, view: NumericView, min_effect: float) -> Measurement:
    """Re-test a KS breach with the exact two-sample test on the capped samples, keeping the
    correction's scaling of p."""
    d_exact, p_exact = ks_exact(view.sample, view.reference_sample)
    factor = float(m.evidence.get("p_factor", 1.0))
    alpha = float(m.evidence.get("alpha", 0.0))
    confirmed = d_exact >= min_effect and min(1.0, p_exact * factor) < alpha
    evidence = {
        **m.evidence,
        "method": "exact",
        "d_histogram": m.value,
        "p_histogram": m.p_value if m.p_value is not None else 1.0,
        "sample_n": len(view.sample),
        "reference_sample_n": len(view.reference_sample),
    }
    return Measurement(
        m.detector,
        m.signal,
        "breach" if confirmed else "ok",
        m.statistic,
        d_exact,
        m.threshold,
        m.n,
        p_exact,
        evidence,
    )


def confirm(config: KsConfig, m: Measurement, inputs: VersionInputs) -> Measurement:
    view = inputs.numeric_view(m.signal)
    return m if view is None else confirm_view(m, view, config.min_effect)


KIND = DetectorKind(
    "ks",
    KsConfig,
    "two-sample KS on numeric values",
    frozenset({"prediction", "feature"}),
    on_version=on_version,
    confirm=confirm,
    reservoir=lambda config: config.reservoir,
)
