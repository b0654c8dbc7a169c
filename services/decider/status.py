"""The public view of a model's state: the ModelStatus the decider publishes on
``rollguard.model-status`` whenever a field of it changes."""

from __future__ import annotations

import hashlib
from datetime import datetime

import orjson

from rollguard.events import (
    Approver,
    CommandInFlight,
    LastHealthCheck,
    ModelStatus,
    PendingApproval,
    RollbackVerifying,
    derived_id,
)
from rollguard_services.decider.state import ModelState
from rollguard_services.decider.targets import rollback_target

#: What changes with every publication, not with the state.
_VOLATILE = {"event_id", "ts"}


def model_status(state: ModelState, now: datetime) -> ModelStatus:
    """The status of a model at ``now``; its event id is derived from its content, so the
    same state gives the same event."""
    target = rollback_target(state)
    health = state.health.get(target.model_version) if target is not None else None
    flight, verifying = state.in_flight, state.verifying
    status = ModelStatus(
        ts=now,
        model_id=state.model_id,
        live=state.live,
        known_good=list(state.known_good),
        rollback_target=target,
        target_health=LastHealthCheck(ts=health[0], ok=health[1]) if health else None,
        locked=state.locked,
        cooldown_until=state.cooldown_until,
        in_flight=CommandInFlight(
            command_id=flight.command_id,
            level=flight.level,
            target_system_version=flight.target.system_version,
            expires_at=flight.expires_at,
        )
        if flight is not None
        else None,
        verifying=RollbackVerifying(
            command_id=verifying.command_id,
            restored_version=verifying.restored_version,
            deadline=verifying.deadline,
        )
        if verifying is not None
        else None,
        pending=[
            PendingApproval(
                decision_id=p.decision_id,
                level=p.level,
                required_roles=list(p.required_roles),
                approvers=[Approver(name=name, role=role) for name, role in p.approvals],
                expires_at=p.expires_at,
                any_of=p.any_of,
            )
            for p in state.pending
        ],
        paused=state.paused,
        mode=state.mode,
    )
    digest = hashlib.sha256(_visible(status)).hexdigest()
    return status.model_copy(update={"event_id": derived_id("status", state.model_id, digest)})


def _shown(state: ModelState) -> tuple[object, ...]:
    """Every field of the state ``model_status`` reads (the rollback target and its health
    come from these too)."""
    return (
        state.live,
        state.known_good,
        state.health,
        state.locked,
        state.cooldown_until,
        state.in_flight,
        state.verifying,
        state.pending,
        state.paused,
        state.mode,
    )


def status_change(before: ModelState, after: ModelState, now: datetime) -> ModelStatus | None:
    """The status to publish when ``after`` differs from ``before`` in what the status shows
    (None: nothing visible changed, e.g. a breach id remembered, a tick with nothing due)."""
    if _shown(before) == _shown(after):
        return None  # the status is made of these alone: no need to build it twice
    status = model_status(after, now)
    if _visible(status) == _visible(model_status(before, now)):
        return None
    return status


def _visible(status: ModelStatus) -> bytes:
    body = status.model_dump(mode="json", by_alias=True, exclude=_VOLATILE)
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
