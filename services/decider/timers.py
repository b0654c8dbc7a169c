"""What time alone decides: a quiet live version baked known good, a verification window
that passed, a command nobody acknowledged, approvals that ran out (see approvals.py)."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from datetime import datetime, timedelta

from rollguard.events import CommandAck, Reason, derived_id
from rollguard_services.decider.approvals import expire_pending
from rollguard_services.decider.context import DecisionContext
from rollguard_services.decider.outcome import DECIDER_ID, Outcome, decision
from rollguard_services.decider.state import ModelState, apply_manifest, is_known_good


def bake(state: ModelState, ctx: DecisionContext) -> Outcome | None:
    """Mark the live version known good once it has been live ``bake_s`` without a breach."""
    live = state.live
    if live is None or is_known_good(state, live.system_version) or state.locked:
        return None
    bake_s = ctx.policy.rollback.bake_s
    if ctx.now - live.ts < timedelta(seconds=bake_s):
        return None
    last = state.last_breach.get(live.model_version)
    if last is not None and last >= live.ts:
        return None
    marked = live.model_copy(
        update={
            "event_id": derived_id(live.system_version, "known_good", live.event_id),
            "ts": ctx.now,
            "status": "known_good",
            "note": f"baked {bake_s:g}s without a breach",
        }
    )
    return Outcome(apply_manifest(state, marked), manifests=[marked])


def check_verification(state: ModelState, ctx: DecisionContext) -> Outcome | None:
    """Once the window passed without a breach of the restored version: a ``verified`` ack if
    it served the policy's minimum of requests meanwhile, else (once the detector's last
    reports had time to arrive) ``unverifiable``: the model is locked and a person paged."""
    verifying = state.verifying
    now = ctx.now
    if verifying is None or now < verifying.deadline:
        return None
    needed = ctx.policy.rollback.verification_min_requests
    if verifying.served < needed:
        if now < ctx.traffic_due(verifying.deadline):
            return None
        return unverifiable(state, ctx, needed)
    live = state.live
    metrics = {
        **verifying.metrics,
        "time_to_verified_s": verifying.metrics.get("time_to_applied_s", 0.0)
        + (now - verifying.applied_at).total_seconds(),
        "verification_requests": float(verifying.served),
    }
    ack = CommandAck(
        event_id=derived_id(verifying.command_id, "verified"),
        ts=now,
        model_id=state.model_id,
        model_version=live.model_version if live else verifying.restored_version,
        system_version=live.system_version if live else None,
        command_id=verifying.command_id,
        status="verified",
        executor_id=DECIDER_ID,
        detail=f"{verifying.restored_version} stayed within thresholds for the verification "
        f"window, serving {verifying.served} requests",
        timings=metrics,
    )
    return Outcome(state.model_copy(update={"verifying": None}), acks=[ack])


def unverifiable(state: ModelState, ctx: DecisionContext, needed: int) -> Outcome:
    """Too little traffic to call the restored version good: stop acting, ask a person."""
    verifying = state.verifying
    assert verifying is not None
    seconds = (verifying.deadline - verifying.applied_at).total_seconds()
    locked = state.model_copy(update={"verifying": None, "locked": "unverifiable"})
    live = state.live
    said = decision(
        locked,
        ctx,
        event_id=derived_id(verifying.command_id, "unverifiable"),
        model_version=verifying.restored_version,
        system_version=live.system_version if live else None,
        action="investigate",
        parent_decision_id=verifying.decision_id,
        command_id=verifying.command_id,
        metrics={**verifying.metrics, "verification_requests": float(verifying.served)},
        reasons=[
            Reason(
                code="unverifiable",
                detail=f"restored {verifying.restored_version} served {verifying.served} "
                f"requests in its {seconds:g} s verification window, {needed} needed "
                "(rollback.verification_min_requests): nothing says it is good. Automatic "
                "action on this model stops until a person acts (rollguard rollback ... or "
                "unlock)",
            )
        ],
    )
    return Outcome(locked, [said])


def expiring(state: ModelState, ctx: DecisionContext) -> bool:
    """Whether the command in flight has expired without a final ack (that the decider saw)."""
    return state.in_flight is not None and ctx.now >= state.in_flight.expires_at


def expire_in_flight(state: ModelState, ctx: DecisionContext) -> Outcome | None:
    """A command nobody acknowledged as applied or failed before it expired: stop waiting for
    it and escalate (the executor may be down), so later breaches are decided again. Its ack,
    should one come after all, is still taken (``apply_ack``)."""
    flight = state.in_flight
    if flight is None or not expiring(state, ctx):
        return None
    freed = state.model_copy(update={"in_flight": None, "expired": flight})
    escalated = decision(
        freed,
        ctx,
        event_id=derived_id("unacknowledged", flight.command_id),
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
    return Outcome(freed, [escalated])


TimerStep = Callable[[ModelState, DecisionContext], Outcome | None]

#: What a tick runs, in this order, each on the state the previous one left.
TICK_STEPS: tuple[TimerStep, ...] = (check_verification, expire_pending, expire_in_flight, bake)


def due(state: ModelState, ctx: DecisionContext) -> bool:
    """Whether a tick would change anything for this model now."""
    return any(step(state, ctx) is not None for step in TICK_STEPS)


def next_due(state: ModelState, ctx: DecisionContext) -> datetime | None:
    """The earliest time a tick step could change this model (None: only an event can), never
    later than the step would act: a tick at that time runs ``due``, which has the last word."""
    if state.owed:
        return ctx.now
    times: list[datetime] = [p.expires_at for p in state.pending]
    if state.in_flight is not None:
        times.append(state.in_flight.expires_at)
    verifying = state.verifying
    if verifying is not None:
        # Short of requests, it waits the grace for the last reports (a report that makes up
        # the number stores the state again, which reschedules it at the deadline).
        short = verifying.served < ctx.policy.rollback.verification_min_requests
        times.append(ctx.traffic_due(verifying.deadline) if short else verifying.deadline)
    live = state.live
    if live is not None and not state.locked and not is_known_good(state, live.system_version):
        last = state.last_breach.get(live.model_version)
        if last is None or last < live.ts:
            times.append(live.ts + timedelta(seconds=ctx.policy.rollback.bake_s))
    return min(times, default=None)


class Deadlines:
    """When each model next has something due: what the decider's timer looks at, instead of
    every stored state on every tick. A heap of (time, model); a model's entry is replaced
    whenever its state is stored, stale heap entries are skipped when they come up."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._at: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._at)

    def schedule(self, model_id: str, when: datetime | None) -> None:
        if when is None:
            self._at.pop(model_id, None)
            return
        at = when.timestamp()
        if self._at.get(model_id) == at:
            return
        self._at[model_id] = at
        heapq.heappush(self._heap, (at, model_id))

    def pop_due(self, now: datetime) -> list[str]:
        """The models due at ``now``, each once; their entries are gone until scheduled again."""
        bound = now.timestamp()
        out: list[str] = []
        while self._heap and self._heap[0][0] <= bound:
            at, model_id = heapq.heappop(self._heap)
            if self._at.get(model_id) == at:
                del self._at[model_id]
                out.append(model_id)
        if len(self._heap) > 4 * len(self._at) + 64:  # stale entries: rebuild, never grow
            self._heap = [(at, m) for m, at in self._at.items()]
            heapq.heapify(self._heap)
        return out
