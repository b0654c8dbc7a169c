"""The decision framework, input by input: every outcome and every hold reason."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollguard import events as ev
from rollguard.authority import Identity
from rollguard.policy import ExpectedChange, ModelPolicy, RollbackPolicy
from rollguard.signing import (
    Signer,
    generate_keypair,
    load_signer,
    load_trust,
    verify_command,
)
from rollguard_services.decider import approvals, breaches, targets, timers
from rollguard_services.decider.context import DecisionContext
from rollguard_services.decider.outcome import DECIDER_ID, Outcome
from rollguard_services.decider.state import (
    ModelState,
    apply_ack,
    apply_manifest,
    apply_traffic,
    is_known_good,
)
from tests.factories import breach, manifest, traffic

POLICY = ModelPolicy()
T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
ALICE = Identity("alice", "ml_engineer")
DORA = Identity("dora", "data_engineering_lead")
MIKE = Identity("mike", "ml_lead")
DAN = Identity("dan", "data_engineering_lead")


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    generate_keypair(tmp_path / "k.pem", tmp_path / "trusted")
    return load_signer(tmp_path / "k.pem")


def ctx(signer: Signer, policy: ModelPolicy = POLICY, now: datetime = T0) -> DecisionContext:
    return DecisionContext(policy=policy, now=now, signer=signer)


def state_with(*manifests: ev.SystemManifest) -> ModelState:
    state = ModelState(model_id="m")
    for m in manifests:
        state = apply_manifest(state, m)
    return state


def live_v2(**v2: object) -> ModelState:
    return state_with(
        manifest("v1", status="known_good", ts=T0 - timedelta(hours=2)),
        manifest("v2", status="live", ts=T0 - timedelta(minutes=5), **v2),  # type: ignore[arg-type]
    )


def codes(decision: ev.Decision) -> list[str]:
    return [r.code for r in decision.reasons]


def decide(
    state: ModelState,
    b: ev.Breach,
    signer: Signer,
    policy: ModelPolicy = POLICY,
    now: datetime = T0,
) -> Outcome:
    out = breaches.decide(state, b, ctx(signer, policy, now))
    assert out is not None
    return out


def applied(out: Outcome, at: datetime) -> ev.CommandAck:
    assert out.command is not None
    return ev.CommandAck(
        model_id="m",
        model_version="v2",
        command_id=out.command.command_id,
        status="applied",
        executor_id="x",
        ts=at,
    )


# ------------------------------------------------------------------ levels


def test_level_one_when_only_the_model_differs(signer: Signer, tmp_path: Path) -> None:
    out = decide(live_v2(), breach("v2"), signer)
    assert out.command is not None
    assert (out.decision.action, out.decision.level) == ("rollback", 1)
    assert out.decision.command_id == out.command.command_id
    assert out.command.decision_id == out.decision.event_id
    assert (out.command.from_manifest.system_version, out.command.to_manifest.system_version) == (
        "sys-v2",
        "sys-v1",
    )
    assert out.state.in_flight is not None
    assert out.command.expires_at == T0 + timedelta(seconds=POLICY.rollback.command_ttl_s)
    assert verify_command(out.command, load_trust(tmp_path / "trusted"), T0).ok


def test_model_only_rollback_onto_another_feature_pipeline_is_level_two(signer: Signer) -> None:
    state = state_with(
        manifest("v1", status="known_good", feature_pipeline="fp-1"),
        manifest("v2", status="live", feature_pipeline="fp-2"),
    )
    out = decide(state, breach("v2"), signer)
    assert out.command is not None
    assert out.decision.level == 2 and out.command.level == 2
    assert codes(out.decision) == ["breach", "model_only_incompatible", "notify_lead"]
    assert "feature_pipeline fp-2 live vs fp-1 target" in out.decision.reasons[1].detail
    assert "ml_lead" in out.decision.reasons[2].detail


def test_policy_can_ask_for_system_level_always(signer: Signer) -> None:
    policy = POLICY.model_copy(update={"rollback": RollbackPolicy(level="system")})
    out = decide(live_v2(), breach("v2"), signer, policy)
    assert out.decision.level == 2 and "policy_system_level" in codes(out.decision)


# ------------------------------------------------------------------ every hold


def expected_change_policy() -> ModelPolicy:
    change = ExpectedChange(
        start=T0 - timedelta(hours=1),
        end=T0 + timedelta(hours=1),
        reason="new ranker",
        model_versions=("v2",),
    )
    return POLICY.model_copy(update={"expected_changes": (change,)})


@pytest.mark.parametrize(
    ("state", "brch", "policy", "action", "code"),
    [
        (ModelState(model_id="m"), breach("v2"), POLICY, "hold", "unknown_model"),
        (live_v2(), breach("v1"), POLICY, "hold", "not_live_version"),
        (live_v2(), breach("v2", ts=T0), expected_change_policy(), "hold", "expected_change"),
        (live_v2(), breach("v2", tier="delayed"), POLICY, "investigate", "tier_not_automatic"),
        (
            live_v2().model_copy(update={"locked": "verification_failed"}),
            breach("v2"),
            POLICY,
            "hold",
            "locked",
        ),
        (
            live_v2().model_copy(update={"cooldown_until": T0 + timedelta(seconds=5)}),
            breach("v2"),
            POLICY,
            "hold",
            "cooldown",
        ),
        (
            state_with(manifest("v2", status="live")),
            breach("v2"),
            POLICY,
            "investigate",
            "no_known_good_target",
        ),
        (
            state_with(manifest("v2", status="known_good")),
            breach("v2"),
            POLICY,
            "investigate",
            "no_known_good_target",
        ),
    ],
    ids=[
        "unknown-model",
        "not-live",
        "expected-change",
        "delayed-tier",
        "locked",
        "cooldown",
        "no-target",
        "only-live-is-good",
    ],
)
def test_every_non_rollback_is_a_decision_with_its_reason(
    signer: Signer,
    state: ModelState,
    brch: ev.Breach,
    policy: ModelPolicy,
    action: str,
    code: str,
) -> None:
    out = decide(state, brch, signer, policy)
    assert out.command is None
    assert out.decision.action == action
    assert codes(out.decision) == ["breach", code]
    assert out.decision.breach_ids == [brch.event_id]


def test_rollback_in_flight_holds(signer: Signer) -> None:
    first = decide(live_v2(), breach("v2"), signer)
    second = decide(first.state, breach("v2"), signer)
    assert codes(second.decision)[-1] == "rollback_in_flight" and second.command is None


@pytest.mark.parametrize(
    ("health", "detail"),
    [
        ({}, "no health check of v1"),
        ({"v1": (T0 - timedelta(seconds=5), False)}, "failed its last health check"),
        ({"v1": (T0 - timedelta(minutes=5), True)}, "300s old"),
    ],
)
def test_target_not_ready_escalates_instead(
    signer: Signer, health: dict[str, tuple[datetime, bool]], detail: str
) -> None:
    policy = POLICY.model_copy(update={"rollback": RollbackPolicy(target_ready_within_s=30)})
    out = decide(live_v2().model_copy(update={"health": health}), breach("v2"), signer, policy)
    assert out.decision.action == "investigate" and codes(out.decision)[-1] == "target_not_ready"
    assert detail in out.decision.reasons[-1].detail
    ready = live_v2().model_copy(update={"health": {"v1": (T0 - timedelta(seconds=5), True)}})
    assert decide(ready, breach("v2"), signer, policy).decision.action == "rollback"


def test_duplicate_breach_is_ignored(signer: Signer) -> None:
    b = breach("v2")
    out = decide(live_v2(), b, signer)
    assert breaches.decide(out.state, b, ctx(signer)) is None


def test_replaying_a_breach_gives_the_same_decision_and_command_byte_for_byte(
    signer: Signer,
) -> None:
    """Ids and the nonce come from the input, and Ed25519 is deterministic: deciding the same
    breach from the same state at the same time twice gives identical events."""
    state, b = live_v2(), breach("v2")
    first, again = decide(state, b, signer), decide(state, b, signer)
    assert first.command is not None and again.command is not None
    assert first.decision == again.decision and first.command == again.command
    assert first.decision.encode() == again.decision.encode()
    assert first.command.encode() == again.command.encode()
    assert first.command.signature and first.command.signature == again.command.signature
    assert first.state == again.state
    other = decide(state, breach("v2"), signer)  # another breach: other ids
    assert other.decision.event_id != first.decision.event_id
    assert other.command is not None and other.command.nonce != first.command.nonce


def test_incident_metrics_have_one_mttd_live_to_breach(signer: Signer) -> None:
    """MTTD is the bad version live (its manifest, 5 min before T0) → the breach, as
    ``incident show`` and the demo count it; the detector's first event of the version is a
    figure of its own."""
    b = breach(
        "v2",
        ts=T0 - timedelta(seconds=1),
        version_first_event_ts=T0 - timedelta(seconds=4),
        version_events=812,
        evidence={"version_first_event_ts": 0.0, "version_events": 1},  # ignored: for people
    )
    out = decide(live_v2(), b, signer, now=T0)
    assert out.decision.metrics == {
        "mttd_s": 299.0,
        "time_to_decision_s": 300.0,
        "first_event_to_breach_s": 3.0,
        "blast_radius_events": 812.0,
    }


# ------------------------------------------------------------------ acks, verification, flapping


def test_applied_starts_cooldown_and_verification_then_verified(signer: Signer) -> None:
    out = decide(live_v2(), breach("v2"), signer)
    after = apply_ack(out.state, applied(out, T0 + timedelta(seconds=1)), ctx(signer))
    assert after.in_flight is None and after.verifying is not None
    assert after.cooldown_until == T0 + timedelta(seconds=1 + POLICY.rollback.cooldown_s)
    assert timers.check_verification(after, ctx(signer, now=T0 + timedelta(seconds=60))) is None
    # What the restored v1 served after the rollback counts; v2's, a window that ended
    # before the ack and a report delivered twice do not.
    first = traffic("v1", 60, T0 + timedelta(seconds=30))
    for report in (
        first,
        first,
        traffic("v2", 500, T0 + timedelta(seconds=31)),
        traffic("v1", 500, T0 + timedelta(seconds=0.5)),
        traffic("v1", 60, T0 + timedelta(seconds=32)),
    ):
        after = apply_traffic(after, report)
    assert after.verifying is not None and after.verifying.served == 120
    done = timers.check_verification(
        after, ctx(signer, now=T0 + timedelta(seconds=1 + POLICY.rollback.verification_s))
    )
    assert done is not None and done.state.verifying is None
    (ack,) = done.acks
    assert (ack.status, ack.command_id, ack.executor_id) == (
        "verified",
        out.command.command_id,
        DECIDER_ID,
    )  # type: ignore[union-attr]
    assert ack.timings["time_to_verified_s"] >= POLICY.rollback.verification_s
    assert ack.timings["verification_requests"] == 120


def test_a_restored_version_that_served_too_little_is_unverifiable_and_locks(
    signer: Signer,
) -> None:
    out = decide(live_v2(), breach("v2"), signer)
    after = apply_ack(out.state, applied(out, T0), ctx(signer))
    after = apply_traffic(after, traffic("v1", 99, T0 + timedelta(seconds=10)))
    assert after.verifying is not None
    deadline = after.verifying.deadline
    # The detector's last reports may still come: it waits the grace before saying so.
    assert timers.check_verification(after, ctx(signer, now=deadline)) is None
    said = timers.check_verification(after, ctx(signer, now=deadline + timedelta(seconds=10)))
    assert said is not None and not said.acks
    (unverifiable,) = said.decisions
    assert unverifiable.action == "investigate" and codes(unverifiable) == ["unverifiable"]
    assert "served 99 requests" in unverifiable.reasons[0].detail
    assert unverifiable.command_id == out.command.command_id  # type: ignore[union-attr]
    assert unverifiable.parent_decision_id == out.decision.event_id
    assert said.state.locked == "unverifiable" and said.state.verifying is None
    # Locked: the next breach is held for a person, not rolled back.
    assert decide(said.state, breach("v1"), signer).decision.action == "hold"


def test_an_applied_ack_read_late_gets_a_whole_verification_window(signer: Signer) -> None:
    out = decide(live_v2(), breach("v2"), signer)
    # Applied at T0, read 40 s later (the broker was frozen): the window runs from the read.
    read_at = T0 + timedelta(seconds=40)
    after = apply_ack(out.state, applied(out, T0), ctx(signer, now=read_at))
    assert after.verifying is not None and after.verifying.applied_at == T0
    assert after.verifying.deadline == read_at + timedelta(seconds=POLICY.rollback.verification_s)


def test_target_traffic_read_before_the_applied_ack_counts_once_it_comes(
    signer: Signer,
) -> None:
    out = decide(live_v2(), breach("v2"), signer)
    # The traffic agent read the restored v1's reports before the ack agent read the ack
    # (after a restart, say): kept while in flight, once each, and only what ended after it.
    early = traffic("v1", 70, T0 + timedelta(seconds=3))
    state = out.state
    for report in (traffic("v1", 500, T0 - timedelta(seconds=5)), early, early):
        state = apply_traffic(state, report)
    assert len(state.target_traffic) == 2
    after = apply_ack(state, applied(out, T0 + timedelta(seconds=1)), ctx(signer))
    assert after.verifying is not None and after.verifying.served == 70
    assert after.target_traffic == ()
    # ... and the same report read again afterwards is not counted twice.
    assert apply_traffic(after, early).verifying.served == 70  # type: ignore[union-attr]
    # Count-based windows: two reports of full windows of one time bucket end alike; both
    # count, each once.
    at = T0 + timedelta(seconds=4)
    one, two = traffic("v1", 100, at), traffic("v1", 100, at)
    for report in (one, two, one, two):
        after = apply_traffic(after, report)
    assert after.verifying is not None and after.verifying.served == 270


def test_applied_moves_the_live_pointer_before_the_deployments_topic_says_so(
    signer: Signer,
) -> None:
    """Issue 11: after a restart the acks agent ran ahead of the deployments agent; with the
    bad version still live and a 1 s cooldown over, a late breach of it issued a second
    rollback of the same incident."""
    out = decide(live_v2(), breach("v2"), signer)
    after = apply_ack(out.state, applied(out, T0), ctx(signer))
    assert after.live is not None and after.live.model_version == "v1"
    late = decide(
        after,
        breach("v2"),
        signer,
        now=T0 + timedelta(seconds=POLICY.rollback.cooldown_s + 1),
    )
    assert late.command is None and codes(late.decision)[-1] == "not_live_version"


def test_breach_of_the_restored_version_fails_verification_and_locks(signer: Signer) -> None:
    out = decide(live_v2(), breach("v2"), signer)
    after = apply_ack(out.state, applied(out, T0), ctx(signer))
    after = apply_manifest(after, manifest("v1", status="live", ts=T0))
    failed = decide(after, breach("v1"), signer, now=T0 + timedelta(seconds=10))
    assert failed.decision.action == "investigate"
    assert codes(failed.decision)[-1] == "verification_failed"
    assert failed.decision.parent_decision_id == out.decision.event_id
    assert failed.state.locked == "verification_failed"
    again = decide(failed.state, breach("v1"), signer, now=T0 + timedelta(hours=1))
    assert codes(again.decision)[-1] == "locked" and again.command is None


def test_failed_ack_ends_the_flight_without_cooldown(signer: Signer) -> None:
    out = decide(live_v2(), breach("v2"), signer)
    ack = applied(out, T0).model_copy(update={"status": "failed"})
    after = apply_ack(out.state, ack, ctx(signer))
    assert after.in_flight is None and after.cooldown_until is None and after.verifying is None
    other = ack.model_copy(update={"command_id": "someone-else"})
    assert apply_ack(out.state, other, ctx(signer)) == out.state


def test_a_flapping_signal_rolls_back_at_most_once_per_cooldown(signer: Signer) -> None:
    """v2 is redeployed by hand again and again while its signal oscillates around the
    threshold: breaches every other window for 20 minutes give one rollback per cooldown."""
    state, rollbacks = live_v2(), []
    for i in range(1200):
        now = T0 + timedelta(seconds=i)
        if state.live is not None and state.live.model_version == "v1":
            state = apply_manifest(state, manifest("v2", status="live", ts=now))
        if i % 2:
            continue
        out = decide(state, breach("v2", ts=now), signer, now=now)
        state = out.state
        if out.command is not None:
            rollbacks.append(now)
            state = apply_ack(state, applied(out, now), ctx(signer))
            state = apply_manifest(state, manifest("v1", status="live", ts=now))
            state = state.model_copy(update={"verifying": None})
    assert len(rollbacks) == 4  # 0 s, 300 s, 600 s, 900 s
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(rollbacks)]
    assert all(g >= POLICY.rollback.cooldown_s for g in gaps)


# ------------------------------------------------------------------ known good


def test_live_version_becomes_known_good_after_bake_without_breach(signer: Signer) -> None:
    state = state_with(manifest("v1", status="live", ts=T0))
    assert (
        timers.bake(state, ctx(signer, now=T0 + timedelta(seconds=POLICY.rollback.bake_s - 1)))
        is None
    )
    out = timers.bake(state, ctx(signer, now=T0 + timedelta(seconds=POLICY.rollback.bake_s)))
    assert out is not None
    (marked,) = out.manifests
    assert (marked.status, marked.system_version) == ("known_good", "sys-v1")
    assert is_known_good(out.state, "sys-v1")
    assert timers.bake(out.state, ctx(signer, now=T0 + timedelta(days=1))) is None


def test_a_breach_since_going_live_blocks_the_bake(signer: Signer) -> None:
    state = state_with(
        manifest("v1", status="known_good", ts=T0 - timedelta(hours=1)),
        manifest("v2", status="live", ts=T0),
    )
    state = decide(state, breach("v2", tier="delayed", ts=T0 + timedelta(seconds=5)), signer).state
    assert timers.bake(state, ctx(signer, now=T0 + timedelta(days=1))) is None


def test_target_is_the_newest_known_good_other_than_live_and_never_rolled_back() -> None:
    state = state_with(
        manifest("v1", status="known_good"),
        manifest("v2", status="known_good"),
        manifest("v3", status="live"),
    )
    target = targets.rollback_target(state)
    assert target is not None and target.model_version == "v2"
    state = apply_manifest(state, manifest("v2", status="rolled_back"))
    target = targets.rollback_target(state)
    assert target is not None and target.model_version == "v1"
    assert state.live is not None and state.live.model_version == "v3"
    assert targets.rollback_target(state, "sys-v9") is None


# ------------------------------------------------------------------ people


def req(level: int | None = None, role: str = "ml_engineer", **kw: object) -> ev.RollbackRequest:
    return ev.RollbackRequest(model_id="m", level=level, role=role, **kw)  # type: ignore[arg-type]


def approval(decision_id: str, role: str) -> ev.Approval:
    return ev.Approval(model_id="m", decision_id=decision_id, role=role)


def test_manual_level_one_goes_straight_to_a_command_and_overrides_cooldown(signer: Signer) -> None:
    cooling = live_v2().model_copy(
        update={"cooldown_until": T0 + timedelta(hours=1), "locked": "verification_failed"}
    )
    out = approvals.request(cooling, req(), ALICE, ctx(signer))
    assert out.command is not None and out.decision.action == "rollback"
    assert out.decision.requested_by == "alice" and out.state.locked is None
    assert codes(out.decision)[0] == "manual_request"


def test_manual_model_only_onto_other_pipeline_is_refused(signer: Signer) -> None:
    state = state_with(
        manifest("v1", status="known_good", feature_pipeline="fp-1"),
        manifest("v2", feature_pipeline="fp-2"),
    )
    out = approvals.request(state, req(level=1), ALICE, ctx(signer))
    assert out.command is None and codes(out.decision) == ["model_only_incompatible"]


@pytest.mark.parametrize(
    ("who", "code"), [(None, "unknown_token"), (Identity("eve", "sre"), "wrong_role")]
)
def test_requests_with_bad_tokens_are_refused(
    signer: Signer, who: Identity | None, code: str
) -> None:
    out = approvals.request(live_v2(), req(), who, ctx(signer))
    assert out.command is None and codes(out.decision) == [code]


def test_level_three_needs_one_data_engineering_lead_not_the_requester(signer: Signer) -> None:
    asked = approvals.request(
        live_v2(), req(level=3, role="data_engineering_lead"), DORA, ctx(signer)
    )
    pending_id = asked.decision.event_id
    assert asked.command is None and codes(asked.decision)[-1] == "awaiting_approval"
    assert asked.decision.approvals_needed == 1

    own = approvals.approve(
        asked.state, approval(pending_id, "data_engineering_lead"), DORA, ctx(signer)
    )
    assert own.command is None and "cannot approve" in own.decision.reasons[0].detail
    wrong = approvals.approve(asked.state, approval(pending_id, "ml_lead"), MIKE, ctx(signer))
    assert (
        wrong.command is None
        and "not one of data_engineering_lead" in wrong.decision.reasons[0].detail
    )
    lying = approvals.approve(
        asked.state, approval(pending_id, "data_engineering_lead"), MIKE, ctx(signer)
    )
    assert (
        lying.command is None
        and "token belongs to role ml_lead" in lying.decision.reasons[0].detail
    )

    ok = approvals.approve(
        asked.state, approval(pending_id, "data_engineering_lead"), DAN, ctx(signer)
    )
    assert ok.command is not None and ok.command.level == 3
    assert ok.decision.approvals_given == ["dan"] and ok.decision.parent_decision_id == pending_id
    late = approvals.approve(
        ok.state, approval(pending_id, "data_engineering_lead"), DAN, ctx(signer)
    )
    assert late.command is None and "not awaiting approval" in late.decision.reasons[0].detail


def test_level_four_needs_two_distinct_approvers(signer: Signer) -> None:
    asked = approvals.request(live_v2(), req(level=4), ALICE, ctx(signer))
    pid = asked.decision.event_id
    assert asked.decision.approvals_needed == 2
    one = approvals.approve(asked.state, approval(pid, "data_engineering_lead"), DORA, ctx(signer))
    assert one.command is None and "still needs ml_lead" in one.decision.reasons[0].detail
    twice = approvals.approve(one.state, approval(pid, "data_engineering_lead"), DORA, ctx(signer))
    assert twice.command is None and "already approved" in twice.decision.reasons[0].detail
    same_role = approvals.approve(
        one.state, approval(pid, "data_engineering_lead"), DAN, ctx(signer)
    )
    assert same_role.command is None and "already covered" in same_role.decision.reasons[0].detail
    both = approvals.approve(one.state, approval(pid, "ml_lead"), MIKE, ctx(signer))
    assert both.command is not None and both.command.level == 4
    assert both.decision.approvals_given == ["dora", "mike"]


def test_approvals_expire(signer: Signer) -> None:
    asked = approvals.request(live_v2(), req(level=3), ALICE, ctx(signer))
    later = T0 + timedelta(seconds=POLICY.authority.approval_ttl_s)
    refused = approvals.approve(
        asked.state,
        approval(asked.decision.event_id, "data_engineering_lead"),
        DORA,
        ctx(signer, now=later),
    )
    assert refused.command is None and "expired" in refused.decision.reasons[0].detail
    expired = approvals.expire_pending(asked.state, ctx(signer, now=later))
    assert expired is not None and expired.state.pending == ()
    assert codes(expired.decision) == ["approval_expired"]
    assert approvals.expire_pending(asked.state, ctx(signer, now=T0)) is None


def test_unlock_lifts_a_verification_lock(signer: Signer) -> None:
    locked = live_v2().model_copy(update={"locked": "verification_failed"})
    out = approvals.request(
        locked,
        req(action="unlock", reason="fixed the feature store"),
        Identity("mike", "ml_engineer"),
        ctx(signer),
    )
    assert out.state.locked is None and codes(out.decision) == ["unlocked"] and out.command is None


def test_an_unacknowledged_command_expires_and_escalates(signer: Signer) -> None:
    out = decide(live_v2(), breach("v2"), signer)
    assert out.command is not None
    assert (
        timers.expire_in_flight(
            out.state, ctx(signer, now=out.command.expires_at - timedelta(seconds=1))
        )
        is None
    )
    expired = timers.expire_in_flight(out.state, ctx(signer, now=out.command.expires_at))
    assert expired is not None and expired.state.in_flight is None
    assert (expired.decision.action, codes(expired.decision)) == (
        "investigate",
        ["command_unacknowledged"],
    )
    again = decide(expired.state, breach("v2"), signer, now=out.command.expires_at)
    assert again.decision.action == "rollback"  # decided again, not held as in flight


def test_an_applied_ack_after_the_expiry_is_still_what_happened(signer: Signer) -> None:
    """Issue 11: an executor that ran on through a broker outage acks after the command's TTL;
    the rollback happened, so the target is live and verified as it would have been."""
    out = decide(live_v2(), breach("v2"), signer)
    assert out.command is not None
    expiry = out.command.expires_at
    expired = timers.expire_in_flight(out.state, ctx(signer, now=expiry))
    assert expired is not None and expired.state.expired == out.state.in_flight
    late = apply_ack(expired.state, applied(out, expiry + timedelta(seconds=5)), ctx(signer))
    assert late.expired is None and late.in_flight is None
    assert late.live is not None and late.live.system_version == "sys-v1"
    assert late.verifying is not None and late.verifying.command_id == out.command.command_id
    late = apply_traffic(late, traffic("v1", 200, late.verifying.deadline))
    verified = timers.check_verification(late, ctx(signer, now=late.verifying.deadline))
    assert verified is not None and [a.status for a in verified.acks] == ["verified"]


def test_a_late_ack_leaves_the_command_decided_after_the_expiry_in_flight(signer: Signer) -> None:
    out = decide(live_v2(), breach("v2"), signer)
    assert out.command is not None
    expiry = out.command.expires_at
    expired = timers.expire_in_flight(out.state, ctx(signer, now=expiry))
    assert expired is not None
    again = decide(expired.state, breach("v2"), signer, now=expiry)
    assert again.command is not None and again.state.in_flight is not None
    failed = applied(out, expiry).model_copy(update={"status": "failed"})
    after = apply_ack(again.state, failed, ctx(signer))
    assert after.expired is None and after.in_flight == again.state.in_flight
    # An ack of neither command changes nothing.
    other = applied(out, expiry).model_copy(update={"command_id": "someone-else"})
    assert apply_ack(after, other, ctx(signer)) == after


def test_a_version_that_is_not_live_is_held_once_then_only_recorded(signer: Signer) -> None:
    """After a rollback the bad version goes on breaching every window: one hold says it is
    not live; its later breaches add no decision until it is live again (issue 14, part 5)."""
    state = live_v2()  # v2 live; its breaches are decided
    state = apply_manifest(state, manifest("v1", status="live", ts=T0))  # rolled back to v1
    first = decide(state, breach("v2"), signer)
    assert codes(first.decision)[-1] == "not_live_version"
    state = first.state
    for _ in range(5):
        later = decide(state, breach("v2"), signer)
        assert later.decisions == [] and later.command is None
        state = later.state
    # Another version that is not live gets its own one hold.
    assert codes(decide(state, breach("v9"), signer).decision)[-1] == "not_live_version"
    # Live again, v2's breaches are decided again.
    again = apply_manifest(state, manifest("v2", status="live", ts=T0 + timedelta(minutes=1)))
    assert "v2" not in again.quiet
    assert decide(again, breach("v2"), signer).decisions


def test_recording_the_live_version_again_keeps_when_it_went_live() -> None:
    """After a deployer key is retired its deployments are recorded anew: the live version's
    start (its bake, its MTTD) stays the first record's."""
    state = live_v2()
    first = state.live
    assert first is not None
    again = apply_manifest(state, manifest("v2", status="live", ts=T0 + timedelta(hours=1)))
    assert again.live is not None and again.live.ts == first.ts


