"""What is worth telling people, as data: decisions and acks in, notifications out.

Pure functions, so the rules (what pages, what only posts, which key PagerDuty dedups on) can
be read and tested without HTTP.

Incident reference: the rollback's ``command_id`` when there is one (every ack carries it, so
trigger, acknowledge and resolve agree on it), else the decision's ``event_id``. Both resolve
with ``rollguard incident show``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rollguard.events import Breach, CommandAck, Decision, Tier

Kind = Literal[
    "rollback_decided",
    "investigate",
    "hold",
    "rollback_applied",
    "rollback_verified",
    "rollback_failed",
    "verification_failed",
    "unverifiable",
    "would_roll_back",
    "recommended",
]

#: Kinds PagerDuty gets whatever the tier: a human must act.
PAGE_ALWAYS: frozenset[str] = frozenset({"rollback_failed", "verification_failed", "unverifiable"})
#: The decisions that say a rollback did not verify, by their last reason's code.
NOT_VERIFIED: frozenset[str] = frozenset({"verification_failed", "unverifiable"})
#: Kinds that open a PagerDuty incident where the tier's route includes PagerDuty (a rollback,
#: or an escalation because no rollback is possible).
PAGE_OPENERS: frozenset[str] = frozenset({"rollback_decided", "investigate", "recommended"})
#: Kinds that move a PagerDuty incident along; sent only where the incident was paged.
PAGE_FOLLOW_UPS: frozenset[str] = frozenset({"rollback_applied", "rollback_verified"})


class BreachFacts(BaseModel):
    """The numbers behind a breach, as shown to people."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    detector: str
    signal: str
    statistic: str
    value: float
    threshold: float
    n: int
    p_value: float | None = None
    window_start: datetime
    window_end: datetime

    @classmethod
    def of(cls, b: Breach) -> BreachFacts:
        return cls(
            detector=b.detector,
            signal=b.signal,
            statistic=b.statistic,
            value=b.value,
            threshold=b.threshold,
            n=b.n,
            p_value=b.p_value,
            window_start=b.window_start,
            window_end=b.window_end,
        )

    def line(self) -> str:
        p = f", p={self.p_value:.3g}" if self.p_value is not None else ""
        return (
            f"{self.detector}: {self.statistic} = {self.value:.4g} > {self.threshold:.4g} "
            f"(n={self.n}{p}, window {self.window_start:%H:%M:%S}–{self.window_end:%H:%M:%S} UTC)"
        )


