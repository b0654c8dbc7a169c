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
from typing import Literal

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
    #: Share of requests whose feature comes missing (a broken feature pipeline).
    null_rate: float = 0.0


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
    #: What the decider must do: roll back (at ``level``), or escalate to a person without a
    #: rollback, for ``escalation_reason``.
    expect: Literal["rollback", "escalation"] = "rollback"
    level: int = 1
    escalation_reason: str = ""
    #: The bad version runs on another feature pipeline than the good one.
    bad_pipeline: str | None = None
    #: The rollback target fails its health check before the bad version is deployed.
    target_unhealthy: bool = False

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
        Scenario(
            "feature_quality",
            Behaviour(null_rate=0.5),
            ("feature_quality",),
            description="half of the requests come without their feature",
        ),
        Scenario(
            "pipeline_mismatch",
            Behaviour(error_rate=0.4),
            ("error_rate",),
            description="40 % of requests fail on a new feature pipeline: the old model cannot "
            "go back alone",
            level=2,
            bad_pipeline="drill-next",
        ),
        Scenario(
            "target_not_ready",
            Behaviour(error_rate=0.4),
            ("error_rate",),
            description="40 % of requests fail while the rollback target is unhealthy",
            expect="escalation",
            escalation_reason="target_not_ready",
            target_unhealthy=True,
        ),
    )
}
