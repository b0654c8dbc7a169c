"""People: rollback and unlock requests, approvals, and approvals that run out of time.

``who`` is the person whose key signed the input (rollguard.authority; None: a key of no
person in the tokens file); it belongs to the input, so it is passed with it rather than in
the context.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from rollguard.authority import Identity
from rollguard.events import (
    Approval,
    Paused,
    Reason,
    ReasonCode,
    RollbackRequest,
    approval_decision_id,
    approved_decision_id,
    derived_id,
    request_decision_id,
)
from rollguard_services.decider.context import DecisionContext
from rollguard_services.decider.outcome import Outcome, decision, launch
from rollguard_services.decider.state import ModelState, Pending
from rollguard_services.decider.targets import choose_level, rollback_target

#: How far ahead of the decider's clock a person's input may be dated (clock skew).
FUTURE_SKEW = timedelta(seconds=120)


def out_of_time(event: RollbackRequest | Approval, now: datetime, ttl_s: float) -> str | None:
    """Why a request or an approval is too old (or dated ahead) to act on, else None: a
    person's signed input holds for ``ttl_s`` from when it was made, so one read off a topic
    or the ledger cannot be sent again later (within that time, each is taken once)."""
    age = now - event.ts
    if age > timedelta(seconds=ttl_s):
        return f"expired: made {age.total_seconds():.0f} s ago, a person's input holds {ttl_s:g} s"
    if -age > FUTURE_SKEW:
        return f"expired: dated {-age.total_seconds():.0f} s ahead of the decider's clock"
    return None


def request(
    state: ModelState, req: RollbackRequest, who: Identity | None, ctx: DecisionContext
) -> Outcome:
    """A person asks for a rollback (any level) or to lift a lock, under the same rules."""
    policy = ctx.policy
    decision_id = request_decision_id(req.event_id)

    def refuse(code: ReasonCode, detail: str) -> Outcome:
        return Outcome(
            state,
            [
                decision(
                    state,
                    ctx,
                    event_id=decision_id,
                    action="hold",
                    reasons=[Reason(code=code, detail=detail)],
                    requested_by=who.name if who else None,
                )
            ],
        )

    if who is None:
        return refuse("unknown_token", "no person in the tokens file signed the request")
    if who.role != req.role:
        return refuse("wrong_role", f"token belongs to role {who.role}, request claims {req.role}")
    if req.action in ("pause", "resume", "set_mode"):
        return operate(state, req, who, ctx, decision_id)
    if req.action == "unlock":
        unlocked = state.model_copy(update={"locked": None})
        lifted = decision(
            unlocked,
            ctx,
            event_id=decision_id,
            action="hold",
            requested_by=who.name,
            reasons=[
                Reason(
                    code="unlocked", detail=f"{who.name} ({who.role}) lifted the lock: {req.reason}"
                )
            ],
        )
        return Outcome(unlocked, [lifted])
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
        rollback = decision(
            state,
            ctx,
            event_id=decision_id,
            action="rollback",
            level=level,
            reasons=reasons,
            target_system_version=target.system_version,
            requested_by=who.name,
        )
        return launch(state, rollback, target, level, ctx)
    pending = Pending(
        decision_id=decision_id,
        level=level,
        target=target,
        requested_by=who.name,
        required_roles=tuple(required),
        expires_at=ctx.now + timedelta(seconds=policy.authority.approval_ttl_s),
        live_system_version=live.system_version,
    )
    held = decision(
        state,
        ctx,
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
    return Outcome(state.model_copy(update={"pending": (*state.pending, pending)}), [held])


def operate(
    state: ModelState, req: RollbackRequest, who: Identity, ctx: DecisionContext, decision_id: str
) -> Outcome:
    """Pause or resume a model's automation, or switch its mode: one hold saying who and why
    (the ledger keeps it), by a person of ``authority.operate_roles``."""
    roles = ctx.policy.authority.operate_roles
    said: tuple[ReasonCode, str]
    if who.role not in roles:
        said = ("not_permitted", f"role {who.role} may not {req.action}; {', '.join(roles)} may")
        after = state
    elif req.action == "pause":
        paused = Paused(by=who.name, role=who.role, reason=req.reason, at=ctx.now)
        after = state.model_copy(update={"paused": paused, "paused_said": ()})
        said = (
            "paused",
            f"{who.name} ({who.role}) paused automatic action: {req.reason or 'no reason given'}"
            "; breaches are recorded, nothing is decided for them until resumed",
        )
    elif req.action == "resume":
        was = state.paused
        after = state.model_copy(update={"paused": None, "paused_said": ()})
        since = f" (paused by {was.by} at {was.at.isoformat()})" if was else " (was not paused)"
        said = ("resumed", f"{who.name} ({who.role}) resumed automatic action{since}: {req.reason}")
    elif req.mode is None:
        said = ("not_permitted", "set_mode needs a mode: enforce, recommend or observe")
        after = state
    else:
        before = state.mode or ctx.policy.rollback.mode
        after = state.model_copy(update={"mode": req.mode})
        said = (
            "mode_set",
            f"{who.name} ({who.role}) switched the mode {before} → {req.mode}: {req.reason}",
        )
    held = decision(
        after,
        ctx,
        event_id=decision_id,
        action="hold",
        requested_by=who.name,
        reasons=[Reason(code=said[0], detail=said[1])],
    )
    return Outcome(after, [held])


def approve(
    state: ModelState, approval: Approval, who: Identity | None, ctx: DecisionContext
) -> Outcome:
    """Record an approval; when the required roles are covered by distinct people other than
    the requester, issue the command."""
    pending = next((p for p in state.pending if p.decision_id == approval.decision_id), None)

    def refuse(code: ReasonCode, detail: str) -> Outcome:
        refused = decision(
            state,
            ctx,
            event_id=approval_decision_id(approval.event_id),
            action="hold",
            parent_decision_id=approval.decision_id,
            reasons=[Reason(code=code, detail=detail)],
            requested_by=who.name if who else None,
        )
        return Outcome(state, [refused])

    if who is None:
        return refuse("approval_rejected", "no person in the tokens file signed the approval")
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
    if ctx.now >= pending.expires_at:
        return refuse(
            "approval_rejected",
            f"decision {pending.decision_id} expired at {pending.expires_at.isoformat()}",
        )
    live_now = state.live.system_version if state.live is not None else None
    if pending.live_system_version is not None and live_now != pending.live_system_version:
        return refuse(
            "approval_rejected",
            f"decision {pending.decision_id} was about {pending.live_system_version} live; "
            f"{live_now} is live now",
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
    if not pending.any_of and not set(pending.required_roles) <= covered:
        still = [r for r in pending.required_roles if r not in covered]
        updated = pending.model_copy(update={"approvals": approvals})
        state = state.model_copy(update={"pending": (*others, updated)})
        held = decision(
            state,
            ctx,
            event_id=approval_decision_id(approval.event_id),
            action="hold",
            level=pending.level,
            parent_decision_id=pending.decision_id,
            approvals_needed=1 if pending.any_of else len(pending.required_roles),
            approvals_given=names,
            reasons=[
                Reason(
                    code="awaiting_approval",
                    detail=f"approved by {who.name}; still needs {', '.join(still)}",
                )
            ],
        )
        return Outcome(state, [held])
    state = state.model_copy(update={"pending": others})
    live = state.live
    if live is None or state.in_flight is not None:
        return refuse("approval_rejected", "model has no live version or a rollback is in flight")
    rollback = decision(
        state,
        ctx,
        event_id=approved_decision_id(pending.decision_id),
        action="rollback",
        level=pending.level,
        parent_decision_id=pending.decision_id,
        approvals_needed=1 if pending.any_of else len(pending.required_roles),
        approvals_given=names,
        target_system_version=pending.target.system_version,
        requested_by=pending.requested_by,
        reasons=[Reason(code="approved", detail=f"approved by {', '.join(names)}")],
    )
    return launch(state, rollback, pending.target, pending.level, ctx)


def expire_pending(state: ModelState, ctx: DecisionContext) -> Outcome | None:
    """Decisions still awaiting approval at their ``expires_at``: dropped, one hold each."""
    now = ctx.now
    expired = [p for p in state.pending if now >= p.expires_at]
    if not expired:
        return None
    kept = tuple(p for p in state.pending if now < p.expires_at)
    state = state.model_copy(update={"pending": kept})
    decisions = [
        decision(
            state,
            ctx,
            event_id=derived_id("expired", p.decision_id),
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
