"""Issue 16, "CLI that answers": against a running `rollguard up`, as an on-call engineer uses
it from another shell. `rollback`, `unlock` and `approve` print the decider's answer in words
and exit by it (0 taken / 6 refused / 7 timed out); `--wait applied` blocks until the
executor applied the rollback; `status` lists what the decider knows; the ids printed are the
ones `incident show` takes. Before, every request printed "requested … see
rollguard.decisions" and exited 0, refused or not."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HEAVY, scaled
from tests.shell.test_lifecycle import _cli, _launch, _read, _until

pytestmark = [
    HEAVY,
    pytest.mark.timeout(scaled(240)),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="runs `rollguard up`"),
]


def cli(
    state: Path, *args: str, token: str | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    return _cli(state, *args, **extra, **({"ROLLGUARD_TOKEN": token} if token else {}))


def deploy(state: Path, system: str, model: str, status: str) -> None:
    done = cli(
        state,
        *("deploy", "record", "--model-id", "m", "--system-version", system, "--model", model),
        *("--feature-pipeline", "fp", "--config", "c", "--infra", "i", "--status", status),
    )
    assert done.returncode == 0, done.stderr


def test_requests_answer_in_words_and_exit_codes_against_a_running_up(tmp_path: Path) -> None:
    state = tmp_path / "state"
    up = _launch(["up"], state)
    try:
        _until(lambda: '"bootstrap"' in _read(state / "broker.json"), "up never started")
        deploy(state, "s1", "v1", "known_good")
        deploy(state, "s2", "v2", "live")
        made = cli(state, "tokens", "create", "--name", "ann", "--role", "ml_engineer")
        token = made.stdout.strip().splitlines()[-1]

        def listed() -> bool:
            shown = cli(state, "status")
            return "m: live s2 (v2), rollback target s1" in shown.stdout

        _until(listed, "status never showed m's live version and target", 60)
        as_json = json.loads(cli(state, "status", "m", "--json").stdout)
        assert [s["model_id"] for s in as_json] == ["m"]
        assert as_json[0]["rollback_target"]["system_version"] == "s1"
        observing = tmp_path / "observe.yaml"
        observing.write_text("models:\n  m:\n    rollback:\n      mode: observe\n")
        seen = cli(state, "status", "m", ROLLGUARD_POLICY_PATH=str(observing))
        assert seen.stdout.strip().endswith("; mode observe"), seen.stdout + seen.stderr
        unknown = cli(state, "status", "ghost")
        assert unknown.returncode == 2 and "knows no deployment of ghost" in unknown.stderr

        refused = cli(state, "rollback", "ghost", "--as", "ml_engineer", token=token)
        assert refused.returncode == 6, refused.stdout + refused.stderr
        assert "hold (ghost)" in refused.stdout
        assert "unknown_model: no live manifest is known for this model" in refused.stdout
        assert refused.stderr.strip().splitlines()[-1] == "rollguard: refused"

        applied = cli(
            state,
            *("rollback", "m", "--as", "ml_engineer", "--reason", "bad v2", "--wait", "applied"),
            token=token,
        )
        assert applied.returncode == 0, applied.stdout + applied.stderr
        said = applied.stdout
        found = re.search(r"^decision ([0-9a-f]{32}): rollback level 1 to s1 \(m\)$", said, re.M)
        assert found, said
        assert "manual_request: ann (ml_engineer): bad v2" in said
        assert re.search(r"^applied \(.+\): .*live pointer s2 → s1", said, re.M), said
        # The id printed is the one incident show takes.
        shown = cli(state, "incident", "show", found.group(1))
        assert shown.returncode == 0, shown.stderr
        assert "rollback asked by ann" in shown.stdout.splitlines()[0]
        # ...and every reason is there in words, not only its code (incident and ledger).
        assert "manual_request: ann (ml_engineer): bad v2" in shown.stdout
        ledger = cli(state, "ledger", "show")
        assert "unknown_model: no live manifest is known for this model" in ledger.stdout

        again = cli(state, "rollback", "m", "--as", "ml_engineer", "--json", token=token)
        assert again.returncode == 6, again.stdout + again.stderr
        answer = json.loads(again.stdout)
        assert answer["outcome"] == "refused"
        codes = {r["code"] for r in answer["decision"]["reasons"]}
        assert codes & {"rollback_in_flight", "no_known_good_target"}, answer
    finally:
        up.stop(2)  # SIGINT, as Ctrl-C
    assert up.proc.returncode == 130
