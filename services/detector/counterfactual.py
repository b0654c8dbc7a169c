"""The counterfactual check: what the version a rollback would restore does on the live
version's inputs. The router scores a sample of live requests with that known-good version in
shadow (``PredictionEvent.shadow``); the detector windows them apart and measures them against
that version's own baseline like any version, then names the result on each rapid-tier breach
of the live version (``Breach.counterfactual``). If the target drifts the same way on the same
inputs, a rollback would not help: the decider calls it a data shift."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from rollguard.events import Counterfactual
from rollguard_services.detector.measurement import Judged

#: A shadow window this many window lengths older than the breach's window is stale.
MAX_LAG_WINDOWS = 2.0


@dataclass
class Shadowed:
    """The last judged window of a version's shadow predictions: measurements by
    (detector instance, signal). Only windows measured against a baseline are kept."""

    model_version: str
    end: float
    seconds: float
    judged: dict[tuple[str, str], Judged] = field(default_factory=dict)

    @classmethod
    def of(cls, version: str, end: float, seconds: float, judged: list[Judged]) -> Shadowed:
        conclusive = (j for j in judged if j.measurement.phase in ("ok", "breach"))
        return cls(
            version, end, seconds, {(j.instance, j.measurement.signal): j for j in conclusive}
        )


def counterfactual(
    shadowed: Shadowed | None, live_version: str, window_end: float, j: Judged
) -> Counterfactual | None:
    """The shadow's measurement of ``j``'s detector and signal, if recent and conclusive."""
    if shadowed is None or shadowed.model_version == live_version or j.tier != "rapid":
        return None
    if window_end - shadowed.end > MAX_LAG_WINDOWS * shadowed.seconds:
        return None
    seen = shadowed.judged.get((j.instance, j.measurement.signal))
    if seen is None:
        return None
    m = seen.measurement
    return Counterfactual(
        model_version=shadowed.model_version,
        detector=seen.instance,
        statistic=m.statistic,
        value=m.value,
        p_value=None if m.p_value is None else min(1.0, max(0.0, m.p_value)),
        threshold=m.threshold,
        n=m.n,
        drifted=m.phase == "breach",
        window_end=datetime.fromtimestamp(shadowed.end, UTC),
    )
