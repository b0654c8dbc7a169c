"""feature_quality (rapid tier): null, out-of-range and unknown-category rates per feature."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from rollguard.detector_policy import DetectorBase, Tier
from rollguard_services.detector.kinds.base import (
    DetectorKind,
    Measurement,
    Phase,
    VersionInputs,
)
from rollguard_services.detector.kinds.error_rate import wilson_lower_bound


class FeatureQualityConfig(DetectorBase):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["feature_quality"] = "feature_quality"
    tier: Tier = "rapid"
    min_events: int = Field(default=50, ge=1, description="Fewer events in a window: inconclusive.")
    max_null_rate: float = Field(default=0.05, ge=0, le=1)
    max_out_of_range_rate: float = Field(default=0.05, ge=0, le=1)
    max_unknown_category_rate: float = Field(default=0.05, ge=0, le=1)
    confidence: float = Field(
        default=0.95,
        gt=0.5,
        lt=1,
        description="A gate fails when the rate's one-sided lower confidence bound (Wilson) "
        "is above its limit, not the window's raw rate: 6 out-of-range values in 100 is no "
        "evidence of a rate above 5 %.",
    )


def measure(
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
    confidence: float = 0.95,
) -> Measurement:
    """Null, out-of-range and unknown-category rates of one feature in a window.

    The statistic names the gate whose lower confidence bound is furthest above (or least
    below) its limit, ``value`` is that gate's rate in the window; it fails when the bound is
    above the limit. The evidence holds all three rates and the bound.
    """
    if n == 0:
        return Measurement("feature_quality", signal, "no_data", "null_rate", 0.0, max_null_rate, 0)
    gates = {
        "null_rate": (nulls, max_null_rate),
        "out_of_range_rate": (out_of_range, max_out_of_range_rate),
        "unknown_category_rate": (unknown, max_unknown_category_rate),
    }
    lower = {k: wilson_lower_bound(count, n, confidence) for k, (count, _) in gates.items()}
    worst = max(gates, key=lambda k: lower[k] - gates[k][1])
    rate, limit = gates[worst][0] / n, gates[worst][1]
    evidence: dict[str, float | int | str] = {k: count / n for k, (count, _) in gates.items()}
    evidence["lower_bound"] = lower[worst]
    evidence["confidence"] = confidence
    if n < min_events:
        phase: Phase = "inconclusive"
    else:
        phase = "breach" if lower[worst] > limit else "ok"
    return Measurement("feature_quality", signal, phase, worst, rate, limit, n, None, evidence)


def on_version(
    _instance: str, config: FeatureQualityConfig, inputs: VersionInputs
) -> list[Measurement]:
    window, ref = inputs.window, inputs.reference

    def gate(signal: str, n: int, nulls: int, out_of_range: int, unknown: int) -> Measurement:
        return measure(
            n,
            nulls,
            out_of_range,
            unknown,
            signal=signal,
            max_null_rate=config.max_null_rate,
            max_out_of_range_rate=config.max_out_of_range_rate,
            max_unknown_category_rate=config.max_unknown_category_rate,
            min_events=config.min_events,
            confidence=config.confidence,
        )

    out: list[Measurement] = []
    for signal, acc in window.numeric.items():
        if signal.startswith("feature:"):
            out_of_range = acc.out_of_range if acc.grid is not None else 0
            out.append(gate(signal, acc.n, acc.nulls, out_of_range, 0))
    for signal, cat in window.categorical.items():
        if signal.startswith("feature:"):
            known = ref.categorical.get(signal)
            unknown = (
                sum(c for k, c in cat.counts.items() if k not in known) if known is not None else 0
            )
            out.append(gate(signal, cat.n, cat.nulls, 0, unknown))
    return out


KIND = DetectorKind(
    "feature_quality",
    FeatureQualityConfig,
    "null, out-of-range, unknown-category rates",
    frozenset({"feature"}),
    on_version=on_version,
)
