"""Detectors: pure functions over window state, each with a frozen descriptor, registered by name.

A detector returns a Measurement (phase ok / breach / inconclusive / no_data), never raises
for an expected outcome.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.special import kolmogorov
from scipy.stats import ks_2samp

from rollguard import detector_policy as dp
from rollguard.detector_policy import DetectorBase
from rollguard.errors import ConfigError

Phase = Literal["ok", "breach", "inconclusive", "no_data"]


@dataclass(frozen=True)
class Measurement:
    detector: str
    signal: str
    phase: Phase
    statistic: str
    value: float
    threshold: float
    n: int
    p_value: float | None = None
    evidence: dict[str, float | int | str] = field(default_factory=dict)


def wilson_lower_bound(successes: int, n: int, confidence: float = 0.95) -> float:
    """Lower end of the Wilson score interval for a proportion; 0.0 when n == 0.

    One-sided: with confidence 0.95 the true rate is above the bound with probability 0.95.
    """
    if n <= 0:
        return 0.0
    z = NormalDist().inv_cdf(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / denom)


def error_rate(
    errors: int, n: int, *, threshold: float, min_events: int, confidence: float
) -> Measurement:
    """Breach when the Wilson lower bound of errors/n exceeds ``threshold``."""
    if n == 0:
        return Measurement("error_rate", "error_rate", "no_data", "wilson_lower", 0.0, threshold, 0)
    lower = wilson_lower_bound(errors, n, confidence)
    evidence: dict[str, float | int | str] = {
        "errors": errors,
        "rate": errors / n,
        "confidence": confidence,
    }
    if n < min_events:
        phase: Phase = "inconclusive"
    else:
        phase = "breach" if lower > threshold else "ok"
    return Measurement(
        "error_rate", "error_rate", phase, "wilson_lower", lower, threshold, n, None, evidence
    )


# Fixed log-spaced latency bins from 0.01 ms to one day: bounded state, ~2 % relative error.
LATENCY_EDGES: npt.NDArray[np.float64] = np.concatenate(
    ([0.0], np.geomspace(0.01, 86_400_000.0, 1200))
)


def latency_histogram(values_ms: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Counts of ``values_ms`` in LATENCY_EDGES bins (vectorised, one pass)."""
    idx = np.searchsorted(LATENCY_EDGES, values_ms, side="right") - 1
    np.clip(idx, 0, len(LATENCY_EDGES) - 2, out=idx)
    return np.bincount(idx, minlength=len(LATENCY_EDGES) - 1).astype(np.int64)


def histogram_quantile(counts: npt.NDArray[np.int64], q: float) -> float:
    """The q-quantile from binned counts, reported as the upper edge of its bin."""
    total = int(counts.sum())
    if total == 0:
        return math.nan
    rank = q * total
    i = int(np.searchsorted(np.cumsum(counts), rank, side="left"))
    return float(LATENCY_EDGES[min(i + 1, len(LATENCY_EDGES) - 1)])


def latency(
    counts: npt.NDArray[np.int64], *, sla_ms: float, p99_multiplier: float, min_events: int
) -> Measurement:
    """Breach when p99 exceeds ``p99_multiplier × sla_ms``."""
    n = int(counts.sum())
    threshold = sla_ms * p99_multiplier
    if n == 0:
        return Measurement("latency", "latency_ms", "no_data", "p99_ms", 0.0, threshold, 0)
    p50, p95, p99 = (histogram_quantile(counts, q) for q in (0.5, 0.95, 0.99))
    if n < min_events:
        phase: Phase = "inconclusive"
    else:
        phase = "breach" if p99 > threshold else "ok"
    evidence: dict[str, float | int | str] = {"p50_ms": p50, "p95_ms": p95, "sla_ms": sla_ms}
    return Measurement("latency", "latency_ms", phase, "p99_ms", p99, threshold, n, None, evidence)


# --- distribution tests -------------------------------------------------------------------


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


