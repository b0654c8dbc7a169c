"""The decider's timer looks only at models with something due (issue 15, point 4).

``next_due`` must never be later than the time a tick step would act: for states reached the
way the decider reaches them (a live version baking, a command in flight, a verification
window, an approval waiting), ``due`` is false at every instant before it and true at it or
soon after. ``Deadlines`` hands each due model out once and forgets superseded times.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest

from rollguard.signing import Signer
from rollguard_services.decider import approvals, timers
from rollguard_services.decider.context import DecisionContext
from rollguard_services.decider.state import ModelState, apply_ack, apply_traffic
from tests.decider.test_decisions import (
    DORA,
    POLICY,
    T0,
    applied,
    ctx,
    decide,
    live_v2,
    req,
)
from tests.decider.test_decisions import signer as signer
from tests.factories import breach, traffic


def states(signer: Signer) -> dict[str, ModelState]:
    """One state per timer step, each made by the decider's own functions."""
    rolled = decide(live_v2(), breach("v2"), signer)
    verifying = apply_ack(rolled.state, applied(rolled, T0 + timedelta(seconds=1)), ctx(signer))
    served = apply_traffic(verifying, traffic("v1", 500, T0 + timedelta(seconds=30)))
    asked = approvals.request(
        live_v2(), req(level=3, role="data_engineering_lead"), DORA, ctx(signer)
    )
    return {
        "baking": live_v2(),
        "in_flight": rolled.state,
        "verifying_unserved": verifying,
        "verifying_served": served,
        "approval_pending": asked.state,
    }


def first_due(state: ModelState, signer: Signer, start: datetime, step: timedelta) -> datetime:
    at = start
    while not timers.due(state, ctx(signer, now=at)):
        at += step
        assert at < start + timedelta(days=2), "never due"
    return at


@pytest.mark.parametrize(
    "name",
    ["baking", "in_flight", "verifying_unserved", "verifying_served", "approval_pending"],
)
def test_next_due_is_never_after_a_step_would_act(signer: Signer, name: str) -> None:
    state = states(signer)[name]
    when = timers.next_due(state, ctx(signer))
    assert when is not None and when > T0
    step = timedelta(seconds=1)
    acts = first_due(state, signer, T0, step)
    assert when <= acts, f"{name}: told {when}, a step acts at {acts}"
    # ...and not long before it either: the timer is not woken for nothing.
    assert acts - when <= step, f"{name}: told {when}, nothing to do until {acts}"


def test_a_verification_short_of_traffic_is_looked_at_again_after_the_grace(
    signer: Signer,
) -> None:
    state = states(signer)["verifying_unserved"]
    assert state.verifying is not None
    deadline = state.verifying.deadline
    # Short of requests: the first look is the end of the grace, not the deadline...
    later = timers.next_due(state, ctx(signer, now=deadline))
    assert timers.next_due(state, ctx(signer)) == later
    assert later == deadline + ctx(signer).traffic_grace
    assert not timers.due(state, ctx(signer, now=later - timedelta(seconds=0.5)))
    assert timers.due(state, ctx(signer, now=later))
    # ...and a report that makes up the number brings it back to the deadline.
    served = apply_traffic(state, traffic("v1", 500, T0 + timedelta(seconds=30)))
    assert timers.next_due(served, ctx(signer)) == deadline


