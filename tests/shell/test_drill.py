"""`rollguard drill` against a running `rollguard up` on the embedded default, as an operator
runs it: every scenario passes and prints its figures, each run is a trusted DrillRun in the
ledger; with a drill model paused, its drill fails with the decider's reason (exit 1)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rollguard.drills import SCENARIOS
from tests.api.conftest import ROOT, Up, start_up, stop_up
from tests.conftest import HEAVY, scaled

pytestmark = [pytest.mark.broker, HEAVY, pytest.mark.timeout(scaled(400))]


@pytest.fixture
def drilled_up(tmp_path: Path) -> Iterator[Up]:
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(ROOT / "policies" / "default.yaml", policies / "00-default.yaml")
    short = {"rollback": {"verification_s": 3.0, "verification_min_requests": 50}}
    models = {s.model_id: short for s in SCENARIOS.values()}
    # its target must have answered a health check lately: a failed one is "not ready"
    ready = {"rollback": {**short["rollback"], "target_ready_within_s": 60.0}}
    models[SCENARIOS["target_not_ready"].model_id] = ready
    overrides = {"version": 1, "models": models}
    (policies / "99-drills.yaml").write_text(yaml.safe_dump(overrides))
    running = start_up(tmp_path / "state", ROLLGUARD_POLICY_PATH=str(policies))
    try:
        yield running
    finally:
        stop_up(running)


def test_every_scenario_passes_and_a_paused_drill_model_fails_with_the_reason(
    drilled_up: Up,
) -> None:
    up = drilled_up
    done = up.cli("drill", "--timeout", "120")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    for name in SCENARIOS:
        assert f"{name:<18} passed" in done.stdout, done.stdout
    assert done.stdout.count("MTTD ") == len(SCENARIOS)  # each printed its figures
    assert "drill: error_spike: breach after" in done.stderr  # progress while it runs

    # Each run recorded, signed by the deployer key, trusted; never a page (drill models).
    shown = up.cli("ledger", "show", "--json")
    runs = [json.loads(line) for line in shown.stdout.splitlines() if '"DrillRun"' in line]
    assert sorted(r["payload"]["scenario"] for r in runs) == sorted(SCENARIOS)
    assert all(r["payload"]["passed"] and r["provenance"]["trusted"] for r in runs)
    rolled_back = [r for r in runs if r["payload"]["scenario"] != "target_not_ready"]
    assert all(r["payload"]["figures"]["time_to_verified_s"] > 0 for r in rolled_back)
    escalated = next(r for r in runs if r["payload"]["scenario"] == "target_not_ready")
    assert escalated["payload"]["command_id"] is None  # a person decides, nothing was sent

    # A drill model paused by a person: the decider holds, and the drill says so.
    token = up.token("ada", "sre")
    model = SCENARIOS["error_spike"].model_id
    paused = up.cli(
        "pause", model, "--as", "sre", "--reason", "drill of a pause", "--timeout", "90",
        ROLLGUARD_TOKEN=token,
    )  # fmt: skip
    assert paused.returncode == 0, paused.stdout + paused.stderr
    failed = up.cli("drill", "--scenario", "error_spike", "--timeout", "20", "--json")
    assert failed.returncode == 1, failed.stdout + failed.stderr[-2000:]
    (result,) = [json.loads(line) for line in failed.stdout.splitlines()]
    assert not result["passed"] and "no rollback decided" in result["reason"]
    assert "paused" in result["reason"], result