def ks(
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


def psi(
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


# --- rates ----------------------------------------------------------------------------------


def two_proportion_p(successes: float, n: float, base_successes: float, base_n: float) -> float:
    """One-sided p-value that the window's proportion is below the baseline's (pooled z)."""
    if n <= 0 or base_n <= 0:
        return 1.0
    pooled = (successes + base_successes) / (n + base_n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / base_n))
    if se == 0:
        return 1.0 if successes / n >= base_successes / base_n else 0.0
    z = (successes / n - base_successes / base_n) / se
    return NormalDist().cdf(z)


def business_metric(
    value: float,
    n: int,
    baseline: float | None,
    *,
    metric: str,
    max_relative_drop: float,
    alpha: float,
    min_events: int,
    successes: float | None = None,
    base_successes: float | None = None,
    base_n: float | None = None,
) -> Measurement:
    """Relative drop of a rate (CTR, conversion, revenue per request) against the baseline.

    ``value`` is the window's rate, ``baseline`` the reference rate. Where counts exist
    (successes of n against base_successes of base_n) a one-sided two-proportion test must also
    be significant; without counts the relative drop alone decides (p_value None).
    """
    signal = f"metric:{metric}"
    if n == 0:
        return Measurement(
            "business_metric", signal, "no_data", "relative_drop", 0.0, max_relative_drop, 0
        )
    if baseline is None or baseline <= 0:
        return Measurement(
            "business_metric",
            signal,
            "inconclusive",
            "relative_drop",
            0.0,
            max_relative_drop,
            n,
            None,
            {"reason": "no_baseline", "rate": value},
        )
    drop = (baseline - value) / baseline
    p = None
    if successes is not None and base_successes is not None and base_n is not None:
        p = two_proportion_p(successes, n, base_successes, base_n)
    evidence: dict[str, float | int | str] = {"rate": value, "baseline": baseline, "alpha": alpha}
    if n < min_events:
        phase: Phase = "inconclusive"
    else:
        significant = p is None or p < alpha
        phase = "breach" if drop > max_relative_drop and significant else "ok"
    return Measurement(
        "business_metric", signal, phase, "relative_drop", drop, max_relative_drop, n, p, evidence
    )


def trailing_failures(previous: int, ok: npt.NDArray[np.bool_]) -> int:
    """Consecutive failed checks at the end, continuing a run of ``previous`` failures."""
    if len(ok) == 0:
        return previous
    passed = np.flatnonzero(ok)
    if len(passed) == 0:
        return previous + len(ok)
    return int(len(ok) - 1 - passed[-1])


def health(
    consecutive: int, checks: int, *, consecutive_failures: int, min_events: int
) -> Measurement:
    """Breach when the last ``consecutive_failures`` health checks all failed."""
    if checks == 0 and consecutive == 0:
        return Measurement(
            "health", "health", "no_data", "consecutive_failures", 0.0, consecutive_failures, 0
        )
    if checks < min_events and consecutive < consecutive_failures:
        phase: Phase = "inconclusive"
    else:
        phase = "breach" if consecutive >= consecutive_failures else "ok"
    return Measurement(
        "health",
        "health",
        phase,
        "consecutive_failures",
        float(consecutive),
        float(consecutive_failures),
        checks,
    )


def feature_quality(
    n: int,
    nulls: int,
    out_of_range: int,
    unknown: int,
    *,
    signal: str,
    max_null_rate: float,
    max_out_of_range_rate: float,
    max_unknown_category_rate: float,
    min_events: int,
) -> Measurement:
    """Null, out-of-range and unknown-category rates of one feature in a window.

    ``value`` is the worst rate relative to its limit (> 1 means a gate failed); the statistic
    names that gate and the evidence holds all three rates.
    """
    if n == 0:
        return Measurement("feature_quality", signal, "no_data", "null_rate", 0.0, max_null_rate, 0)
    rates = {
        "null_rate": (nulls / n, max_null_rate),
        "out_of_range_rate": (out_of_range / n, max_out_of_range_rate),
        "unknown_category_rate": (unknown / n, max_unknown_category_rate),
    }
    worst = max(rates, key=lambda k: rates[k][0] - rates[k][1])
    rate, limit = rates[worst]
    evidence: dict[str, float | int | str] = {k: v[0] for k, v in rates.items()}
    if n < min_events:
        phase: Phase = "inconclusive"
    else:
        phase = "breach" if rate > limit else "ok"
    return Measurement("feature_quality", signal, phase, worst, rate, limit, n, None, evidence)


# --- slow decline on joined ground truth ------------------------------------------------------


@dataclass(frozen=True)
class DriftState:
    """Running state of Page-Hinkley / CUSUM over per-prediction losses (a few floats)."""

    n: int = 0
    mean: float = 0.0
    cum: float = 0.0
    low: float = 0.0

    @property
    def statistic(self) -> float:
        return self.cum - self.low


def page_hinkley(losses: npt.NDArray[np.float64], state: DriftState, *, delta: float) -> DriftState:
    """Page-Hinkley for an increase of the mean loss: m_t = Σ (x_i − x̄_i − δ), alarm when
    m_t − min m exceeds λ. x̄_i is the running mean including x_i. Vectorised over ``losses``."""
    if len(losses) == 0:
        return state
    idx = state.n + np.arange(1, len(losses) + 1)
    means = (state.mean * state.n + np.cumsum(losses)) / idx
    cum = state.cum + np.cumsum(losses - means - delta)
    low = min(state.low, float(cum.min()))
    return DriftState(int(idx[-1]), float(means[-1]), float(cum[-1]), low)


def cusum(
    losses: npt.NDArray[np.float64], state: DriftState, *, delta: float, target: float
) -> DriftState:
    """One-sided CUSUM S_t = max(0, S_{t−1} + x_t − target − δ), as C_t − min C (vectorised).

    ``target`` is the expected loss (the baseline's); ``statistic`` of the result is S_t.
    """
    if len(losses) == 0:
        return state
    cum = state.cum + np.cumsum(losses - target - delta)
    low = min(state.low, float(cum.min()))
    n = state.n + len(losses)
    mean = (state.mean * state.n + float(losses.sum())) / n
    return DriftState(n, mean, float(cum[-1]), low)


def ground_truth(
    state: DriftState, *, method: str, threshold: float, min_events: int
) -> Measurement:
    """Breach when the Page-Hinkley / CUSUM statistic over joined losses exceeds ``threshold``."""
    if state.n == 0:
        return Measurement("ground_truth", "outcome_loss", "no_data", method, 0.0, threshold, 0)
    value = state.statistic
    if state.n < min_events:
        phase: Phase = "inconclusive"
    else:
        phase = "breach" if value > threshold else "ok"
    return Measurement(
        "ground_truth",
        "outcome_loss",
        phase,
        method,
        value,
        threshold,
        state.n,
        None,
        {"mean_loss": state.mean},
    )


def fairness(
    positives: dict[str, int],
    totals: dict[str, int],
    *,
    segment: str,
    metric: str,
    min_ratio: float,
    min_events: int,
) -> Measurement:
    """Disparity ratio: lowest segment rate over highest, among segments with ``min_events``.

    Breach below ``min_ratio`` (0.8: the four-fifths rule). Fewer than two segments with
    enough events: inconclusive.
    """
    signal = f"segment:{segment}"
    n = sum(totals.values())
    if n == 0:
        return Measurement("fairness", signal, "no_data", "disparity_ratio", 1.0, min_ratio, 0)
    rates = {s: positives.get(s, 0) / t for s, t in totals.items() if t >= min_events}
    if len(rates) < 2:
        return Measurement(
            "fairness",
            signal,
            "inconclusive",
            "disparity_ratio",
            1.0,
            min_ratio,
            n,
            None,
            {"segments": len(rates)},
        )
    low, high = min(rates, key=rates.__getitem__), max(rates, key=rates.__getitem__)
    ratio = rates[low] / rates[high] if rates[high] > 0 else 1.0
    evidence: dict[str, float | int | str] = {
        "metric": metric,
        "lowest": low,
        "highest": high,
        "lowest_rate": rates[low],
        "highest_rate": rates[high],
    }
    phase: Phase = "breach" if ratio < min_ratio else "ok"
    return Measurement(
        "fairness", signal, phase, "disparity_ratio", ratio, min_ratio, n, None, evidence
    )


def cost(
    total: float,
    n: int,
    baseline: float | None,
    *,
    metric: str,
    max_increase: float,
    min_events: int,
) -> Measurement:
    """Cost per prediction against the baseline's; breach above baseline × (1 + max_increase)."""
    signal = f"metric:{metric}"
    if n == 0:
        return Measurement("cost", signal, "no_data", "relative_increase", 0.0, max_increase, 0)
    per = total / n
    if baseline is None or baseline <= 0:
        return Measurement(
            "cost",
            signal,
            "inconclusive",
            "relative_increase",
            0.0,
            max_increase,
            n,
            None,
            {"reason": "no_baseline", "per_prediction": per},
        )
    increase = per / baseline - 1
    evidence: dict[str, float | int | str] = {"per_prediction": per, "baseline": baseline}
    if n < min_events:
        phase: Phase = "inconclusive"
    else:
        phase = "breach" if increase > max_increase else "ok"
    return Measurement(
        "cost", signal, phase, "relative_increase", increase, max_increase, n, None, evidence
    )


# --- false-alarm control ------------------------------------------------------------------


def holm(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Holm step-down adjusted p-values (family-wise error), in the input order."""
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def benjamini_hochberg(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Benjamini–Hochberg adjusted p-values (false discovery rate), in the input order."""
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    out = np.empty(m)
    out[order] = adjusted
    return out


CORRECTIONS: dict[str, Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]] = {
    "holm": holm,
    "bh": benjamini_hochberg,
    "none": lambda p: p.copy(),
}


@dataclass(frozen=True)
class DetectorSpec:
    """What the service needs to know of a detector kind: its signals and its config model."""

    name: str
    signals: frozenset[str]
    description: str
    fn: Callable[..., Measurement]
    config: type[DetectorBase]
    tests: bool = False  # has a p-value that takes part in the multiple-testing correction


REGISTRY: dict[str, DetectorSpec] = {
    "error_rate": DetectorSpec(
        "error_rate",
        frozenset({"latency"}),
        "Wilson lower bound of the error rate",
        error_rate,
        dp.ErrorRateConfig,
    ),
    "latency": DetectorSpec(
        "latency",
        frozenset({"latency"}),
        "p99 latency against the SLA",
        latency,
        dp.LatencyConfig,
    ),
    "health": DetectorSpec(
        "health",
        frozenset({"health"}),
        "N consecutive failed health checks",
        health,
        dp.HealthConfig,
    ),
    "ks": DetectorSpec(
        "ks",
        frozenset({"prediction", "feature"}),
        "two-sample KS on numeric values",
        ks,
        dp.KsConfig,
        tests=True,
    ),
    "psi": DetectorSpec(
        "psi",
        frozenset({"prediction", "feature"}),
        "population stability index",
        psi,
        dp.PsiConfig,
    ),
    "business_metric": DetectorSpec(
        "business_metric",
        frozenset({"business"}),
        "relative drop of a business rate",
        business_metric,
        dp.BusinessMetricConfig,
        tests=True,
    ),
    "feature_quality": DetectorSpec(
        "feature_quality",
        frozenset({"feature"}),
        "null, out-of-range, unknown-category rates",
        feature_quality,
        dp.FeatureQualityConfig,
    ),
    "ground_truth": DetectorSpec(
        "ground_truth",
        frozenset({"outcome"}),
        "Page-Hinkley / CUSUM on joined outcomes",
        ground_truth,
        dp.GroundTruthConfig,
    ),
    "fairness": DetectorSpec(
        "fairness",
        frozenset({"prediction"}),
        "disparity ratio across a segment",
        fairness,
        dp.FairnessConfig,
    ),
    "cost": DetectorSpec(
        "cost",
        frozenset({"business"}),
        "cost per prediction against the baseline",
        cost,
        dp.CostConfig,
    ),
}


def get_detector(name: str) -> DetectorSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown detector {name!r}; known: {', '.join(sorted(REGISTRY))}"
        ) from None
