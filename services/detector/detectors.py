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


@dataclass(frozen=True)
class DetectorSpec:
    name: str
    signals: frozenset[str]
    description: str
    fn: Callable[..., Measurement]


REGISTRY: dict[str, DetectorSpec] = {
    "error_rate": DetectorSpec(
        "error_rate", frozenset({"latency"}), "Wilson lower bound of the error rate", error_rate
    ),
    "latency": DetectorSpec(
        "latency", frozenset({"latency"}), "p99 latency against the SLA", latency
    ),
}


def get_detector(name: str) -> DetectorSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown detector {name!r}; known: {', '.join(sorted(REGISTRY))}"
        ) from None
