"""k-of-n sustain: a rapid-tier measurement must breach in k of the last n windows to count.

Immediate and delayed tiers publish at once. Every rapid measurement updates the memory
(no_data and ok count as misses).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

from rollguard.detector_policy import FalseAlarmPolicy
from rollguard.events import Sustain as SustainCount
from rollguard_services.detector.measurement import Judged

SignalKey = tuple[str, str]  # (detector instance, signal)


@dataclass
class Sustain:
    """k-of-n memory per (detector instance, signal): a rapid breach must repeat to count."""

    k: int
    n: int
    history: dict[SignalKey, deque[bool]] = field(default_factory=dict)

    @classmethod
    def of(cls, policy: FalseAlarmPolicy) -> Sustain:
        return cls(policy.sustain_k, max(policy.sustain_n, policy.sustain_k))

    def update(self, judged: Judged) -> tuple[bool, int]:
        """Record one window's outcome; (sustained, breaches among the last n)."""
        key = (judged.instance, judged.measurement.signal)
        seen = self.history.get(key)
        if seen is None:
            seen = self.history[key] = deque(maxlen=self.n)
        seen.append(judged.measurement.phase == "breach")
        hits = sum(seen)
        return judged.measurement.phase == "breach" and hits >= self.k, hits


def publishable(judged: list[Judged], sustain: Sustain) -> list[Judged]:
    """Breaches to publish now: immediate and delayed tiers at once; the rapid tier once
    sustained. Every rapid measurement updates the memory (no_data and ok count as misses)."""
    out: list[Judged] = []
    for j in judged:
        if j.tier == "rapid":
            sustained, hits = sustain.update(j)
            if sustained:
                m = j.measurement
                ev = {**m.evidence, "sustain": f"{hits}/{sustain.n}"}
                counted = SustainCount(k=sustain.k, n=sustain.n, hits=hits)
                out.append(replace(j, measurement=replace(m, evidence=ev), sustain=counted))
        elif j.measurement.phase == "breach":
            out.append(j)
    return out
