"""What an evaluation yields: a measurement with a phase and the numbers behind it, never an
exception for an expected outcome; and the same judged for one detector instance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rollguard.detector_policy import Tier
from rollguard.events import Sustain as SustainCount

Phase = Literal["ok", "breach", "inconclusive", "no_data"]


@dataclass(frozen=True)
class Measurement:
    detector: str  # the kind
    signal: str
    phase: Phase
    statistic: str
    value: float
    threshold: float
    n: int
    p_value: float | None = None
    evidence: dict[str, float | int | str] = field(default_factory=dict)


@dataclass(frozen=True)
class Judged:
    """A measurement of one detector instance, with the tier its breach would carry."""

    instance: str
    tier: Tier
    measurement: Measurement
    #: Set on a rapid-tier measurement once it is sustained (k of the last n windows).
    sustain: SustainCount | None = None
