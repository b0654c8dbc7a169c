"""business_metric (rapid tier): the relative drop of a business rate (CTR, conversion)
against the reference, significant by a two-proportion test where counts exist."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal

from pydantic import ConfigDict, Field

from rollguard.detector_policy import DetectorBase, Tier
from rollguard_services.detector.kinds.base import (
    DetectorKind,
    Measurement,
    Phase,
    VersionInputs,
)
from rollguard_services.detector.windows import MetricSums


class BusinessMetricConfig(DetectorBase):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["business_metric"] = "business_metric"
    tier: Tier = "rapid"
    min_events: int = Field(default=50, ge=1, description="Fewer events in a window: inconclusive.")
    metric: str = Field(default="ctr", min_length=1)
    max_relative_drop: float = Field(default=0.1, gt=0, lt=1, description="0.1 = a 10 % drop.")
    alpha: float = Field(
        default=0.01, gt=0, lt=1, description="Two-proportion test, where counts exist."
    )


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


def measure(
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


def on_version(
    _instance: str, config: BusinessMetricConfig, inputs: VersionInputs
) -> list[Measurement]:
    sums = inputs.window.metrics.get(config.metric, MetricSums())
    base = inputs.reference.metrics.get(config.metric)
    counted = sums.ratio_events > 0
    return [
        measure(
            sums.rate,
            int(sums.denominator) if counted else sums.n,
            base[0] if base else None,
            metric=config.metric,
            max_relative_drop=config.max_relative_drop,
            alpha=config.alpha,
            min_events=config.min_events,
            successes=sums.numerator if counted else sums.total,
            base_successes=base[1] if base else None,
            base_n=base[2] if base else None,
        )
    ]


KIND = DetectorKind(
    "business_metric",
    BusinessMetricConfig,
    "relative drop of a business rate",
    frozenset({"business"}),
    on_version=on_version,
)
