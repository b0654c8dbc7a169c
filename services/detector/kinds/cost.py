"""cost (delayed tier): cost per prediction above the reference's by more than a share."""

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
from rollguard_services.detector.windows import MetricSums


class CostConfig(DetectorBase):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["cost"] = "cost"
    tier: Tier = "delayed"
    min_events: int = Field(default=50, ge=1, description="Fewer events in a window: inconclusive.")
    metric: str = Field(default="cost", min_length=1)
    max_increase: float = Field(default=0.2, gt=0, description="0.2 = 20 % above the baseline.")


def measure(
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


def on_version(_instance: str, config: CostConfig, inputs: VersionInputs) -> list[Measurement]:
    sums = inputs.window.metrics.get(config.metric, MetricSums())
    base = inputs.reference.metrics.get(config.metric)
    counted = sums.ratio_events > 0
    return [
        measure(
            sums.numerator if counted else sums.total,
            int(sums.denominator) if counted else sums.n,
            base[0] if base else None,
            metric=config.metric,
            max_increase=config.max_increase,
            min_events=config.min_events,
        )
    ]


KIND = DetectorKind(
    "cost",
    CostConfig,
    "cost per prediction against the baseline",
    frozenset({"business"}),
    on_version=on_version,
)
