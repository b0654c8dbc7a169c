"""health (immediate tier): the last N health checks of a version all failed."""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, Field

from rollguard.detector_policy import DetectorBase, Tier
from rollguard_services.detector.kinds.base import (
    DetectorKind,
    Measurement,
    Phase,
    VersionInputs,
)


class HealthConfig(DetectorBase):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["health"] = "health"
    tier: Tier = "immediate"
    min_events: int = Field(default=1, ge=1)
    consecutive_failures: int = Field(default=3, ge=1)


def trailing_failures(previous: int, ok: npt.NDArray[np.bool_]) -> int:
    """Consecutive failed checks at the end, continuing a run of ``previous`` failures."""
    if len(ok) == 0:
        return previous
    passed = np.flatnonzero(ok)
    if len(passed) == 0:
        return previous + len(ok)
    return int(len(ok) - 1 - passed[-1])


def measure(
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


def on_version(_instance: str, config: HealthConfig, inputs: VersionInputs) -> list[Measurement]:
    return [
        measure(
            inputs.state.consecutive_failures,
            inputs.window.health_checks,
            consecutive_failures=config.consecutive_failures,
            min_events=config.min_events,
        )
    ]


KIND = DetectorKind(
    "health",
    HealthConfig,
    "N consecutive failed health checks",
    frozenset({"health"}),
    on_version=on_version,
)
