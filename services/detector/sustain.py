"""k-of-n sustain: a rapid-tier measurement must breach in k of the last n windows to count,
unless it is severe: a corrected p-value at most ``severe_p`` and an effect of at least
``severe_effect`` times its threshold publish in the first window (a shift that obvious is
not noise, and waiting a window for it costs a window of bad traffic).

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
    severe_p: float = 0.0
    severe_effect: float = 1.0

    @classmethod
    def of(cls, policy: FalseAlarmPolicy) -> Sustain:
        return cls(
            policy.sustain_k,
            max(policy.sustain_n, policy.sustain_k),
            severe_p=policy.severe_p,
            severe_effect=policy.severe_effect,
        )

    def severe(self, judged: Judged) -> bool:
        """Past the severe bar: a corrected p-value (the exact confirmation's too, when it
        ran) at most ``severe_p`` and the statistic at least ``severe_effect`` × threshold."""
        m = judged.measurement
        adjusted = m.evidence.get("p_adjusted")
        if m.phase != "breach" or self.severe_p <= 0 or not isinstance(adjusted, float | int):
            return False
        p = float(adjusted)
        factor = m.evidence.get("p_factor")
        if m.p_value is not None and isinstance(factor, float | int):
            p = max(p, min(1.0, m.p_value * float(factor)))
        return p <= self.severe_p and m.value >= self.severe_effect * m.threshold

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
            severe = not sustained and sustain.severe(j)
            if sustained or severe:
                m = j.measurement
                ev = {
                    **m.evidence,
                    "sustain": f"{hits}/{sustain.n}" + (" severe" if severe else ""),
                }
                counted = SustainCount(k=sustain.k, n=sustain.n, hits=hits, severe=severe)
                out.append(replace(j, measurement=replace(m, evidence=ev), sustain=counted))
        elif j.measurement.phase == "breach":
            out.append(j)
    return out
