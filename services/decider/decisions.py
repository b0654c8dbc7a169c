"""The decision framework as pure functions: state in, (decision, command, new state) out.

Every breach that reaches ``decide`` yields a Decision with machine-readable reasons — a hold
is a decision too; only an exact duplicate of a breach already decided is ignored.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from rollguard.events import (
    Breach,
    CommandAck,
    Decision,
    Reason,
    RollbackCommand,
    SystemManifest,
)
from rollguard.policy import ModelPolicy
from rollguard.signing import Signer

#: How many handled breach ids a model remembers to drop redelivered duplicates.
BREACH_MEMORY = 256
#: Components compared to pick the rollback level, in restore order for level 2.
NON_MODEL_COMPONENTS = ("feature_pipeline", "config", "infra")


class InFlight(BaseModel):
    model_config = ConfigDict(frozen=True)

    command_id: str
    decision_id: str
    target_system_version: str
    issued_at: datetime
    expires_at: datetime


class ModelState(BaseModel):
    """What the decider knows of one model; stored in a faust table keyed by model_id."""

    model_config = ConfigDict(frozen=True)

    model_id: str
    live: SystemManifest | None = None
    known_good: tuple[SystemManifest, ...] = ()
    in_flight: InFlight | None = None
    cooldown_until: datetime | None = None
    handled_breaches: tuple[str, ...] = ()


def apply_manifest(state: ModelState, manifest: SystemManifest) -> ModelState:
    """Follow a deployment fact: the live pointer, and the known-good list (newest last)."""
    live = manifest if manifest.serving else state.live
    others = tuple(k for k in state.known_good if k.system_version != manifest.system_version)
    if manifest.status == "known_good":
        known = (*others, manifest)
    elif manifest.status == "rolled_back":
        known = others
    else:  # live or candidate again: its known-good standing, if any, is unchanged
        known = state.known_good
    return state.model_copy(update={"live": live, "known_good": known})


def apply_ack(state: ModelState, ack: CommandAck, policy: ModelPolicy) -> ModelState:
    """A final ack for the command in flight ends it; a success starts the cooldown."""
    flight = state.in_flight
    if flight is None or ack.command_id != flight.command_id or ack.component is not None:
        return state
    if ack.status in ("applied", "verified"):
        until = ack.ts + timedelta(seconds=policy.rollback.cooldown_s)
        return state.model_copy(update={"in_flight": None, "cooldown_until": until})
    if ack.status in ("failed", "rejected"):
        return state.model_copy(update={"in_flight": None})
    return state


def rollback_target(state: ModelState) -> SystemManifest | None:
    """The most recent known-good manifest other than the live one."""
    live_sv = state.live.system_version if state.live else None
    for manifest in reversed(state.known_good):
        if manifest.system_version != live_sv:
            return manifest
    return None


def choose_level(live: SystemManifest, target: SystemManifest) -> tuple[int, list[Reason]]:
    """Level 1 when only the model differs; level 2 when any other component differs too.

    A model-only rollback onto a different feature pipeline (or config, or infra) would serve
    the old model on inputs it was not built for: it is refused and the reason recorded.
    """
    differing = [
        c
        for c in NON_MODEL_COMPONENTS
        if getattr(live.components, c) != getattr(target.components, c)
    ]
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


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    command: RollbackCommand | None
    state: ModelState


def decide(
    state: ModelState,
    breach: Breach,
    policy: ModelPolicy,
    now: datetime,
    signer: Signer,
) -> Outcome | None:
    """Turn one breach into a decision (and a signed command when it is a rollback).

    Returns None only for a breach id already decided (a redelivery).
    """
    if breach.event_id in state.handled_breaches:
        return None
    handled = (*state.handled_breaches, breach.event_id)[-BREACH_MEMORY:]
    state = state.model_copy(update={"handled_breaches": handled})
    decision_id = uuid.uuid4().hex
    base = {
        "event_id": decision_id,
        "ts": now,
        "model_id": breach.model_id,
        "model_version": breach.model_version,
        "system_version": breach.system_version,
        "tier": breach.tier,
        "breach_ids": [breach.event_id],
    }
    what = f"{breach.detector} {breach.statistic}={breach.value:.4g} > {breach.threshold:.4g}"

    def hold(action: str, code: str, detail: str) -> Outcome:
        reasons = [Reason(code="breach", detail=what), Reason(code=code, detail=detail)]
        decision = Decision(**base, action=action, reasons=reasons)
        return Outcome(decision, None, state)

    live = state.live
    if live is None:
        return hold("hold", "unknown_model", "no live manifest is known for this model")
    if live.model_version != breach.model_version:
        return hold(
            "hold",
            "not_live_version",
            f"breach is for {breach.model_version}, live is {live.model_version}",
        )
    if breach.tier not in policy.rollback.automatic_tiers:
        return hold("investigate", "tier_not_automatic", f"{breach.tier} tier alerts humans")
    if state.in_flight is not None:
        return hold(
            "hold",
            "rollback_in_flight",
            f"command {state.in_flight.command_id} is in flight",
        )
    if state.cooldown_until is not None and now < state.cooldown_until:
        return hold("hold", "cooldown", f"cooldown until {state.cooldown_until.isoformat()}")
    target = rollback_target(state)
    if target is None:
        return hold(
            "investigate",
            "no_known_good_target",
            "no known-good system version other than the live one; escalating",
        )

    level, level_reasons = choose_level(live, target)
    command_id = uuid.uuid5(uuid.NAMESPACE_OID, f"rollguard:{decision_id}").hex
    expires = now + timedelta(seconds=policy.rollback.command_ttl_s)
    command = signer.sign(
        RollbackCommand(
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
            expires_at=expires,
            nonce=secrets.token_hex(16),
            key_id=signer.key_id,
        )
    )
    since_live = (breach.ts - live.ts).total_seconds()
    decision = Decision(
        **base,
        action="rollback",
        level=level,
        reasons=[Reason(code="breach", detail=what), *level_reasons],
        target_system_version=target.system_version,
        command_id=command_id,
        metrics={
            "mttd_s": max(0.0, since_live),
            "time_to_decision_s": max(0.0, (now - live.ts).total_seconds()),
        },
    )
    flight = InFlight(
        command_id=command_id,
        decision_id=decision_id,
        target_system_version=target.system_version,
        issued_at=now,
        expires_at=expires,
    )
    return Outcome(decision, command, state.model_copy(update={"in_flight": flight}))
