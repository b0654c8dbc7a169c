"""`rollguard policy explain`: what the default policy sees from a few events a minute to
100,000 a second (services/detector/explain.py), through the CLI as a user runs it."""

from __future__ import annotations

import pytest

from rollguard.policy import ModelPolicy, WindowPolicy, resolve_policy
from rollguard_services.detector.explain import advice, explain, window
from rollguard_services.detector.kinds import config_classes
from tests.shell.test_cli import one_line_error, rollguard


def _default() -> ModelPolicy:
    """The built-in policy, its detectors typed by their kinds (as the CLI loads it)."""
    return resolve_policy(None, kinds=config_classes()).defaults


def test_a_few_events_a_minute_are_inconclusive_and_it_says_which_window_would_do() -> None:
    policy = _default()
    rows = explain(policy, rate_per_s=6 / 60)
    assert all(not r.conclusive and r.delay_s is None for r in rows if r.min_events)
    said = advice(policy, 6 / 60, rows)
    assert said is not None and "window.seconds to 2000" in said  # 200 events at 6 a minute
    # With that window, KS and PSI conclude, and a breach takes k windows of it.
    wide = policy.model_copy(update={"window": WindowPolicy(seconds=2000)})
    (ks,) = [r for r in explain(wide, 6 / 60) if r.kind == "ks"]
    assert ks.conclusive and ks.smallest.startswith("KS D ")
    assert ks.delay_s == pytest.approx(2 * 2000 + wide.window.close_grace_s)
    # At 3 a minute even the longest window (3600 s, 180 events) is short for KS and PSI.
    slower = advice(policy, 3 / 60, explain(policy, 3 / 60))
    assert slower is not None and "holds 180 events" in slower
    assert "min_events to 180 or less for prediction_ks, prediction_psi" in slower


def test_at_100k_events_a_second_the_effect_floor_is_what_limits() -> None:
    policy = _default()
    seconds, n = window(policy, 100_000)
    assert (seconds, n) == (1.0, 100_000)
    rows = {r.kind: r for r in explain(policy, 100_000)}
    assert rows["ks"].smallest.startswith("KS D 0.050")  # min_effect, not noise
    assert rows["psi"].smallest == "PSI 0.250"
    assert rows["error_rate"].delay_s == pytest.approx(1.0 + policy.window.close_grace_s)
    # Closing windows by count as well shortens them at high rates.
    assert window(policy, 100_000, window_events=5_000) == (0.05, 5_000)


def test_policy_explain_through_the_cli() -> None:
    slow = rollguard("policy", "explain", "m", "--rate", "0.05")
    assert slow.returncode == 0, slow.stderr
    assert "inconclusive (needs 200 events)" in slow.stdout
    assert "Even the longest window (3600 s) holds 180 events" in slow.stdout
    busy = rollguard("policy", "explain", "m", "--rate", "100000")
    assert busy.returncode == 0 and "a mean shift of about 0.13 sigma" in busy.stdout
    bad = rollguard("policy", "explain", "m", "--rate", "0")
    assert bad.returncode == 2 and "more than 0" in one_line_error(bad)