def test_a_person_s_input_is_remembered_for_its_whole_time_however_many_facts_come() -> None:
    """A signed approval sent again later, within its 600 s, is never taken twice: its id is
    kept until its time is up, not among the last 512 facts (the review's replay window)."""
    from rollguard_services.decider.state import taken, taken_person

    until = T0 + timedelta(seconds=720)
    state = taken_person(live_v2(), "approval-1", until, T0)
    assert state is not None
    for i in range(2_000):  # a flood of other facts
        state = taken(state, f"manifest-{i}") or state
    assert taken_person(state, "approval-1", until, T0 + timedelta(seconds=600)) is None
    # Once its time is up the id is forgotten: the input is refused as expired by then.
    later = taken_person(state, "other", T0 + timedelta(hours=1), until + timedelta(seconds=1))
    assert later is not None and [e for e, _ in later.taken_people] == ["other"]


OBSERVE = ModelPolicy(rollback=RollbackPolicy(mode="observe"))


def test_observe_mode_says_what_enforce_would_do_once_and_sends_nothing(signer: Signer) -> None:
    first = breach("v2")
    enforced = decide(live_v2(), first, signer)
    out = decide(live_v2(), first, signer, OBSERVE)
    assert out.command is None and out.state.in_flight is None
    said = out.decision
    assert said.action == "hold" and codes(said)[-1] == "observe_mode"
    # the same level, target, reasons and timings enforce decided, said and not done
    assert (said.level, said.target_system_version) == (
        enforced.decision.level,
        enforced.decision.target_system_version,
    )
    assert codes(said)[:-1] == codes(enforced.decision)
    assert said.metrics == enforced.decision.metrics
    # The next window's breach of the version decides nothing more...
    again = decide(out.state, breach("v2"), signer, OBSERVE)
    assert again.decisions == [] and again.command is None
    # The same live deployment recorded once more (a deployer key rotated) is no new one...
    again_recorded = apply_manifest(out.state, manifest("v2", status="live", ts=T0))
    assert decide(again_recorded, breach("v2"), signer, OBSERVE).decisions == []
    # ...but deployed live again after another version: a new incident, said again.
    other = apply_manifest(out.state, manifest("v3", status="live", ts=T0))
    back = apply_manifest(other, manifest("v2", status="live", ts=T0 + timedelta(minutes=1)))
    anew = decide(back, breach("v2"), signer, OBSERVE, now=T0 + timedelta(minutes=2))
    assert codes(anew.decision)[-1] == "observe_mode"
    # A person's own request still acts in observe mode.
    asked = approvals.request(live_v2(), req(), ALICE, ctx(signer, OBSERVE))
    assert asked.command is not None and asked.decision.action == "rollback"