class Notification(BaseModel):
    """One thing to tell people about one incident. ``key`` is unique per source event."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(description="<source event id>:<kind>; a redelivery has the same key.")
    kind: Kind
    incident_ref: str
    dedup_key: str = Field(max_length=255, description="PagerDuty incident key.")
    tier: Tier | None
    ts: datetime
    model_id: str
    model_version: str
    system_version: str | None = None
    summary: str = Field(max_length=1024)
    decision_id: str | None = None
    command_id: str | None = None
    action: str | None = None
    level: int | None = None
    target_system_version: str | None = None
    reasons: list[str] = Field(default_factory=list)
    breaches: list[BreachFacts] = Field(default_factory=list)
    detail: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)


def dedup_key(model_id: str, ref: str) -> str:
    return f"rollguard/{model_id}/{ref}"[:255]


def _reason_lines(decision: Decision) -> list[str]:
    return [f"{r.code}: {r.detail}" if r.detail else r.code for r in decision.reasons]


def from_decision(
    decision: Decision, breaches: Iterable[Breach], *, notify_holds: bool
) -> Notification | None:
    observed = decision.reasons[-1].code == "observe_mode"
    recommended = any(r.code == "recommend_mode" for r in decision.reasons)
    if decision.action == "hold" and not notify_holds and not observed and not recommended:
        return None
    ref = decision.command_id or decision.event_id
    kind: Kind = {"rollback": "rollback_decided", "investigate": "investigate", "hold": "hold"}[
        decision.action
    ]  # type: ignore[assignment]
    what = f"{decision.model_id} {decision.model_version}"
    last = decision.reasons[-1].code
    if decision.action == "investigate" and last in NOT_VERIFIED:
        kind = last  # type: ignore[assignment]  # both are kinds
        verb = "did NOT verify" if last == "verification_failed" else "could not be verified"
        summary = f"Rollback of {decision.model_id} to {decision.model_version} {verb}"
    elif observed:
        kind = "would_roll_back"
        summary = (
            f"Would roll back {what} to {decision.target_system_version} (level "
            f"{decision.level}, {decision.tier} tier); observe mode: nothing was done"
        )
    elif recommended:
        kind = "recommended"
        summary = (
            f"Recommends rolling back {what} to {decision.target_system_version} (level "
            f"{decision.level}, {decision.tier} tier): confirm with rollguard approve "
            f"{decision.event_id} --as ROLE, or on the dashboard"
        )
    elif decision.action == "rollback":
        summary = (
            f"Rolling back {what} to {decision.target_system_version} (level {decision.level}, "
            f"{decision.tier} tier)"
        )
    elif decision.action == "investigate":
        summary = f"Investigate {what}: {last} ({decision.tier} tier)"
    else:
        summary = f"Holding {what}: {decision.reasons[-1].code}"
    return Notification(
        key=f"{decision.event_id}:{kind}",
        kind=kind,
        incident_ref=ref,
        dedup_key=dedup_key(decision.model_id, ref),
        tier=decision.tier,
        ts=decision.ts,
        model_id=decision.model_id,
        model_version=decision.model_version,
        system_version=decision.system_version,
        summary=summary[:1024],
        decision_id=decision.event_id,
        command_id=decision.command_id,
        action=decision.action,
        level=decision.level,
        target_system_version=decision.target_system_version,
        reasons=_reason_lines(decision),
        breaches=[BreachFacts.of(b) for b in breaches],
        metrics=dict(decision.metrics),
    )


def from_ack(ack: CommandAck, tier: Tier | None, decision_id: str | None) -> Notification | None:
    """Acks worth telling: applied, verified, failed, rejected ('received' is routine).

    One per command: the executor's per-component acks (and the compensations undoing them)
    are steps of it, told by its final ack, whose detail lists every component.
    """
    kind: Kind
    if ack.component is not None:
        return None
    if ack.status == "applied":
        kind, verb = "rollback_applied", "applied"
    elif ack.status == "verified":
        kind, verb = "rollback_verified", "verified: signals back to baseline"
    elif ack.status in ("failed", "rejected"):
        kind, verb = "rollback_failed", f"{ack.status.upper()}"
    else:
        return None
    detail = f": {ack.detail}" if ack.detail else ""
    return Notification(
        key=f"{ack.event_id}:{kind}",
        kind=kind,
        incident_ref=ack.command_id,
        dedup_key=dedup_key(ack.model_id, ack.command_id),
        tier=tier,
        ts=ack.ts,
        model_id=ack.model_id,
        model_version=ack.model_version,
        system_version=ack.system_version,
        summary=f"Rollback of {ack.model_id} {ack.model_version} {verb}{detail}"[:1024],
        decision_id=decision_id,
        command_id=ack.command_id,
        detail=ack.detail,
        metrics=dict(ack.timings),
    )


def channels_for(
    n: Notification,
    routes: dict[str, list[str]],
    unknown_tier: list[str],
    paged: bool,
    configured: Iterable[str],
) -> list[str]:
    """Which configured channels get ``n``: the tier's route, plus PagerDuty where it must."""
    wanted = list(routes.get(n.tier, []) if n.tier else unknown_tier)
    if n.kind in PAGE_ALWAYS or (n.kind in PAGE_FOLLOW_UPS and paged):
        wanted.append("pagerduty")
    elif n.kind not in PAGE_OPENERS:
        # Holds never page; follow-ups of an incident PagerDuty never heard of would be noise.
        wanted = [c for c in wanted if c != "pagerduty"]
    have = set(configured)
    return [c for c in dict.fromkeys(wanted) if c in have]


def as_json(n: Notification) -> dict[str, Any]:
    return n.model_dump(mode="json")