def test_a_verification_the_decider_was_away_for_waits_a_fresh_window_before_unverifiable(
    signer: Signer,
) -> None:
    """CI, issue 11's kill drill: `up` killed inside a verification window came back after
    the window and its grace had passed, and the restored version was called unverifiable
    before the detector (or the router) was back to report its traffic."""
    state = states(signer)["verifying_unserved"]
    assert state.verifying is not None
    deadline = state.verifying.deadline
    back = deadline + timedelta(seconds=30)  # restarted long after the window closed
    window = timedelta(seconds=POLICY.rollback.verification_s)

    def resumed(now: datetime) -> DecisionContext:
        return dataclasses.replace(ctx(signer, now=now), resumed_at=back)

    grace = ctx(signer).traffic_grace
    assert timers.next_due(state, resumed(back)) == back + window + grace
    assert timers.check_verification(state, resumed(back + window)) is None
    assert (
        timers.check_verification(state, resumed(back + window + grace - timedelta(seconds=1)))
        is None
    )
    told = timers.check_verification(state, resumed(back + window + grace))
    assert told is not None and told.decisions[0].reasons[0].code == "unverifiable"
    # The restored version's traffic once rollguard is back counts (its windows end after
    # the rollback applied): the verification passes instead.
    served = apply_traffic(state, traffic("v1", 500, back + timedelta(seconds=2)))
    passed = timers.check_verification(served, resumed(back + window))
    assert passed is not None and [a.status for a in passed.acks] == ["verified"]
    # A decider that was there all along calls it at the grace past the window, as before.
    assert timers.due(state, ctx(signer, now=deadline + grace))


def test_nothing_due_for_a_known_good_model_or_a_locked_one(signer: Signer) -> None:
    baked = timers.bake(live_v2(), ctx(signer, now=T0 + timedelta(seconds=POLICY.rollback.bake_s)))
    assert baked is not None
    assert timers.next_due(baked.state, ctx(signer)) is None
    locked = live_v2().model_copy(update={"locked": "verification_failed"})
    assert timers.next_due(locked, ctx(signer)) is None


def test_deadlines_hand_out_due_models_once_and_skip_superseded_times() -> None:
    d = timers.Deadlines()
    d.schedule("a", T0 + timedelta(seconds=5))
    d.schedule("b", T0 + timedelta(seconds=1))
    d.schedule("a", T0 + timedelta(seconds=2))  # rescheduled: the 5 s entry is stale
    d.schedule("c", None)  # nothing due: not kept
    assert d.pop_due(T0) == []
    assert d.pop_due(T0 + timedelta(seconds=3)) == ["b", "a"]
    assert d.pop_due(T0 + timedelta(seconds=10)) == []  # the stale 5 s entry is skipped
    assert len(d) == 0
    d.schedule("a", T0 + timedelta(seconds=20))
    d.schedule("a", None)  # its state no longer has anything due
    assert d.pop_due(T0 + timedelta(seconds=30)) == []


def test_deadlines_stay_bounded_when_models_are_rescheduled_often() -> None:
    d = timers.Deadlines()
    for i in range(10_000):
        d.schedule(f"m{i % 10}", T0 + timedelta(seconds=i))
        d.pop_due(T0)  # what the timer does every tick
    assert len(d) == 10
    assert len(d._heap) <= 4 * len(d) + 64 + 1


def test_two_models_due_at_the_same_instant_are_both_handed_out() -> None:
    d = timers.Deadlines()
    same = T0 + timedelta(seconds=1)
    d.schedule("x", same)
    d.schedule("y", same)
    assert sorted(d.pop_due(same)) == ["x", "y"]


def test_rebalances_that_keep_coming_cannot_put_the_unverifiable_verdict_off_for_ever(
    signer: Signer,
) -> None:
    """Review: resumed_at moves on every rebalance; a crash-looping group member would
    otherwise keep a restored version with no traffic 'verifying' for ever."""
    state = states(signer)["verifying_unserved"]
    assert state.verifying is not None
    deadline = state.verifying.deadline
    window = timedelta(seconds=POLICY.rollback.verification_s)
    grace = ctx(signer).traffic_grace
    latest = deadline + 3 * (window + grace) + grace
    later = deadline + timedelta(hours=1)
    looping = dataclasses.replace(ctx(signer, now=later), resumed_at=later - timedelta(seconds=1))
    assert timers.next_due(state, looping) == latest
    told = timers.check_verification(state, looping)
    assert told is not None and told.decisions[0].reasons[0].code == "unverifiable"
