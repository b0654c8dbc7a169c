"""`rollguard policy explain`: what the default policy sees from a few events a minute to
100,000 a second (services/detector/explain.py), through the CLI as a user runs it."""

from __future__ import annotations

import pytest

from rollguard.policy import ModelPolicy, resolve_policy
from rollguard_services.detector.explain import advice, explain, window
from rollguard_services.detector.kinds import config_classes
from tests.shell.test_cli import one_line_error, rollguard


def _default() -> ModelPolicy:
    """The built-in policy, its detectors typed by their kinds (as the CLI loads it)."""
    return resolve_policy(None, kinds=config_classes()).defaults


def test_a_few_events_a_minute_conclude_on_pooled_windows_without_tuning() -> None:
    policy = _default()
    rows = {r.kind: r for r in explain(policy, rate_per_s=6 / 60)}
    # 200 events at 6 a minute: KS and PSI are judged on 2,000 s of pooled windows.
    ks, psi, errors = rows["ks"], rows["psi"], rows["error_rate"]
    assert ks.conclusive and ks.window_s == 2000 and ks.smallest.startswith("KS D ")
    assert psi.conclusive and psi.window_s == 2000
    assert ks.delay_s == pytest.approx(2 * 2000 + policy.window.close_grace_s)
    assert errors.conclusive and errors.window_s == 500  # 50 requests
    assert advice(policy, 6 / 60, list(rows.values())) is None  # nothing to tune
    # At 3 a minute even window.max_seconds (3600 s, 180 events) is short for KS and PSI.
    slower = advice(policy, 3 / 60, explain(policy, 3 / 60))
    assert slower is not None and "hold 180 events, 200 needed" in slower
    assert "window.max_seconds to 4000" in slower
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
    assert "pooled over window.max_seconds (3600 s) the windows hold 180 events" in slow.stdout
    busy = rollguard("policy", "explain", "m", "--rate", "100000")
    assert busy.returncode == 0 and "a mean shift of about 0.13 sigma" in busy.stdout
    bad = rollguard("policy", "explain", "m", "--rate", "0")
    assert bad.returncode == 2 and "more than 0" in one_line_error(bad)