def test_a_breach_read_before_its_live_manifest_is_decided_when_the_manifest_comes(
    signer: Signer,
) -> None:
    """A worker taking a dead one's models over reads their breaches and deployments backlogs
    at once (two agents): the bad version's breach came first and was held as unknown_model,
    and the incident lost its rollback (tests/decider/test_scale_out.py, 2 runs in 7)."""
    c = ctx(signer)
    early = breach("v2", ts=T0 - timedelta(minutes=1))
    held = breaches.decide(ModelState(model_id="m"), early, c)
    assert held is not None and codes(held.decisions[0])[-1] == "unknown_model"
    assert held.state.early == {"v2": early}
    # The deployments come: v1 known good (nothing for the v2 breach), then v2 live since
    # before the breach.
    good = manifest("v1", status="known_good", ts=T0 - timedelta(hours=2))
    state = apply_manifest(held.state, good)
    assert breaches.deployed_late(held.state, state, good) == (state, None)
    bad = manifest("v2", status="live", ts=T0 - timedelta(minutes=5))
    rest, late = breaches.deployed_late(state, apply_manifest(state, bad), bad)
    assert late == early and rest.early == {}
    again = breaches.decide(rest, late, c, late=True)
    assert again is not None
    (decision,) = again.decisions
    assert decision.action == "rollback" and again.command is not None
    assert decision.event_id != held.decisions[0].event_id  # a decision of its own
    assert breaches.decide(again.state, early, c) is None  # a redelivery still decides nothing


