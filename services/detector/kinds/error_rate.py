"""error_rate (immediate tier): the Wilson lower bound of the error rate above a threshold."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal

from pydantic import ConfigDict, Field

from rollguard.detector_policy import DetectorBase, Tier
from rollguard_services.detector.kinds.base import DetectorKind, Measurement, Phase
from rollguard_services.detector.windows import LatencyWindow


class ErrorRateConfig(DetectorBase):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["error_rate"] = "error_rate"
    tier: Tier = "immediate"
    min_events: int = Field(default=50, ge=1, description="Fewer events in a window: inconclusive.")
    threshold: float = Field(
        default=0.05, gt=0, lt=1, description="Breach when the Wilson lower bound exceeds it."
    )
    confidence: float = Field(default=0.95, gt=0.5, lt=1)


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


def measure(
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


def on_latency(config: ErrorRateConfig, window: LatencyWindow) -> list[Measurement]:
    return [
        measure(
            window.errors,
            window.n,
            threshold=config.threshold,
            min_events=config.min_events,
            confidence=config.confidence,
        )
    ]


KIND = DetectorKind(
    "error_rate",
    ErrorRateConfig,
    "Wilson lower bound of the error rate",
    frozenset({"latency"}),
    on_latency=on_latency,
)
