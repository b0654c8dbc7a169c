"""What a decision function hands back, and the builders of the events it publishes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from rollguard import metrics
from rollguard.events import CommandAck, Decision, RollbackCommand, SystemManifest, derived_id
from rollguard_services.decider.context import DecisionContext
from rollguard_services.decider.state import InFlight, ModelState

#: ``executor_id`` of the acks the decider itself publishes (``verified``).
DECIDER_ID = "rollguard-decider"


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


def decision(state: ModelState, ctx: DecisionContext, **fields: Any) -> Decision:
    """A Decision about the model, at the context's time; versions default to the live one."""
    live = state.live
    fields.setdefault("model_version", live.model_version if live else "unknown")
    fields.setdefault("system_version", live.system_version if live else None)
    return Decision(ts=ctx.now, model_id=state.model_id, **fields)


def signed_command(
    state: ModelState, decision_id: str, target: SystemManifest, level: int, ctx: DecisionContext
) -> RollbackCommand:
    live = state.live
    assert live is not None
    now = ctx.now
    command_id = derived_id("command", decision_id)
    return ctx.signer.sign(
        RollbackCommand(
            event_id=command_id,
            ts=now,
            model_id=live.model_id,
            model_version=live.model_version,
            system_version=live.system_version,
            command_id=command_id,
            decision_id=decision_id,
            from_manifest=live,
            to_manifest=target,
            level=level,
            issued_at=now,
            expires_at=now + timedelta(seconds=ctx.policy.rollback.command_ttl_s),
            # Derived, not random: a replay signs the same bytes. The executor's inbox, keyed
            # by command_id, is what refuses a replayed command.
            nonce=derived_id("nonce", decision_id),
            key_id=ctx.signer.key_id,
        )
    )


def launch(
    state: ModelState, rollback: Decision, target: SystemManifest, level: int, ctx: DecisionContext
) -> Outcome:
    """Issue the signed command for a rollback decision and remember it is in flight."""
    assert state.live is not None
    command = signed_command(state, rollback.event_id, target, level, ctx)
    rollback = rollback.model_copy(update={"command_id": command.command_id})
    flight = InFlight(
        command_id=command.command_id,
        decision_id=rollback.event_id,
        target=target,
        bad=state.live,
        level=level,
        issued_at=ctx.now,
        expires_at=command.expires_at,
        metrics=dict(rollback.metrics),
    )
    return Outcome(state.model_copy(update={"in_flight": flight}), [rollback], command)


#: Decision reasons that end a verification, and the result they count as.
_JUDGED = {"verification_failed": "failed", "unverifiable": "unverifiable"}


def observe(outcome: Outcome) -> None:
    """Count a published outcome in the process's metrics (rollguard.metrics): decisions by
    action and reason, commands by level, the incident figures the decider knows."""
    for d in outcome.decisions:
        for r in d.reasons:
            metrics.DECISIONS.labels(d.action, r.code).inc()
            if r.code in _JUDGED:
                metrics.VERIFICATIONS.labels(_JUDGED[r.code]).inc()
        if d.action == "rollback" and d.command_id is not None:
            mttd = d.metrics.get("mttd_s")
            if mttd is not None:
                metrics.MTTD.observe(mttd)
                live_to_decision = d.metrics.get("time_to_decision_s")
                if live_to_decision is not None:
                    metrics.TIME_TO_DECISION.observe(max(0.0, live_to_decision - mttd))
    if outcome.command is not None:
        metrics.COMMANDS.labels(str(outcome.command.level)).inc()
    for ack in outcome.acks:
        if ack.status == "verified" and ack.component is None:
            metrics.VERIFICATIONS.labels("verified").inc()
            verified = ack.timings.get("time_to_verified_s")
            if verified is not None:
                metrics.TIME_TO_VERIFIED.observe(verified)