def test_a_breach_older_than_the_version_going_live_is_not_decided_again(
    signer: Signer,
) -> None:
    """A canary's breach of v2 before v2 went live was about the canary: it is dropped."""
    canary = breach("v2", ts=T0 - timedelta(minutes=10))
    held = breaches.decide(ModelState(model_id="m"), canary, ctx(signer))
    assert held is not None
    live = manifest("v2", status="live", ts=T0 - timedelta(minutes=5))
    rest, late = breaches.deployed_late(held.state, apply_manifest(held.state, live), live)
    assert late is None and rest.early == {}


def test_an_early_breach_of_a_version_restored_by_a_rollback_is_not_decided_later(
    signer: Signer,
) -> None:
    """Review finding: v1's breach read while the rollback to v1 was in flight stayed in
    ``early``; a day later an unrelated manifest decided it and rolled v1 back to v0."""
    c = ctx(signer)
    state = state_with(
        manifest("v0", status="known_good", ts=T0 - timedelta(days=3)),
        manifest("v1", status="known_good", ts=T0 - timedelta(days=2)),
        manifest("v2", status="live", ts=T0 - timedelta(minutes=5)),
    )
    out = decide(state, breach("v2"), signer)
    assert out.command is not None
    stray = decide(out.state, breach("v1"), signer)  # v1 is not live yet: held, kept early
    assert "v1" in stray.state.early
    restored = apply_ack(stray.state, applied(out, T0 + timedelta(seconds=1)), c)
    assert restored.live is not None and restored.live.model_version == "v1"
    assert "v1" not in restored.early
    later = manifest("v3", status="candidate", ts=T0 + timedelta(days=1))
    assert breaches.deployed_late(restored, apply_manifest(restored, later), later)[1] is None


