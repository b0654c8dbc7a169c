"""Rollback drills: a fault injected on purpose into a dedicated drill model, through the path
production uses (rollguard.sdk), to prove the chain works before it is needed.

A drill model is ``rollguard-drill-<scenario>``: its own live pointer, cooldown and incidents,
never a real model's. Every service treats it as any model — the detector measures it, the
decider decides, the executor applies and the ledger records — except that the notifier does
not page for it (``is_drill``) unless ``ROLLGUARD_NOTIFIER_PAGE_DRILLS`` says so. The runner is
``rollguard drill`` (rollguard_shell/drill.py); each run is a ``DrillRun`` in the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Every drill model's id starts so.
DRILL_PREFIX = "rollguard-drill-"


def is_drill(model_id: str) -> bool:
    return model_id.startswith(DRILL_PREFIX)


@dataclass(frozen=True)
class Behaviour:
    """How a synthetic model version serves: its error rate, latency, health and predictions."""

    error_rate: float = 0.002
    latency_ms: float = 20.0
    healthy: bool = True
    prediction_shift: float = 0.0


GOOD = Behaviour()


@dataclass(frozen=True)
class Scenario:
    """A fault (the bad version's behaviour) and what must catch it."""

    name: str
    bad: Behaviour
    #: The detector instances (default policy names) of which one must breach.
    caught_by: tuple[str, ...]
    #: The drift scenario needs the good version's baseline (imported, as CI would).
    baseline: bool = False
    description: str = ""

    @property
    def model_id(self) -> str:
        return f"{DRILL_PREFIX}{self.name.replace('_', '-')}"


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "error_spike",
            Behaviour(error_rate=0.4),
            ("error_rate",),
            description="40 % of requests fail",
        ),
        Scenario(
            "latency_spike",
            Behaviour(latency_ms=900.0),
            ("latency",),
            description="p99 latency 900 ms against a 100 ms SLA",
        ),
        Scenario(
            "health_failure",
            Behaviour(healthy=False),
            ("health",),
            description="every health check fails",
        ),
        Scenario(
            "prediction_drift",
            Behaviour(prediction_shift=2.0),
            ("prediction_ks", "prediction_psi"),
            baseline=True,
            description="predictions shifted by 2 standard deviations",
        ),
    )
}
