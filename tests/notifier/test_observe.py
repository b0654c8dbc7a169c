"""Observe mode (issue 16): the decider's "would have rolled back" is posted to the team's
channels whatever `notify_holds` says, and pages nobody: nothing was done, nothing to act on."""

from __future__ import annotations

from pathlib import Path

from rollguard.policy import ModelPolicy, RollbackPolicy
from rollguard.signing import generate_keypair, load_signer
from rollguard_services.decider import breaches
from rollguard_services.notifier.channels.pagerduty import PagerDutyChannel
from rollguard_services.notifier.channels.slack import SlackChannel
from rollguard_services.notifier.notifications import from_decision
from tests.decider.test_decisions import T0, ctx, live_v2
from tests.factories import breach


def test_a_would_be_rollback_is_posted_never_paged(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k.pem", tmp_path / "trusted")
    signer = load_signer(tmp_path / "k.pem")
    b = breach("v2")
    policy = ModelPolicy(rollback=RollbackPolicy(mode="observe"))
    out = breaches.decide(live_v2(), b, ctx(signer, policy, T0))
    assert out is not None and out.command is None
    told = from_decision(out.decision, [b], notify_holds=False)
    assert told is not None and told.kind == "would_roll_back"
    assert "Would roll back m v2 to sys-v1 (level 1, immediate tier)" in told.summary
    assert "nothing was done" in told.summary
    posted = SlackChannel("http://127.0.0.1:1/hook", "http://rollguard.example/incidents", 0.0)
    assert "Would roll back (observe mode)" in str(posted.render(told))
    paging = PagerDutyChannel("key", "http://127.0.0.1:1/enqueue", "http://x/incidents")
    assert paging.render(told) is None
    # An ordinary hold is still not told unless asked.
    held = breaches.decide(out.state, breach("v9"), ctx(signer, ModelPolicy(), T0))
    assert held is not None and from_decision(held.decision, [], notify_holds=False) is None


def test_a_recommended_rollback_is_posted_and_paged_with_how_to_confirm_it(
    tmp_path: Path,
) -> None:
    """Recommend mode: a person must act, so the team hears it where the tier's route says,
    with the command (or the dashboard) that confirms it."""
    generate_keypair(tmp_path / "k.pem", tmp_path / "trusted")
    signer = load_signer(tmp_path / "k.pem")
    b = breach("v2")
    policy = ModelPolicy(rollback=RollbackPolicy(mode="recommend"))
    out = breaches.decide(live_v2(), b, ctx(signer, policy, T0))
    assert out is not None and out.command is None
    told = from_decision(out.decision, [b], notify_holds=False)
    assert told is not None and told.kind == "recommended"
    assert f"rollguard approve {out.decision.event_id} --as ROLE" in told.summary
    posted = SlackChannel("http://127.0.0.1:1/hook", "http://rollguard.example/incidents", 0.0)
    assert "Rollback recommended" in str(posted.render(told))
    paging = PagerDutyChannel("key", "http://127.0.0.1:1/enqueue", "http://x/incidents")
    assert paging.render(told) is not None