def test_a_recommendation_is_dropped_when_another_version_goes_live(signer: Signer) -> None:
    """Review finding: a recommendation about v2 outlived v3's deployment, silenced v3's
    breaches for an hour and, confirmed, would have rolled the fix back."""
    c = ctx(signer, ModelPolicy(rollback=RollbackPolicy(mode="recommend")))
    out = breaches.decide(live_v2(), breach("v2"), c)
    assert out is not None and len(out.state.pending) == 1
    pending_id = out.decision.event_id
    fixed = apply_manifest(out.state, manifest("v3", status="live", ts=T0))
    assert fixed.pending == ()
    confirmed = approvals.approve(fixed, approval(pending_id, "ml_lead"), MIKE, c)
    assert confirmed.command is None and codes(confirmed.decisions[0]) == ["approval_rejected"]
    # ...and a recommendation approved after a redeploy outside the decider's sight is
    # refused by its own record of what was live.
    moved = out.state.model_copy(update={"live": fixed.live})
    late = approvals.approve(moved, approval(pending_id, "ml_lead"), MIKE, c)
    assert late.command is None and "is live now" in late.decisions[0].reasons[0].detail


# ------------------------------------------------------------------ operating a model


def test_a_paused_model_records_its_breaches_and_decides_nothing_until_resumed(
    signer: Signer,
) -> None:
    c = ctx(signer)
    paused = approvals.request(live_v2(), req(action="pause", reason="maintenance"), ALICE, c)
    (said,) = paused.decisions
    assert said.action == "hold" and codes(said) == ["paused"]
    assert "alice (ml_engineer) paused" in said.reasons[0].detail
    assert paused.state.paused is not None and paused.state.paused.reason == "maintenance"
    first = decide(paused.state, breach("v2"), signer)
    assert codes(first.decision)[-1] == "paused" and first.command is None
    again = decide(first.state, breach("v2"), signer)
    assert again.decisions == [] and again.command is None  # once per version: ledgered only
    resumed = approvals.request(again.state, req(action="resume", reason="done"), ALICE, c)
    assert codes(resumed.decisions[0]) == ["resumed"] and resumed.state.paused is None
    after = decide(resumed.state, breach("v2"), signer)
    assert after.decision.action == "rollback" and after.command is not None


