"""latency (immediate tier): p99 latency above a multiple of the SLA."""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, Field

from rollguard.detector_policy import DetectorBase, Tier
from rollguard_services.detector.histograms import histogram_quantile
from rollguard_services.detector.kinds.base import DetectorKind, Measurement, Phase
from rollguard_services.detector.windows import LatencyWindow


class LatencyConfig(DetectorBase):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["latency"] = "latency"
    tier: Tier = "immediate"
    min_events: int = Field(default=50, ge=1, description="Fewer events in a window: inconclusive.")
    sla_ms: float = Field(default=100.0, gt=0)
    p99_multiplier: float = Field(
        default=5.0, gt=0, description="Breach when p99 > multiplier × SLA."
    )


def measure(
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


def on_latency(config: LatencyConfig, window: LatencyWindow) -> list[Measurement]:
    return [
        measure(
            window.counts,
            sla_ms=config.sla_ms,
            p99_multiplier=config.p99_multiplier,
            min_events=config.min_events,
        )
    ]


KIND = DetectorKind(
    "latency",
    LatencyConfig,
    "p99 latency against the SLA",
    frozenset({"latency"}),
    on_latency=on_latency,
)
