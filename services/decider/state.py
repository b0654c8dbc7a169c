"""What the decider knows of one model, and how deployments, health checks and executor acks
change it. Pure functions: state and a fact in, the new state out."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from rollguard.events import (
    Breach,
    CommandAck,
    HealthCheckEvent,
    Paused,
    ReasonCode,
    SystemManifest,
    TrafficReport,
)
from rollguard.policy import Mode
from rollguard_services.decider.context import DecisionContext

#: The acks that end a command in flight ("received" and "verified" do not).
FINAL_ACKS = frozenset({"applied", "failed", "rejected"})
#: Traffic reports of a rollback's target kept while it is in flight (one per two seconds).
TARGET_TRAFFIC_MEMORY = 256


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
    #: Requests the restored version served since ``applied_at`` (TrafficReports).
    served: int = 0
    #: The end of the last report counted: a report delivered again, or a detector's after
    #: a restart for windows already counted, ends no later and is not counted twice ...
    counted_until: datetime | None = None
    #: ... except reports of count-based windows, several of which end alike: the ids of
    #: those counted that end at ``counted_until``.
    counted_ids: tuple[str, ...] = ()


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
    #: One approval by any of ``required_roles`` launches it (a recommendation's confirmation).
    any_of: bool = False
    #: The live system version it is about: approved once another is live, it is refused.
    live_system_version: str | None = None


#: Who a recommendation is from (``Pending.requested_by``; rollback.mode recommend).
RECOMMENDER = "rollguard"


class Owed(BaseModel):
    """An event the decider decided to publish and has not yet seen acknowledged by the
    broker: kept in the state before it is sent, so a kill in between cannot lose it."""

    model_config = ConfigDict(frozen=True)

    topic: str  # the topic's short name (rollguard.topics)
    value: str  # the event's JSON
    command_id: str | None = None  # a command: sent again only if its topic does not have it


class ModelState(BaseModel):
    """What the decider knows of one model; stored in a faust table keyed by model_id."""

    model_config = ConfigDict(frozen=True)

    model_id: str
    live: SystemManifest | None = None
    known_good: tuple[SystemManifest, ...] = ()
    in_flight: InFlight | None = None
    #: The last command that expired unacknowledged: a final ack that arrives for it later
    #: (its executor ran on through a broker outage, say) still says what happened.
    expired: InFlight | None = None
    verifying: Verifying | None = None
    #: (end, served, report id) of the in-flight rollback's target, reported before its
    #: applied ack.
    target_traffic: tuple[tuple[datetime, int, str], ...] = ()
    cooldown_until: datetime | None = None
    locked: ReasonCode | None = None  # why automatic action stopped
    pending: tuple[Pending, ...] = ()
    handled_breaches: tuple[str, ...] = ()
    #: Event ids of the latest deployments, requests and approvals taken: one sent again as
    #: it was (a replay: its signature still holds) changes nothing the second time.
    taken_facts: tuple[str, ...] = ()
    #: Requests and approvals taken, with when each stops being acceptable anyway (its time
    #: plus the limit on a person's input): kept until then, however many other facts come,
    #: so a signed one sent again within its time is never taken twice.
    taken_people: tuple[tuple[str, datetime], ...] = ()
    last_breach: dict[str, datetime] = {}  # model_version → last breach time
    #: model_version → the one ``not_live_version`` hold said about it since it stopped being
    #: live: later breaches of it are measured (ledgered, counted) but decide nothing more.
    quiet: dict[str, str] = {}
    #: model_version → the ``observe_mode`` decision that said what enforce would have done
    #: (rollback.mode observe): later breaches of it decide nothing more until it goes live
    #: again (a new deployment of it is a new incident).
    observed: dict[str, str] = {}
    #: Automatic action stopped by a person until resumed (``rollguard pause``).
    paused: Paused | None = None
    #: Versions whose breach was said ``paused`` while paused (one hold each).
    paused_said: tuple[str, ...] = ()
    #: The mode a person switched the model to at run time; None: the policy's.
    mode: Mode | None = None
    #: model_version → the latest breach of it held for want of its live manifest
    #: (``unknown_model``, ``not_live_version``): decided again when that manifest is read
    #: (breaches.deployed_late). The breaches and deployments topics are read apart: a
    #: worker taking a dead one's models over reads both backlogs at once.
    early: dict[str, Breach] = {}
    health: dict[str, tuple[datetime, bool]] = {}  # model_version → last check
    #: What an outcome still owes the topics; only non-empty while it is being sent, or
    #: after a kill in the middle, when the next event of the model sends it again.
    owed: tuple[Owed, ...] = ()


#: How many fact ids a model remembers (``taken_facts``).
FACT_MEMORY = 512


def taken(state: ModelState, event_id: str) -> ModelState | None:
    """The state remembering ``event_id`` as taken; None when it was taken already."""
    if event_id in state.taken_facts:
        return None
    return state.model_copy(update={"taken_facts": (*state.taken_facts, event_id)[-FACT_MEMORY:]})


def taken_person(
    state: ModelState, event_id: str, until: datetime, now: datetime
) -> ModelState | None:
    """The state remembering the request or approval ``event_id`` until ``until``; None when
    it was taken already. Ids whose time has passed are forgotten (the input is refused as
    expired by then)."""
    kept = tuple((e, t) for e, t in state.taken_people if t >= now)
    if any(e == event_id for e, _ in kept):
        return None
    return state.model_copy(update={"taken_people": (*kept, (event_id, until))})


def apply_manifest(state: ModelState, manifest: SystemManifest) -> ModelState:
    """Follow a deployment fact: the live pointer, and the known-good list (newest last)."""
    live = manifest if manifest.serving else state.live
    if (
        live is not None
        and state.live is not None
        and live.system_version == state.live.system_version
        and manifest.status in ("known_good", "live")
    ):
        # Marking the live version known good, or recording it live again (a deployer key
        # retired: its deployments recorded anew), restarts neither its bake nor its MTTD.
        live = state.live
    others = tuple(k for k in state.known_good if k.system_version != manifest.system_version)
    if manifest.status == "known_good":
        known = (*others, manifest)
    elif manifest.status == "rolled_back":
        known = others
    else:  # live or candidate again: its known-good standing, if any, is unchanged
        known = state.known_good
    quiet, observed = state.quiet, state.observed
    if manifest.serving:  # live again: it speaks again
        quiet = {v: d for v, d in quiet.items() if v != manifest.model_version}
    was = state.live.system_version if state.live is not None else None
    pending = state.pending
    if manifest.serving and manifest.system_version != was:
        # deployed again (not the same live deployment recorded once more): a new incident
        observed = {v: d for v, d in observed.items() if v != manifest.model_version}
        # a recommendation was about the version that was live: another one is now
        pending = tuple(p for p in pending if p.requested_by != RECOMMENDER)
    return state.model_copy(
        update={
            "live": live,
            "known_good": known,
            "quiet": quiet,
            "observed": observed,
            "pending": pending,
        }
    )


def apply_health(state: ModelState, check: HealthCheckEvent) -> ModelState:
    health = {**state.health, check.model_version: (check.ts, check.ok)}
    return state.model_copy(update={"health": health})


def apply_ack(state: ModelState, ack: CommandAck, ctx: DecisionContext) -> ModelState:
    """A final ack for the command in flight ends it; ``applied`` starts the cooldown and the
    verification window (both timed from the ack, not from ``ctx.now``).

    A final ack for the command that expired unacknowledged is taken as late news of it:
    applied, the target is live and verified as it would have been; failed, it is forgotten.
    A command in flight meanwhile (decided again after the expiry) stays in flight."""
    if ack.component is not None:
        return state
    late = state.in_flight is None or ack.command_id != state.in_flight.command_id
    flight = state.expired if late else state.in_flight
    if flight is None or ack.command_id != flight.command_id:
        return state
    ended: dict[str, object] = {"expired": None} if late else {"in_flight": None}
    rollback = ctx.policy.rollback
    if ack.status == "applied":
        metrics = {
            **flight.metrics,
            "time_to_applied_s": (ack.ts - flight.issued_at).total_seconds()
            + flight.metrics.get("time_to_decision_s", 0.0),
        }
        early = [(end, n, eid) for end, n, eid in state.target_traffic if end > ack.ts]
        last = max((end for end, _, _ in early), default=None)
        verifying = Verifying(
            command_id=flight.command_id,
            decision_id=flight.decision_id,
            restored_version=flight.target.model_version,
            applied_at=ack.ts,
            # From when the decider learns of it: an ack read late (a broker outage, a
            # restart) still gets a window in which the restored version's traffic is seen.
            deadline=max(ack.ts, ctx.now) + timedelta(seconds=rollback.verification_s),
            metrics=metrics,
            served=sum(n for _, n, _ in early),
            counted_until=last,
            counted_ids=tuple(eid for end, _, eid in early if end == last),
        )
        until = ack.ts + timedelta(seconds=rollback.cooldown_s)
        # Applying the command moved the live pointer to its target: the decider knows that
        # without waiting for the pointer on `deployments`, whose agent may lag behind the
        # acks (after a restart, say) and let a late breach of the bad version look live.
        return state.model_copy(
            update={
                **ended,
                "target_traffic": (),
                "verifying": verifying,
                "cooldown_until": until,
                "live": flight.target,
                # the restored version is live by this rollback: an early breach of it is
                # about an earlier time it was live, not this one (breaches.deployed_late)
                "early": {v: b for v, b in state.early.items() if v != flight.target.model_version},
            }
        )
    if ack.status in ("failed", "rejected"):
        return state.model_copy(update={**ended, "target_traffic": ()})
    return state


def apply_traffic(state: ModelState, report: TrafficReport) -> ModelState:
    """Count the restored version's traffic into its verification: what it served in windows
    that ended after the rollback applied, until the verification is decided.

    While the rollback is in flight the target's reports are kept: the traffic agent may read
    them before the ack agent reads the applied ack (after a restart, say), and they count
    once it does."""
    verifying, flight = state.verifying, state.in_flight
    if flight is not None and report.model_version == flight.target.model_version:
        if any(eid == report.event_id for _, _, eid in state.target_traffic):
            return state
        seen = (report.end, report.served, report.event_id)
        kept = (*state.target_traffic, seen)[-TARGET_TRAFFIC_MEMORY:]
        return state.model_copy(update={"target_traffic": kept})
    if (
        verifying is None
        or report.model_version != verifying.restored_version
        or report.end <= verifying.applied_at
    ):
        return state
    until = verifying.counted_until
    if until is not None and (
        report.end < until or (report.end == until and report.event_id in verifying.counted_ids)
    ):
        return state
    ids = (*verifying.counted_ids, report.event_id) if report.end == until else (report.event_id,)
    counted = verifying.model_copy(
        update={
            "served": verifying.served + report.served,
            "counted_until": report.end,
            "counted_ids": ids,
        }
    )
    return state.model_copy(update={"verifying": counted})


def is_known_good(state: ModelState, system_version: str) -> bool:
    return any(k.system_version == system_version for k in state.known_good)