def test_only_the_operate_roles_may_pause_or_switch_a_mode(signer: Signer) -> None:
    auditor = Identity("ann", "auditor")
    out = approvals.request(
        live_v2(), req(role="auditor", action="pause", reason="x"), auditor, ctx(signer)
    )
    assert codes(out.decisions[0]) == ["not_permitted"] and out.state.paused is None


def test_recommend_mode_decides_and_waits_for_one_person_to_confirm(signer: Signer) -> None:
    c = ctx(signer)
    switched = approvals.request(
        live_v2(), req(action="set_mode", mode="recommend", reason="trial"), ALICE, c
    )
    assert codes(switched.decisions[0]) == ["mode_set"] and switched.state.mode == "recommend"
    assert "enforce → recommend" in switched.decisions[0].reasons[0].detail
    out = decide(switched.state, breach("v2"), signer)
    held = out.decision
    assert held.action == "hold" and out.command is None
    assert codes(held)[-2:] == ["recommend_mode", "awaiting_approval"]
    (pending,) = out.state.pending
    assert pending.any_of and "ml_engineer" in pending.required_roles
    # A second breach meanwhile adds nothing: one recommendation at a time.
    assert decide(out.state, breach("v2"), signer).decisions == []
    # One person of the operate roles confirms it: the rollback goes out.
    confirmed = approvals.approve(out.state, approval(held.event_id, "ml_lead"), MIKE, c)
    assert confirmed.command is not None and confirmed.decisions[0].action == "rollback"
    assert confirmed.decisions[0].level == 1


def test_a_mode_switched_at_run_time_wins_over_the_policy(signer: Signer) -> None:
    c = ctx(signer)
    observed = approvals.request(
        live_v2(), req(action="set_mode", mode="observe", reason="watch first"), ALICE, c
    )
    out = decide(observed.state, breach("v2"), signer)
    assert codes(out.decision)[-1] == "observe_mode" and out.command is None
