from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from rollguard import events as ev
from rollguard.policy import ModelPolicy
from rollguard.signing import (
    Signer,
    generate_keypair,
    load_signer,
    load_trusted_keys,
    verify_command,
)
from services.decider.decisions import (
    ModelState,
    apply_ack,
    apply_manifest,
    decide,
    rollback_target,
)
from tests.factories import breach, manifest

POLICY = ModelPolicy()


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    generate_keypair(tmp_path / "k.pem", tmp_path / "trusted")
    return load_signer(tmp_path / "k.pem")


def state_with(*manifests: ev.SystemManifest) -> ModelState:
    state = ModelState(model_id="m")
    for m in manifests:
        state = apply_manifest(state, m)
    return state


def codes(decision: ev.Decision) -> list[str]:
    return [r.code for r in decision.reasons]


def test_level_one_when_only_the_model_differs(signer: Signer, tmp_path: Path) -> None:
    state = state_with(manifest("v1", status="known_good"), manifest("v2", status="live"))
    out = decide(state, breach("v2"), POLICY, ev.utcnow(), signer)
    assert out is not None and out.command is not None
    assert (out.decision.action, out.decision.level) == ("rollback", 1)
    assert out.decision.command_id == out.command.command_id
    assert out.command.to_manifest.system_version == "sys-v1"
    assert out.command.from_manifest.system_version == "sys-v2"
    assert out.state.in_flight is not None
    assert verify_command(out.command, load_trusted_keys(tmp_path / "trusted"), ev.utcnow()).ok
    assert out.decision.metrics["mttd_s"] >= 0


def test_model_only_rollback_onto_another_feature_pipeline_is_level_two(signer: Signer) -> None:
    state = state_with(
        manifest("v1", status="known_good", feature_pipeline="fp-1"),
        manifest("v2", status="live", feature_pipeline="fp-2"),
    )
    out = decide(state, breach("v2"), POLICY, ev.utcnow(), signer)
    assert out is not None and out.command is not None
    assert out.decision.level == 2 and out.command.level == 2
    assert "model_only_incompatible" in codes(out.decision)
    assert "feature_pipeline fp-2 live vs fp-1 target" in out.decision.reasons[-1].detail


@pytest.mark.parametrize(
    ("state", "brch", "action", "code"),
    [
        (ModelState(model_id="m"), breach("v2"), "hold", "unknown_model"),
        (
            state_with(manifest("v1", status="known_good"), manifest("v2")),
            breach("v1"),
            "hold",
            "not_live_version",
        ),
        (
            state_with(manifest("v1", status="known_good"), manifest("v2")),
            breach("v2", tier="delayed"),
            "investigate",
            "tier_not_automatic",
        ),
        (
            state_with(manifest("v2", status="live")),
            breach("v2"),
            "investigate",
            "no_known_good_target",
        ),
        (
            state_with(manifest("v2", status="known_good")),
            breach("v2"),
            "investigate",
            "no_known_good_target",
        ),
    ],
)
def test_every_non_rollback_is_a_decision_with_its_reason(
    signer: Signer, state: ModelState, brch: ev.Breach, action: str, code: str
) -> None:
    out = decide(state, brch, POLICY, ev.utcnow(), signer)
    assert out is not None and out.command is None
    assert out.decision.action == action
    assert codes(out.decision) == ["breach", code]


def test_in_flight_then_cooldown_then_rollback_again(signer: Signer) -> None:
    state = state_with(manifest("v1", status="known_good"), manifest("v2"))
    now = ev.utcnow()
    first = decide(state, breach("v2"), POLICY, now, signer)
    assert first is not None and first.command is not None
    second = decide(first.state, breach("v2"), POLICY, now, signer)
    assert second is not None and codes(second.decision)[-1] == "rollback_in_flight"

    ack = ev.CommandAck(
        model_id="m",
        model_version="v2",
        command_id=first.command.command_id,
        status="applied",
        executor_id="x",
        ts=now,
    )
    cooling = apply_ack(second.state, ack, POLICY)
    assert cooling.in_flight is None
    assert cooling.cooldown_until == now + timedelta(seconds=POLICY.rollback.cooldown_s)
    # v2 goes live again by hand within the cooldown: the next breach holds
    redeployed = apply_manifest(cooling, manifest("v2"))
    held = decide(redeployed, breach("v2"), POLICY, now + timedelta(seconds=10), signer)
    assert held is not None and codes(held.decision)[-1] == "cooldown"
    after = decide(
        redeployed, breach("v2"), POLICY, cooling.cooldown_until + timedelta(seconds=1), signer
    )
    assert after is not None and after.decision.action == "rollback"


def test_failed_ack_ends_the_flight_without_cooldown(signer: Signer) -> None:
    state = state_with(manifest("v1", status="known_good"), manifest("v2"))
    out = decide(state, breach("v2"), POLICY, ev.utcnow(), signer)
    assert out is not None and out.command is not None
    ack = ev.CommandAck(
        model_id="m",
        model_version="v2",
        command_id=out.command.command_id,
        status="failed",
        executor_id="x",
    )
    after = apply_ack(out.state, ack, POLICY)
    assert after.in_flight is None and after.cooldown_until is None
    other = ack.model_copy(update={"command_id": "someone-else"})
    assert apply_ack(out.state, other, POLICY) == out.state


def test_duplicate_breach_is_ignored(signer: Signer) -> None:
    state = state_with(manifest("v1", status="known_good"), manifest("v2"))
    b = breach("v2")
    out = decide(state, b, POLICY, ev.utcnow(), signer)
    assert out is not None
    assert decide(out.state, b, POLICY, ev.utcnow(), signer) is None


def test_target_is_the_newest_known_good_other_than_live_and_never_rolled_back() -> None:
    state = state_with(
        manifest("v1", status="known_good"),
        manifest("v2", status="known_good"),
        manifest("v3", status="live"),
    )
    target = rollback_target(state)
    assert target is not None and target.model_version == "v2"
    state = apply_manifest(state, manifest("v2", status="rolled_back"))
    target = rollback_target(state)
    assert target is not None and target.model_version == "v1"
    assert state.live is not None and state.live.model_version == "v3"
