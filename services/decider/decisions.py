"""The decision framework as pure functions: state and an input in; decisions, maybe a signed
command, acks, manifests and the new state out.

Every breach, request and approval that reaches these functions yields Decisions with
machine-readable reasons — a hold is a decision too. Only an exact redelivery of a breach
already decided is ignored.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from rollguard.authority import Identity
from rollguard.events import (
    Approval,
    Breach,
    CommandAck,
    Decision,
    HealthCheckEvent,
    Reason,
    RollbackCommand,
    RollbackRequest,
    SystemManifest,
)
from rollguard.policy import ModelPolicy
from rollguard.signing import Signer

#: How many handled breach ids a model remembers to drop redelivered duplicates.
BREACH_MEMORY = 256
#: Components compared to pick the rollback level.
NON_MODEL_COMPONENTS = ("feature_pipeline", "config", "infra")
DECIDER_ID = "rollguard-decider"


def _id(*parts: object) -> str:
    """A deterministic id: replaying the same input produces the same event ids."""
    return uuid.uuid5(uuid.NAMESPACE_OID, ":".join(str(p) for p in parts)).hex


class InFlight(BaseModel):
    model_config = ConfigDict(frozen=True)

    command_id: str
    decision_id: str
    target: SystemManifest
    bad: SystemManifest
    level: int
    issued_at: datetime
    expires_at: datetime
    metrics: dict[str, float] = {}


class Verifying(BaseModel):
    """A rollback that was applied: the restored version must stay clean until ``deadline``."""

    model_config = ConfigDict(frozen=True)

    command_id: str
    decision_id: str
    restored_version: str
    applied_at: datetime
    deadline: datetime
    metrics: dict[str, float] = {}


class Pending(BaseModel):
    """A decision waiting for approvals (levels 3 and 4)."""

    model_config = ConfigDict(frozen=True)

    decision_id: str
    level: int
    target: SystemManifest
    requested_by: str
    required_roles: tuple[str, ...]
    approvals: tuple[tuple[str, str], ...] = ()  # (name, role)
    expires_at: datetime


class ModelState(BaseModel):
    """What the decider knows of one model; stored in a faust table keyed by model_id."""

    model_config = ConfigDict(frozen=True)

    model_id: str
    live: SystemManifest | None = None
    known_good: tuple[SystemManifest, ...] = ()
    in_flight: InFlight | None = None
    verifying: Verifying | None = None
    cooldown_until: datetime | None = None
    locked: str | None = None
    pending: tuple[Pending, ...] = ()
    handled_breaches: tuple[str, ...] = ()
    last_breach: dict[str, datetime] = {}  # model_version → last breach time
    health: dict[str, tuple[datetime, bool]] = {}  # model_version → last check


@dataclass(frozen=True)
class Outcome:
    state: ModelState
    decisions: list[Decision] = field(default_factory=list)
    command: RollbackCommand | None = None
    acks: list[CommandAck] = field(default_factory=list)
    manifests: list[SystemManifest] = field(default_factory=list)

    @property
    def decision(self) -> Decision:
        return self.decisions[0]


# ---------------------------------------------------------------- following the world


def apply_manifest(state: ModelState, manifest: SystemManifest) -> ModelState:
    """Follow a deployment fact: the live pointer, and the known-good list (newest last)."""
    live = manifest if manifest.serving else state.live
    if (
        live is not None
        and state.live is not None
        and (live.system_version == state.live.system_version and manifest.status == "known_good")
    ):
        live = state.live  # marking the live version known good does not restart its bake
    others = tuple(k for k in state.known_good if k.system_version != manifest.system_version)
    if manifest.status == "known_good":
        known = (*others, manifest)
    elif manifest.status == "rolled_back":
        known = others
    else:  # live or candidate again: its known-good standing, if any, is unchanged
        known = state.known_good
    return state.model_copy(update={"live": live, "known_good": known})


def apply_health(state: ModelState, check: HealthCheckEvent) -> ModelState:
    health = {**state.health, check.model_version: (check.ts, check.ok)}
    return state.model_copy(update={"health": health})


def is_known_good(state: ModelState, system_version: str) -> bool:
    return any(k.system_version == system_version for k in state.known_good)


def bake(state: ModelState, policy: ModelPolicy, now: datetime) -> Outcome | None:
    """Mark the live version known good once it has been live ``bake_s`` without a breach."""
    live = state.live
    if live is None or is_known_good(state, live.system_version) or state.locked:
        return None
    if now - live.ts < timedelta(seconds=policy.rollback.bake_s):
        return None
    last = state.last_breach.get(live.model_version)
    if last is not None and last >= live.ts:
        return None
    marked = live.model_copy(
        update={
            "event_id": _id(live.system_version, "known_good", live.event_id),
            "ts": now,
            "status": "known_good",
            "note": f"baked {policy.rollback.bake_s:g}s without a breach",
        }
    )
    return Outcome(apply_manifest(state, marked), manifests=[marked])


# ---------------------------------------------------------------- targets and levels


def rollback_target(state: ModelState, system_version: str | None = None) -> SystemManifest | None:
    """The most recent known-good manifest other than the live one (or the one asked for)."""
    live_sv = state.live.system_version if state.live else None
    for manifest in reversed(state.known_good):
        if manifest.system_version == live_sv:
            continue
        if system_version is None or manifest.system_version == system_version:
            return manifest
    return None


def choose_level(
    live: SystemManifest, target: SystemManifest, policy: ModelPolicy
) -> tuple[int, list[Reason]]:
    """Level 1 when only the model differs; level 2 when any other component differs too.

    A model-only rollback onto a different feature pipeline (or config, or infra) would serve
    the old model on inputs it was not built for: it is refused and the reason recorded.
    """
    differing = [
        c
        for c in NON_MODEL_COMPONENTS
        if getattr(live.components, c) != getattr(target.components, c)
    ]
    if policy.rollback.level == "system":
        return 2, [Reason(code="policy_system_level", detail="policy asks for system rollbacks")]
    if not differing:
        return 1, [Reason(code="model_only", detail="only the model differs from the target")]
    detail = ", ".join(
        f"{c} {getattr(live.components, c)} live vs {getattr(target.components, c)} target"
        for c in differing
    )
    return 2, [
        Reason(
            code="model_only_incompatible",
            detail=f"model-only rollback refused: {detail}; restoring the whole system version",
        )
    ]


def target_ready(
    state: ModelState, target: SystemManifest, policy: ModelPolicy, now: datetime
) -> Reason | None:
    """None when the target may take traffic; else why not."""
    within = policy.rollback.target_ready_within_s
    if within is None:
        return None
    last = state.health.get(target.model_version)
    if last is None:
        return Reason(code="target_not_ready", detail=f"no health check of {target.model_version}")
    ts, ok = last
    if not ok:
        return Reason(
            code="target_not_ready", detail=f"{target.model_version} failed its last health check"
        )
    if now - ts > timedelta(seconds=within):
        return Reason(
            code="target_not_ready",
            detail=f"last health check of {target.model_version} is {(now - ts).total_seconds():.0f}s old",
        )
    return None


# ---------------------------------------------------------------- building events


def _decision(state: ModelState, now: datetime, **fields: Any) -> Decision:
    live = state.live
    fields.setdefault("model_version", live.model_version if live else "unknown")
    fields.setdefault("system_version", live.system_version if live else None)
    return Decision(ts=now, model_id=state.model_id, **fields)


def _command(
    state: ModelState,
    decision_id: str,
    target: SystemManifest,
    level: int,
    policy: ModelPolicy,
    now: datetime,
    signer: Signer,
) -> RollbackCommand:
    live = state.live
    assert live is not None
    return signer.sign(
        RollbackCommand(
            ts=now,
            model_id=live.model_id,
            model_version=live.model_version,
            system_version=live.system_version,
            command_id=_id("command", decision_id),
            decision_id=decision_id,
            from_manifest=live,
            to_manifest=target,
            level=level,
            issued_at=now,
            expires_at=now + timedelta(seconds=policy.rollback.command_ttl_s),
            nonce=secrets.token_hex(16),
            key_id=signer.key_id,
        )
    )


def _launch(
    state: ModelState,
    decision: Decision,
    target: SystemManifest,
    level: int,
    policy: ModelPolicy,
    now: datetime,
    signer: Signer,
) -> Outcome:
    """Issue the signed command for a rollback decision and remember it is in flight."""
    assert state.live is not None
    command = _command(state, decision.event_id, target, level, policy, now, signer)
    decision = decision.model_copy(update={"command_id": command.command_id})
    flight = InFlight(
        command_id=command.command_id,
        decision_id=decision.event_id,
        target=target,
        bad=state.live,
        level=level,
        issued_at=now,
        expires_at=command.expires_at,
        metrics=dict(decision.metrics),
    )
    return Outcome(state.model_copy(update={"in_flight": flight}), [decision], command)


# ---------------------------------------------------------------- breaches


def decide(
    state: ModelState,
    breach: Breach,
    policy: ModelPolicy,
    now: datetime,
    signer: Signer,
) -> Outcome | None:
    """Turn one breach into decisions (and a signed command when it is a rollback).

    Returns None only for a breach id already decided (a redelivery).
    """
    if breach.event_id in state.handled_breaches:
        return None
    state = state.model_copy(
        update={
            "handled_breaches": (*state.handled_breaches, breach.event_id)[-BREACH_MEMORY:],
            "last_breach": {**state.last_breach, breach.model_version: breach.ts},
        }
    )
    decision_id = uuid.uuid4().hex
    what = f"{breach.detector} {breach.statistic}={breach.value:.4g} > {breach.threshold:.4g}"
    metrics = incident_metrics(breach, now)
    base: dict[str, Any] = {
        "event_id": decision_id,
        "model_version": breach.model_version,
        "system_version": breach.system_version,
        "tier": breach.tier,
        "breach_ids": [breach.event_id],
        "metrics": metrics,
    }

    def outcome(action: str, code: str, detail: str, **extra: Any) -> Outcome:
        reasons = [Reason(code="breach", detail=what), Reason(code=code, detail=detail)]
        decision = _decision(state, now, **base, action=action, reasons=reasons, **extra)
        return Outcome(state, [decision])

    verifying = state.verifying
    restored_breached = (
        verifying is not None
        and breach.model_version == verifying.restored_version
        and breach.tier in ("immediate", "rapid")
    )
    if verifying is not None and restored_breached:
        # The rollback did not help: stop acting on this model until a person does.
        locked = state.model_copy(update={"verifying": None, "locked": "verification_failed"})
        decision = _decision(
            locked,
            now,
            **base,
            action="investigate",
            parent_decision_id=verifying.decision_id,
            command_id=verifying.command_id,
            reasons=[
                Reason(code="breach", detail=what),
                Reason(
                    code="verification_failed",
                    detail=f"restored {verifying.restored_version} breached within the "
                    "verification window; automatic action on this model stops until a "
                    "person acts (rollguard rollback ... or unlock)",
                ),
            ],
        )
        return Outcome(locked, [decision])

    live = state.live
    if live is None:
        return outcome("hold", "unknown_model", "no live manifest is known for this model")
    if live.model_version != breach.model_version:
        return outcome(
            "hold",
            "not_live_version",
            f"breach is for {breach.model_version}, live is {live.model_version}",
        )
    change = policy.expected_change(breach.model_version, breach.ts)
    if change is not None:
        return outcome(
            "hold",
            "expected_change",
            f"declared change until {change.end.isoformat()}: {change.reason}",
        )
    if breach.tier not in policy.rollback.automatic_tiers:
        return outcome("investigate", "tier_not_automatic", f"{breach.tier} tier alerts humans")
    if state.locked:
        return outcome("hold", "locked", f"{state.locked}: waiting for a person to act")
    if state.in_flight is not None:
        return outcome(
            "hold", "rollback_in_flight", f"command {state.in_flight.command_id} is in flight"
        )
    if state.cooldown_until is not None and now < state.cooldown_until:
        return outcome("hold", "cooldown", f"cooldown until {state.cooldown_until.isoformat()}")
    target = rollback_target(state)
    if target is None:
        return outcome(
            "investigate",
            "no_known_good_target",
            "no known-good system version other than the live one; escalating",
        )
    not_ready = target_ready(state, target, policy, now)
    if not_ready is not None:
        return outcome("investigate", not_ready.code, not_ready.detail + "; escalating")

    level, level_reasons = choose_level(live, target, policy)
    reasons = [Reason(code="breach", detail=what), *level_reasons]
    if level == 2:
        roles = ", ".join(policy.authority.notify_on_level2)
        reasons.append(
            Reason(code="notify_lead", detail=f"level 2 runs automatically; notify {roles}")
        )
    decision = _decision(
        state,
        now,
        **base,
        action="rollback",
        level=level,
        reasons=reasons,
        target_system_version=target.system_version,
    )
    return _launch(state, decision, target, level, policy, now, signer)


def incident_metrics(breach: Breach, now: datetime) -> dict[str, float]:
    """MTTD (first event of the bad version → breach), time to decision, blast radius so far."""
    metrics: dict[str, float] = {}
    first = breach.version_first_event_ts
    if first is not None:
        metrics["mttd_s"] = max(0.0, (breach.ts - first).total_seconds())
        metrics["time_to_decision_s"] = max(0.0, (now - first).total_seconds())
    if breach.version_events is not None:
        metrics["blast_radius_events"] = float(breach.version_events)
    return metrics


# ---------------------------------------------------------------- acks and verification


def apply_ack(state: ModelState, ack: CommandAck, policy: ModelPolicy) -> ModelState:
    """A final ack for the command in flight ends it; ``applied`` starts the cooldown and the
    verification window."""
    flight = state.in_flight
    if flight is None or ack.command_id != flight.command_id or ack.component is not None:
        return state
    if ack.status == "applied":
        metrics = {
            **flight.metrics,
            "time_to_applied_s": (ack.ts - flight.issued_at).total_seconds()
            + flight.metrics.get("time_to_decision_s", 0.0),
        }
        verifying = Verifying(
            command_id=flight.command_id,
            decision_id=flight.decision_id,
            restored_version=flight.target.model_version,
            applied_at=ack.ts,
            deadline=ack.ts + timedelta(seconds=policy.rollback.verification_s),
            metrics=metrics,
        )
        until = ack.ts + timedelta(seconds=policy.rollback.cooldown_s)
        return state.model_copy(
            update={"in_flight": None, "verifying": verifying, "cooldown_until": until}
        )
    if ack.status in ("failed", "rejected"):
        return state.model_copy(update={"in_flight": None})
    return state


def check_verification(state: ModelState, now: datetime) -> Outcome | None:
    """Once the window passed without a breach of the restored version: a ``verified`` ack."""
    verifying = state.verifying
    if verifying is None or now < verifying.deadline:
        return None
    live = state.live
    metrics = {
        **verifying.metrics,
        "time_to_verified_s": verifying.metrics.get("time_to_applied_s", 0.0)
        + (now - verifying.applied_at).total_seconds(),
    }
    ack = CommandAck(
        event_id=_id(verifying.command_id, "verified"),
        ts=now,
        model_id=state.model_id,
        model_version=live.model_version if live else verifying.restored_version,
        system_version=live.system_version if live else None,
        command_id=verifying.command_id,
        status="verified",
        executor_id=DECIDER_ID,
        detail=f"{verifying.restored_version} stayed within thresholds for the verification window",
        timings=metrics,
    )
    return Outcome(state.model_copy(update={"verifying": None}), acks=[ack])


# ---------------------------------------------------------------- people


def request(
    state: ModelState,
    req: RollbackRequest,
    who: Identity | None,
    policy: ModelPolicy,
    now: datetime,
    signer: Signer,
) -> Outcome:
    """A person asks for a rollback (any level) or to lift a lock, under the same rules."""

    def refuse(code: str, detail: str) -> Outcome:
        return Outcome(
            state,
            [
                _decision(
                    state,
                    now,
                    event_id=_id("request", req.event_id),
                    action="hold",
                    reasons=[Reason(code=code, detail=detail)],
                    requested_by=who.name if who else None,
                )
            ],
        )

    if who is None:
        return refuse("unknown_token", "the request's token is not configured")
    if who.role != req.role:
        return refuse("wrong_role", f"token belongs to role {who.role}, request claims {req.role}")
    if req.action == "unlock":
        unlocked = state.model_copy(update={"locked": None})
        decision = _decision(
            unlocked,
            now,
            event_id=_id("request", req.event_id),
            action="hold",
            requested_by=who.name,
            reasons=[
                Reason(
                    code="unlocked", detail=f"{who.name} ({who.role}) lifted the lock: {req.reason}"
                )
            ],
        )
        return Outcome(unlocked, [decision])
    live = state.live
    if live is None:
        return refuse("unknown_model", "no live manifest is known for this model")
    if state.in_flight is not None:
        return refuse("rollback_in_flight", f"command {state.in_flight.command_id} is in flight")
    target = rollback_target(state, req.to_system_version)
    if target is None:
        wanted = req.to_system_version or "a known-good version"
        return refuse(
            "no_known_good_target", f"{wanted} is not a known-good target other than the live one"
        )
    auto_level, level_reasons = choose_level(live, target, policy)
    level = req.level or auto_level
    if level == 1 and auto_level == 2:
        return refuse("model_only_incompatible", level_reasons[0].detail)
    decision_id = _id("request", req.event_id)
    reasons = [
        Reason(
            code="manual_request",
            detail=f"{who.name} ({who.role}): {req.reason or 'no reason given'}",
        ),
        *level_reasons,
    ]
    required = {3: policy.authority.level3_roles, 4: policy.authority.level4_roles}.get(level, ())
    # A person acting lifts a verification lock and overrides the cooldown.
    state = state.model_copy(update={"locked": None, "cooldown_until": None})
    if not required:
        decision = _decision(
            state,
            now,
            event_id=decision_id,
            action="rollback",
            level=level,
            reasons=reasons,
            target_system_version=target.system_version,
            requested_by=who.name,
        )
        return _launch(state, decision, target, level, policy, now, signer)
    pending = Pending(
        decision_id=decision_id,
        level=level,
        target=target,
        requested_by=who.name,
        required_roles=tuple(required),
        expires_at=now + timedelta(seconds=policy.authority.approval_ttl_s),
    )
    decision = _decision(
        state,
        now,
        event_id=decision_id,
        action="hold",
        level=level,
        reasons=[
            *reasons,
            Reason(
                code="awaiting_approval",
                detail=f"level {level} needs approval by {', '.join(required)} "
                f"(distinct people, not the requester) until {pending.expires_at.isoformat()}",
            ),
        ],
        target_system_version=target.system_version,
        approvals_needed=len(required),
        requested_by=who.name,
    )
    return Outcome(state.model_copy(update={"pending": (*state.pending, pending)}), [decision])


def approve(
    state: ModelState,
    approval: Approval,
    who: Identity | None,
    policy: ModelPolicy,
    now: datetime,
    signer: Signer,
) -> Outcome:
    """Record an approval; when the required roles are covered by distinct people other than
    the requester, issue the command."""
    pending = next((p for p in state.pending if p.decision_id == approval.decision_id), None)

    def refuse(code: str, detail: str) -> Outcome:
        decision = _decision(
            state,
            now,
            event_id=_id("approval", approval.event_id),
            action="hold",
            parent_decision_id=approval.decision_id,
            reasons=[Reason(code=code, detail=detail)],
            requested_by=who.name if who else None,
        )
        return Outcome(state, [decision])

    if who is None:
        return refuse("approval_rejected", "unknown token")
    if who.role != approval.role:
        return refuse(
            "approval_rejected",
            f"token belongs to role {who.role}, approval claims {approval.role}",
        )
    if pending is None:
        return refuse(
            "approval_rejected",
            f"decision {approval.decision_id} is not awaiting approval (finished, expired or unknown)",
        )
    if now >= pending.expires_at:
        return refuse(
            "approval_rejected",
            f"decision {pending.decision_id} expired at {pending.expires_at.isoformat()}",
        )
    if who.name == pending.requested_by:
        return refuse(
            "approval_rejected", f"{who.name} requested this rollback and cannot approve it"
        )
    if who.role not in pending.required_roles:
        return refuse(
            "approval_rejected",
            f"role {who.role} is not one of {', '.join(pending.required_roles)}",
        )
    if any(name == who.name for name, _ in pending.approvals):
        return refuse("approval_rejected", f"{who.name} already approved")
    if any(role == who.role for _, role in pending.approvals):
        return refuse(
            "approval_rejected", f"role {who.role} is already covered by another approver"
        )

    approvals = (*pending.approvals, (who.name, who.role))
    covered = {role for _, role in approvals}
    others = tuple(p for p in state.pending if p.decision_id != pending.decision_id)
    names = [name for name, _ in approvals]
    if not set(pending.required_roles) <= covered:
        still = [r for r in pending.required_roles if r not in covered]
        updated = pending.model_copy(update={"approvals": approvals})
        state = state.model_copy(update={"pending": (*others, updated)})
        decision = _decision(
            state,
            now,
            event_id=_id("approval", approval.event_id),
            action="hold",
            level=pending.level,
            parent_decision_id=pending.decision_id,
            approvals_needed=len(pending.required_roles),
            approvals_given=names,
            reasons=[
                Reason(
                    code="awaiting_approval",
                    detail=f"approved by {who.name}; still needs {', '.join(still)}",
                )
            ],
        )
        return Outcome(state, [decision])
    state = state.model_copy(update={"pending": others})
    live = state.live
    if live is None or state.in_flight is not None:
        return refuse("approval_rejected", "model has no live version or a rollback is in flight")
    decision = _decision(
        state,
        now,
        event_id=_id("approved", pending.decision_id),
        action="rollback",
        level=pending.level,
        parent_decision_id=pending.decision_id,
        approvals_needed=len(pending.required_roles),
        approvals_given=names,
        target_system_version=pending.target.system_version,
        requested_by=pending.requested_by,
        reasons=[Reason(code="approved", detail=f"approved by {', '.join(names)}")],
    )
    return _launch(state, decision, pending.target, pending.level, policy, now, signer)


def expire_pending(state: ModelState, now: datetime) -> Outcome | None:
    expired = [p for p in state.pending if now >= p.expires_at]
    if not expired:
        return None
    kept = tuple(p for p in state.pending if now < p.expires_at)
    state = state.model_copy(update={"pending": kept})
    decisions = [
        _decision(
            state,
            now,
            event_id=_id("expired", p.decision_id),
            action="hold",
            level=p.level,
            parent_decision_id=p.decision_id,
            approvals_needed=len(p.required_roles),
            approvals_given=[name for name, _ in p.approvals],
            reasons=[
                Reason(
                    code="approval_expired", detail=f"not approved by {p.expires_at.isoformat()}"
                )
            ],
        )
        for p in expired
    ]
    return Outcome(state, decisions)


def expire_in_flight(state: ModelState, now: datetime) -> Outcome | None:
    """A command nobody acknowledged as applied or failed before it expired: stop waiting for
    it and escalate (the executor may be down), so later breaches are decided again."""
    flight = state.in_flight
    if flight is None or now < flight.expires_at:
        return None
    freed = state.model_copy(update={"in_flight": None})
    decision = _decision(
        freed,
        now,
        event_id=_id("unacknowledged", flight.command_id),
        action="investigate",
        level=flight.level,
        parent_decision_id=flight.decision_id,
        command_id=flight.command_id,
        target_system_version=flight.target.system_version,
        reasons=[
            Reason(
                code="command_unacknowledged",
                detail=f"command {flight.command_id} expired at {flight.expires_at.isoformat()} "
                "without an applied or failed ack; is an executor running?",
            )
        ],
    )
    return Outcome(freed, [decision])
