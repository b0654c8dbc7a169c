"""Breaches into decisions: hold, investigate or roll back, always with the reason.

Every breach yields a Decision — a hold is a decision too — but two: an exact redelivery of
a breach already decided, and a breach of a version that is not live once one hold has said
so (``ModelState.quiet``: a rolled-back version goes on breaching every window; one hold per
version until it is live again).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from rollguard.events import (
    Breach,
    Counterfactual,
    DecisionAction,
    DriftedInput,
    Reason,
    ReasonCode,
    SystemManifest,
    derived_id,
)
from rollguard_services.decider.context import DecisionContext
from rollguard_services.decider.outcome import Outcome, decision, launch
from rollguard_services.decider.state import RECOMMENDER, ModelState, Pending
from rollguard_services.decider.targets import choose_level, rollback_target, target_ready

#: How many handled breach ids a model remembers to drop redelivered duplicates.
BREACH_MEMORY = 256
#: How many versions' early breaches a model keeps (``ModelState.early``).
EARLY_VERSIONS = 4


def decide(
    state: ModelState, breach: Breach, ctx: DecisionContext, *, late: bool = False
) -> Outcome | None:
    """Turn one breach into decisions (and a signed command when it is a rollback).

    Returns None only for a breach id already decided (a redelivery). ``late``: the breach
    was held for want of its manifest, which has come (``deployed_late``): decided again,
    under a decision id of its own.
    """
    if breach.event_id in state.handled_breaches and not late:
        return None
    state = state.model_copy(
        update={
            "handled_breaches": (
                state.handled_breaches
                if late
                else (*state.handled_breaches, breach.event_id)[-BREACH_MEMORY:]
            ),
            "last_breach": {**state.last_breach, breach.model_version: breach.ts},
        }
    )
    policy, now = ctx.policy, ctx.now
    decision_id = derived_id("breach", breach.event_id, *(["deployed"] if late else []))
    what = f"{breach.detector} {breach.statistic}={breach.value:.4g} > {breach.threshold:.4g}"
    base: dict[str, Any] = {
        "event_id": decision_id,
        "model_version": breach.model_version,
        "system_version": breach.system_version,
        "tier": breach.tier,
        "breach_ids": [breach.event_id],
        "metrics": incident_metrics(breach, now, state.live),
    }

    def outcome(action: DecisionAction, code: ReasonCode, detail: str) -> Outcome:
        reasons = [Reason(code="breach", detail=what), Reason(code=code, detail=detail)]
        return Outcome(state, [decision(state, ctx, **base, action=action, reasons=reasons)])

    verifying = state.verifying
    restored_breached = (
        verifying is not None
        and breach.model_version == verifying.restored_version
        and breach.tier in ("immediate", "rapid")
    )
    if verifying is not None and restored_breached:
        # The rollback did not help: stop acting on this model until a person does.
        locked = state.model_copy(update={"verifying": None, "locked": "verification_failed"})
        failed = decision(
            locked,
            ctx,
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
        return Outcome(locked, [failed])

    live = state.live
    if live is None or live.model_version != breach.model_version:
        # Kept, to be decided again should its live manifest still come (deployed_late).
        early = {v: b for v, b in state.early.items() if v != breach.model_version}
        early = dict(list(early.items())[-(EARLY_VERSIONS - 1) :])
        state = state.model_copy(update={"early": {**early, breach.model_version: breach}})
    if live is None:
        return outcome("hold", "unknown_model", "no live manifest is known for this model")
    if live.model_version != breach.model_version:
        if breach.model_version in state.quiet:
            # Said once already for this version (an incident's rolled-back version breaches
            # every window): the breach is ledgered and counted, no decision is added.
            return Outcome(state)
        state = state.model_copy(
            update={"quiet": {**state.quiet, breach.model_version: decision_id}}
        )
        return outcome(
            "hold",
            "not_live_version",
            f"breach is for {breach.model_version}, live is {live.model_version}; later "
            f"breaches of {breach.model_version} are recorded without another decision until "
            "it is live again",
        )
    change = policy.expected_change(breach.model_version, breach.ts)
    if change is not None:
        return outcome(
            "hold",
            "expected_change",
            f"declared change until {change.end.isoformat()}: {change.reason}",
        )
    if state.paused is not None:
        if breach.model_version in state.paused_said:
            return Outcome(state)  # said once for this version while paused: ledgered only
        p = state.paused
        state = state.model_copy(update={"paused_said": (*state.paused_said, breach.model_version)})
        return outcome(
            "hold",
            "paused",
            f"automatic action paused by {p.by} ({p.role}) at {p.at.isoformat()}: {p.reason}; "
            "later breaches of this version are recorded without another decision until "
            f"resumed (rollguard resume {state.model_id} ...)",
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
    not_ready = target_ready(state, target, policy.rollback.target_ready_within_s, now)
    if not_ready is not None:
        return outcome("investigate", not_ready.code, not_ready.detail + "; escalating")

    shift = data_shift(breach, live, target)
    if shift is not None and policy.rollback.on_data_shift == "investigate":
        return outcome("investigate", "data_shift", shift)

    level, level_reasons = choose_level(live, target, policy)
    reasons = [Reason(code="breach", detail=what), *level_reasons]
    if level == 2:
        roles = ", ".join(policy.authority.notify_on_level2)
        reasons.append(
            Reason(code="notify_lead", detail=f"level 2 runs automatically; notify {roles}")
        )
    mode = state.mode or policy.rollback.mode
    if mode == "observe":
        return observe(state, ctx, base, breach.model_version, level, reasons, target)
    if mode == "recommend":
        return recommend(state, ctx, base, level, reasons, target)
    rollback = decision(
        state,
        ctx,
        **base,
        action="rollback",
        level=level,
        reasons=reasons,
        target_system_version=target.system_version,
    )
    return launch(state, rollback, target, level, ctx)


def recommend(
    state: ModelState,
    ctx: DecisionContext,
    base: dict[str, Any],
    level: int,
    reasons: list[Reason],
    target: SystemManifest,
) -> Outcome:
    """rollback.mode recommend: the rollback decided and held for a person to confirm, as an
    approval (``rollguard approve``, the dashboard's button): one person of
    ``authority.operate_roles`` for levels 1 and 2, the level's roles for 3 and 4. One
    recommendation at a time per model; later breaches are ledgered only."""
    if any(p.requested_by == RECOMMENDER for p in state.pending):
        return Outcome(state)
    authority = ctx.policy.authority
    by_level = {3: authority.level3_roles, 4: authority.level4_roles}.get(level, ())
    roles = tuple(by_level or authority.operate_roles)
    pending = Pending(
        decision_id=base["event_id"],
        level=level,
        target=target,
        requested_by=RECOMMENDER,
        required_roles=roles,
        any_of=not by_level,
        expires_at=ctx.now + timedelta(seconds=authority.approval_ttl_s),
        live_system_version=state.live.system_version if state.live else None,
    )
    who = f"one of {', '.join(roles)}" if not by_level else ", ".join(roles)
    held = decision(
        state,
        ctx,
        **base,
        action="hold",
        level=level,
        target_system_version=target.system_version,
        approvals_needed=1 if not by_level else len(roles),
        reasons=[
            *reasons,
            Reason(
                code="recommend_mode",
                detail=f"recommends rolling back to {target.system_version} (level {level}); "
                "the mode is recommend, so a person confirms it",
            ),
            Reason(
                code="awaiting_approval",
                detail=f"confirm with: rollguard approve {base['event_id']} --as ROLE ({who}) "
                f"until {pending.expires_at.isoformat()}",
            ),
        ],
    )
    return Outcome(state.model_copy(update={"pending": (*state.pending, pending)}), [held])


def observe(
    state: ModelState,
    ctx: DecisionContext,
    base: dict[str, Any],
    version: str,
    level: int,
    reasons: list[Reason],
    target: SystemManifest,
) -> Outcome:
    """rollback.mode observe: the rollback enforce would launch now, said and not done (a
    hold naming its level and target, with the incident's timings), once per version."""
    if version in state.observed:
        return Outcome(state)  # said already: the breach is ledgered and counted
    said = decision(
        state,
        ctx,
        **base,
        action="hold",
        level=level,
        target_system_version=target.system_version,
        reasons=[
            *reasons,
            Reason(
                code="observe_mode",
                detail=f"would have rolled back to {target.system_version} (level {level}) "
                "now; the policy's rollback.mode is observe, so nothing is sent to executors",
            ),
        ],
    )
    observed = {**state.observed, version: said.event_id}
    return Outcome(state.model_copy(update={"observed": observed}), [said])


def data_shift(breach: Breach, live: SystemManifest, target: SystemManifest) -> str | None:
    """Why a rapid-tier breach reads as a change of the inputs, not of the model (None: it
    does not). With the target's shadow predictions on the breach (the counterfactual check)
    they decide: the target drifted the same way on the same inputs, or it did not. Without
    them: input features drifted in its window while the live and the target system
    versions run the same feature pipeline, so the target would be fed the same shifted
    inputs and a rollback would not help. Errors, latency and health (the immediate tier)
    are never explained away."""
    if breach.tier != "rapid":
        return None
    seen = breach.counterfactual
    if seen is not None and seen.model_version == target.model_version:
        # The stronger evidence, when the router scores in shadow: the target itself, on
        # these very inputs, against its own baseline.
        return counterfactual_shift(breach, seen) if seen.drifted else None
    drifted = list(breach.input_drift)
    itself = breach.signal.startswith("feature:") and breach.kind in ("ks", "psi")
    if itself and all(d.signal != breach.signal for d in drifted):
        drifted.insert(
            0,
            DriftedInput(
                signal=breach.signal,
                detector=breach.detector,
                statistic=breach.statistic,
                value=breach.value,
                p_value=breach.p_value,
            ),
        )
    if not drifted:
        return None
    pipeline = live.components.feature_pipeline
    if target.components.feature_pipeline != pipeline:
        return None  # the deploy changed the pipeline: the rollback takes that back too
    named = ", ".join(
        f"{d.signal.removeprefix('feature:')} ({d.statistic}={d.value:.3g}"
        + (f", p={d.p_value:.2g}" if d.p_value is not None else "")
        + ")"
        for d in drifted[:5]
    )
    more = f" and {len(drifted) - 5} more" if len(drifted) > 5 else ""
    return (
        f"input features drifted: {named}{more}; the feature pipeline {pipeline} is the same "
        f"in {live.system_version} and the target {target.system_version}, so the inputs "
        "changed, not the model, and a rollback would not help (policy rollback.on_data_shift: "
        "rollback acts anyway)"
    )


def counterfactual_shift(breach: Breach, seen: Counterfactual) -> str:
    p = f", p={seen.p_value:.2g}" if seen.p_value is not None else ""
    past = f" past {seen.threshold:g}" if seen.threshold is not None else ""
    return (
        f"on the same inputs the rollback target {seen.model_version} drifts the same way: its "
        f"{seen.n} shadow predictions give {breach.signal} {seen.statistic}={seen.value:.3g}{p}"
        f"{past} against its own baseline ({seen.detector}), so the inputs changed, not the "
        "model, and a rollback would not help (policy rollback.on_data_shift: rollback acts "
        "anyway)"
    )


def incident_metrics(
    breach: Breach, now: datetime, live: SystemManifest | None
) -> dict[str, float]:
    """MTTD — the one definition rollguard uses everywhere (this decision, ``incident show``,
    the demo): the bad version live (its live manifest's time) → the breach; time to
    decision from the same start; the breach's first event of the version → the breach
    (``first_event_to_breach_s``: how long the detector had data); blast radius so far."""
    metrics: dict[str, float] = {}
    if live is not None and live.model_version == breach.model_version:
        metrics["mttd_s"] = max(0.0, (breach.ts - live.ts).total_seconds())
        metrics["time_to_decision_s"] = max(0.0, (now - live.ts).total_seconds())
    first = breach.version_first_event_ts
    if first is not None:
        metrics["first_event_to_breach_s"] = max(0.0, (breach.ts - first).total_seconds())
    if breach.version_events is not None:
        metrics["blast_radius_events"] = float(breach.version_events)
    return metrics


def deployed_late(
    before: ModelState, after: ModelState, manifest: SystemManifest
) -> tuple[ModelState, Breach | None]:
    """When ``manifest`` made a new system version live (``after`` its state), the breach of
    its model version held earlier for want of it, if that breach was made since this
    deployment (its time at or after the manifest's), and the state without it: decide it
    again (``decide(..., late=True)``) on that state.

    A worker that takes over a dead one's models reads their breaches and deployments
    backlogs at once, each topic by its own agent: a bad version's breach decided before its
    live manifest was held as ``unknown_model`` and the incident lost its rollback. A breach
    made before this deployment (a canary's, or of an earlier time the version was live) is
    dropped, not decided; a manifest that changes nothing live decides nothing."""
    live = after.live
    was = before.live.system_version if before.live is not None else None
    if (
        live is None
        or not manifest.serving
        or live.system_version != manifest.system_version
        or live.system_version == was
        or live.model_version not in after.early
    ):
        return after, None
    early = after.early[live.model_version]
    rest = after.model_copy(
        update={"early": {v: b for v, b in after.early.items() if v != live.model_version}}
    )
    same_system = early.system_version in (None, live.system_version)
    return rest, early if early.ts >= manifest.ts and same_system else None
