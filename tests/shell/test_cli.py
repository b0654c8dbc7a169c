"""The CLI as users run it: a subprocess, one line per user error, never a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def rollguard(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROLLGUARD_")}
    return subprocess.run(
        [sys.executable, "-m", "rollguard_shell.cli", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        cwd=cwd,
        timeout=60,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["run", "nosuch"], "invalid choice: 'nosuch'"),
        (["demo", "--rate", "fast"], "invalid float value: 'fast'"),
        (["ledger"], "required: action"),
    ],
)
def test_bad_arguments_get_one_line(args: list[str], expected: str) -> None:
    result = rollguard(*args)
    assert result.returncode == 2
    assert expected in one_line_error(result)


def test_unreachable_broker_is_one_line() -> None:
    result = rollguard(
        "topics",
        "create",
        env={"ROLLGUARD_KAFKA_BOOTSTRAP": "127.0.0.1:1", "ROLLGUARD_CONNECT_TIMEOUT_S": "1"},
    )
    assert result.returncode == 3
    assert "no Kafka broker answered at 127.0.0.1:1" in one_line_error(result)


def test_run_without_bootstrap_says_what_to_set() -> None:
    result = rollguard("run", "detector")
    assert result.returncode == 3  # no broker, like an unreachable one
    assert "ROLLGUARD_KAFKA_BOOTSTRAP" in one_line_error(result)


def test_bad_setting_names_the_variable() -> None:
    result = rollguard("schemas", "export", "--check", env={"ROLLGUARD_PARTITIONS": "many"})
    assert result.returncode == 2
    assert "ROLLGUARD_PARTITIONS" in one_line_error(result)


def test_schemas_check_passes_on_the_repo_and_fails_when_stale(tmp_path: Path) -> None:
    assert rollguard("schemas", "export", "--check").returncode == 0
    assert rollguard("schemas", "export", "--dir", str(tmp_path)).returncode == 0
    (tmp_path / "Decision.v1.json").write_text("{}")
    stale = rollguard("schemas", "export", "--check", "--dir", str(tmp_path))
    assert stale.returncode == 4  # the check answered no
    assert "Decision.v1.json" in one_line_error(stale)


def test_keys_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    env = {"ROLLGUARD_STATE_DIR": str(tmp_path)}
    first = rollguard("keys", "generate", env=env)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "keys" / "signing.pem").stat().st_mode & 0o777 == 0o600
    assert len(list((tmp_path / "keys" / "trusted" / "decider").glob("*.pub"))) == 1
    again = rollguard("keys", "generate", env=env)
    assert again.returncode == 2
    assert "exists" in one_line_error(again)


@pytest.mark.parametrize(
    "args",
    [
        ["ledger", "verify"],
        ["ledger", "show"],
        ["ledger", "export"],
        ["incident", "show", "someid"],
    ],
)
def test_read_only_ledger_commands_never_create_a_ledger(tmp_path: Path, args: list[str]) -> None:
    """A mistyped state dir used to create an empty database that verified "ok: 0 entries"."""
    missing = tmp_path / "typo"
    result = rollguard(*args, env={"ROLLGUARD_STATE_DIR": str(missing)})
    assert result.returncode == 2
    assert f"no ledger at {missing / 'ledger.db'}" in one_line_error(result)
    assert not missing.exists()  # nothing created on the way


def test_verify_of_a_database_without_a_ledger_table_is_an_error(tmp_path: Path) -> None:
    import sqlite3

    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    result = rollguard("ledger", "verify", "--url", f"sqlite:///{other}")
    assert result.returncode == 2
    assert "no ledger table 'ledger_entries'" in one_line_error(result)


def test_a_misspelt_setting_is_an_error_naming_the_nearest_one(tmp_path: Path) -> None:
    """It used to be ignored: ROLLGUARD_KAFKA_BOOSTRAP=... started a private embedded broker."""
    result = rollguard(
        "ledger",
        "verify",
        env={"ROLLGUARD_KAFKA_BOOSTRAP": "kafka:9092", "ROLLGUARD_STATE_DIR": str(tmp_path)},
    )
    assert result.returncode == 2
    assert (
        "unknown setting ROLLGUARD_KAFKA_BOOSTRAP (did you mean ROLLGUARD_KAFKA_BOOTSTRAP?)"
        in one_line_error(result)
    )
    # Nested settings and what the command applier gives its scripts are not unknown.
    fine = rollguard(
        "ledger",
        "verify",
        env={
            "ROLLGUARD_EXECUTOR_WEBHOOK__SECRET": "s",
            "ROLLGUARD_COMMAND_ID": "c",
            "ROLLGUARD_STATE_DIR": str(tmp_path),
        },
    )
    assert "unknown setting" not in fine.stderr


def test_every_variable_the_docs_name_is_a_setting() -> None:
    import re

    from rollguard_shell.environment import known_variables

    names, prefixes = known_variables()
    texts = [ROOT / "README.md", ROOT / "docker-compose.yml", *ROOT.glob("docs/*.md")]
    texts += list(ROOT.glob("deploy/**/*.yaml"))
    named = {m for p in texts for m in re.findall(r"ROLLGUARD_[A-Z0-9_]*[A-Z0-9]", p.read_text())}
    unknown = {
        n
        for n in named
        if n not in names
        and not n.startswith(tuple(prefixes))
        and not any(
            k.startswith(n + "_")
            for k in names  # a prefix named in prose: ROLLGUARD_DECIDER
        )
    }
    assert unknown == set()


def test_version_is_one_line_and_exits_0() -> None:
    result = rollguard("--version")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"rollguard \d+\.\d+\.\d+\S*\n", result.stdout), result.stdout


def test_the_reporting_commands_answer_in_json_when_asked(tmp_path: Path) -> None:
    """--json on every command that reports: one JSON document on stdout, nothing else."""
    import json

    env = {"ROLLGUARD_STATE_DIR": str(tmp_path / "state")}
    made = rollguard("keys", "generate", "--role", "detector", env=env)
    assert made.returncode == 0, made.stderr
    keys = json.loads(rollguard("keys", "list", "--json", env=env).stdout)
    assert [k["role"] for k in keys] == ["detector"] and keys[0]["private_key"]
    lint = json.loads(rollguard("policy", "lint", "policies", "--json").stdout)
    assert lint["ok"] is True and lint["defaults"]["rollback"]["mode"] == "enforce"
    explained = json.loads(rollguard("policy", "explain", "m", "--rate", "200", "--json").stdout)
    assert explained["window_s"] == 1.0
    assert {d["instance"] for d in explained["detectors"]} >= {"error_rate", "prediction_ks"}
