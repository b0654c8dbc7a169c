"""What people do around a rollback, through the CLI and the broker: record deployments,
check readiness, ask for rollbacks, approve them."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import yaml

from rollguard import topics
from rollguard.events import Decision, HealthCheckEvent, RollbackCommand
from rollguard.policy import PolicySource
from rollguard.settings import RollguardSettings
from rollguard.signing import load_signer
from rollguard_services.decider.app import Decider
from rollguard_services.decider.settings import DeciderSettings
from rollguard_services.detector.settings import DetectorSettings
from tests.conftest import TopicReader, until
from tests.factories import manifest
from tests.shell.test_cli import one_line_error, rollguard


def env_of(settings: RollguardSettings, token: str | None = None) -> dict[str, str]:
    env = {
        "ROLLGUARD_KAFKA_BOOTSTRAP": str(settings.kafka_bootstrap),
        "ROLLGUARD_TOPIC_PREFIX": settings.topic_prefix,
        "ROLLGUARD_STATE_DIR": str(settings.state_dir),
        "ROLLGUARD_ENABLE_IDEMPOTENCE": str(settings.enable_idempotence).lower(),
        "ROLLGUARD_CONNECT_TIMEOUT_S": "10",
    }
    if token:
        env["ROLLGUARD_TOKEN"] = token
    return env


def test_policy_lint_prints_the_effective_policy_and_names_bad_lines(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"models": {"fraud": {"rollback": {"cooldown_s": 30}}}}))
    ok = rollguard("policy", "lint", str(good))
    assert ok.returncode == 0, ok.stderr
    shown = yaml.safe_load(ok.stdout)
    assert shown["model fraud"]["rollback"]["cooldown_s"] == 30
    assert shown["defaults"]["rollback"]["cooldown_s"] == 300

    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults:\n  rollback:\n    level: sideways\n")
    result = rollguard("policy", "lint", str(bad))
    assert result.returncode == 2
    assert (
        f"{bad}:3: defaults.rollback.level: Input should be 'auto' or 'system'"
        in one_line_error(result)
    )
    # Detector entries are checked against their kind: a misspelt field of a KS detector.
    typo = tmp_path / "typo.yaml"
    typo.write_text("defaults:\n  detectors:\n    drift:\n      kind: ks\n      alpah: 0.05\n")
    result = rollguard("policy", "lint", str(typo))
    assert result.returncode == 2
    assert f"{typo}:5: defaults.detectors.drift.ks.alpah: Extra inputs are not permitted" in (
        one_line_error(result)
    )


def test_policy_source_reloads_and_keeps_the_last_good_policy(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"defaults": {"rollback": {"cooldown_s": 10}}}))
    source = PolicySource(path)
    assert not source.changed()
    path.write_text(yaml.safe_dump({"defaults": {"rollback": {"cooldown_s": 20}}}))
    import os

    os.utime(path, (1, 1))  # a different mtime, whatever the clock resolution
    assert source.changed() and source.reload()
    assert source.for_model("m").rollback.cooldown_s == 20
    path.write_text("defaults:\n  rollback:\n    cooldown_s: -1\n")
    os.utime(path, (2, 2))
    assert source.changed() and not source.reload()
    assert source.for_model("m").rollback.cooldown_s == 20  # the last good one stays
    assert source.last_error is not None and "cooldown_s" in source.last_error
    assert not source.changed()  # the bad file is not retried every tick
    assert source.refresh(0.0) is None  # nothing changed since
    assert source.refresh(force=True) is False  # SIGHUP reloads anyway; still bad, still kept
    assert source.for_model("m").rollback.cooldown_s == 20


def test_tokens_create_prints_once_and_stores_only_the_hash(tmp_path: Path) -> None:
    env = {"ROLLGUARD_STATE_DIR": str(tmp_path)}
    result = rollguard(
        "tokens", "create", "--name", "dora", "--role", "data_engineering_lead", env=env
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    stored = (tmp_path / "tokens.yaml").read_text()
    assert token not in stored and "dora" in stored
    assert (tmp_path / "tokens.yaml").stat().st_mode & 0o777 == 0o600
    bad = rollguard("tokens", "create", "--name", "x", "--role", "king", env=env)
    assert bad.returncode == 2 and "invalid choice: 'king'" in one_line_error(bad)


def test_tokens_list_shows_who_holds_one_and_who_was_revoked(tmp_path: Path) -> None:
    env = {"ROLLGUARD_STATE_DIR": str(tmp_path)}
    empty = rollguard("tokens", "list", env=env)
    assert empty.returncode == 0 and "no tokens in" in empty.stdout
    for name, role in (("dora", "data_engineering_lead"), ("mike", "ml_lead")):
        assert (
            rollguard("tokens", "create", "--name", name, "--role", role, env=env).returncode == 0
        )
    assert rollguard("tokens", "revoke", "--name", "mike", env=env).returncode == 0
    shown = rollguard("tokens", "list", env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.strip().splitlines()
    assert lines[0].startswith("dora (data_engineering_lead) key ") and lines[0].endswith("active")
    assert lines[1].startswith("mike (ml_lead) key ") and ": revoked at " in lines[1]
    listed = json.loads(rollguard("tokens", "list", "--json", env=env).stdout)
    assert [(h["name"], h["revoked_at"] is None) for h in listed] == [
        ("dora", True),
        ("mike", False),
    ]


def test_commands_that_need_a_token_say_so() -> None:
    result = rollguard(
        "rollback", "m", "--as", "ml_lead", env={"ROLLGUARD_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    )
    assert result.returncode == 2 and "ROLLGUARD_TOKEN" in one_line_error(result)


@pytest.mark.broker
async def test_record_check_rollback_and_approve_through_the_decider(
    topics_ready: RollguardSettings, keys: str, reader: TopicReader
) -> None:
    env = env_of(topics_ready)
    tokens = {}
    for name, role in [
        ("dora", "data_engineering_lead"),
        ("dan", "data_engineering_lead"),
        ("mike", "ml_lead"),
    ]:
        out = await asyncio.to_thread(
            rollguard, "tokens", "create", "--name", name, "--role", role, env=env
        )
        tokens[name] = out.stdout.strip().splitlines()[-1]

    def cli(*args: str, token: str | None = None) -> object:
        return rollguard(*args, env=env_of(topics_ready, token))

    async def run(*args: str, token: str | None = None) -> object:
        return await asyncio.to_thread(cli, *args, token=token)

    common = ["--feature-pipeline", "fp-1", "--config", "c-1", "--infra", "k-1"]
    for model_id, sv, model, status in [
        (m, sv, v, st)
        for m in ("m", "m4")
        for sv, v, st in [("s1", "v1", "known_good"), ("s2", "v2", "live")]
    ]:
        done = await run(
            "deploy",
            "record",
            "--model-id",
            model_id,
            "--system-version",
            sv,
            "--model",
            model,
            "--status",
            status,
            *common,
        )
        assert done.returncode == 0, done.stderr  # type: ignore[attr-defined]
    await run(
        "deploy",
        "record",
        "--model-id",
        "lonely",
        "--system-version",
        "s9",
        "--model",
        "v9",
        *common,
    )

    decider = Decider(
        topics_ready,
        PolicySource(None),
        load_signer(topics_ready.resolved_signing_key_file),
        DeciderSettings(),
    )
    task = asyncio.create_task(decider.run())
    try:
        await until(lambda: decider.counts["SystemManifest"] == 5, 60)
        # m and m4: two manifests, two statuses each; lonely: one
        await until(lambda: decider.counts["status_published"] == 5, 30)
        ready = await run("deploy", "check", "m")
        assert ready.returncode == 0, ready.stderr  # type: ignore[attr-defined]
        assert "ready: m can roll back from s2 to s1" in ready.stdout  # type: ignore[attr-defined]
        checked = await run("deploy", "check", "m", "--json")
        assert checked.returncode == 0, checked.stderr  # type: ignore[attr-defined]
        assert json.loads(checked.stdout) == {  # type: ignore[attr-defined]
            "model_id": "m",
            "ready": True,
            "reason": None,
            "live": "s2",
            "target": "s1",
        }
        alone = await run("deploy", "check", "lonely", "--json")
        assert alone.returncode == 4  # type: ignore[attr-defined]
        assert json.loads(alone.stdout)["ready"] is False  # type: ignore[attr-defined]
        lonely = await run("deploy", "check", "lonely")
        assert lonely.returncode == 4  # type: ignore[attr-defined]
        assert "no known-good target other than the live s9" in one_line_error(lonely)  # type: ignore[arg-type]
        unknown = await run("deploy", "check", "ghost")
        assert unknown.returncode == 4 and "knows no deployment of ghost" in one_line_error(unknown)  # type: ignore[arg-type,attr-defined]

        asked = await run(
            "rollback",
            "m",
            "--level",
            "3",
            "--as",
            "data_engineering_lead",
            "--reason",
            "bad features",
            token=tokens["dora"],
        )
        # The command waits for the decider's answer and prints it, with the id to approve.
        assert asked.returncode == 0, asked.stderr  # type: ignore[attr-defined]
        await until(lambda: decider.counts["decision_hold"] == 1, 30)
        (pending,) = [
            Decision.model_validate_json(r.value)
            for r in await reader.read(topics.DECISIONS.name, until=lambda r: len(r) >= 1)
        ]
        assert pending.reasons[-1].code == "awaiting_approval" and pending.requested_by == "dora"
        said = asked.stdout  # type: ignore[attr-defined]
        assert f"decision {pending.event_id}: hold level 3 to s1 (m)" in said
        assert "manual_request: dora (data_engineering_lead): bad features" in said
        assert f"rollguard approve {pending.event_id} --as ROLE" in said

        own = await run(
            "approve", pending.event_id, "--as", "data_engineering_lead", token=tokens["dora"]
        )
        # Refused, in words, with its own exit code (it exited 0 before).
        assert own.returncode == 6, own.stdout  # type: ignore[attr-defined]
        assert "approval_rejected: dora requested this rollback and cannot approve it" in (
            own.stdout  # type: ignore[attr-defined]
        )
        ok = await run(
            "approve", pending.event_id, "--as", "data_engineering_lead", token=tokens["dan"]
        )
        assert ok.returncode == 0, ok.stderr  # type: ignore[attr-defined]
        assert "rollback level 3 to s1 (m)" in ok.stdout  # type: ignore[attr-defined]
        assert "approved: approved by dan" in ok.stdout  # type: ignore[attr-defined]
        await until(lambda: decider.counts["decision_rollback"] == 1, 30)

        # Level 4 needs two approvers. The first waits for the rollback to be applied: it
        # sees its own "still needs", then the rollback the second one's approval launches
        # (no executor runs here: it times out waiting for applied, exit 7).
        four = await run(
            *("rollback", "m4", "--level", "4", "--as", "data_engineering_lead"),
            token=tokens["dora"],
        )
        assert four.returncode == 0, four.stderr  # type: ignore[attr-defined]
        p4 = re.search(r"^decision ([0-9a-f]{32}): hold", four.stdout, re.M).group(1)  # type: ignore[attr-defined, union-attr]
        holds = decider.counts["decision_hold"]
        first = asyncio.create_task(
            run(
                *("approve", p4, "--as", "data_engineering_lead"),
                *("--wait", "applied", "--timeout", "20"),
                token=tokens["dan"],
            )
        )
        await until(lambda: decider.counts["decision_hold"] == holds + 1, 30)
        second = await run("approve", p4, "--as", "ml_lead", token=tokens["mike"])
        assert second.returncode == 0, second.stdout  # type: ignore[attr-defined]
        waited = await first
        said = waited.stdout  # type: ignore[attr-defined]
        assert waited.returncode == 7, said  # type: ignore[attr-defined]
        assert "awaiting_approval: approved by dan; still needs ml_lead" in said
        assert "rollback level 4 to s1 (m4)" in said and "approved: approved by dan, mike" in said
        assert "timed out waiting for applied" in said
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    decisions = [
        d
        for d in (
            Decision.model_validate_json(r.value)
            for r in await reader.read(topics.DECISIONS.name, until=lambda r: len(r) >= 6)
        )
        if d.model_id == "m"
    ]
    assert [(x.action, x.reasons[-1].code) for x in decisions] == [
        ("hold", "awaiting_approval"),
        ("hold", "approval_rejected"),
        ("rollback", "approved"),
    ]
    (command,) = [
        c
        for c in (
            RollbackCommand.model_validate_json(r.value)
            for r in await reader.read(topics.COMMANDS.name, until=lambda r: len(r) >= 2)
        )
        if c.model_id == "m"
    ]
    assert (command.level, command.to_manifest.system_version, command.decision_id) == (
        3,
        "s1",
        decisions[-1].event_id,
    )


@pytest.mark.broker
async def test_a_request_nobody_answers_times_out_with_its_own_exit_code(
    topics_ready: RollguardSettings, keys: str
) -> None:
    """No decider runs: `rollback` waits --timeout for an answer, says so, exits 7."""
    env = env_of(topics_ready)
    made = await asyncio.to_thread(
        rollguard, "tokens", "create", "--name", "ann", "--role", "ml_engineer", env=env
    )
    token = made.stdout.strip().splitlines()[-1]
    result = await asyncio.to_thread(
        rollguard,
        *("rollback", "m", "--as", "ml_engineer", "--timeout", "2", "--json"),
        env=env_of(topics_ready, token),
    )
    assert result.returncode == 7, result.stderr
    answer = json.loads(result.stdout)
    assert answer["outcome"] == "timed_out" and answer["decision"] is None
    assert one_line_error(result) == "rollguard: timed out"


@pytest.mark.broker
async def test_deploy_check_reads_the_public_status_whatever_the_decider_app_id(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Callable[..., Awaitable[None]],
    publish_signed: Callable[..., Awaitable[None]],
    tmp_path: Path,
) -> None:
    """deploy check reads rollguard.model-status, not the decider's faust table: a decider
    with another app id (so other internal topics) serves it the same, and the target's
    health checks reach it through the status."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump({"models": {"m": {"rollback": {"target_ready_within_s": 60}}}})
    )
    env = {**env_of(topics_ready), "ROLLGUARD_POLICY_PATH": str(policy)}

    async def run(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(rollguard, *args, env=env)

    for m in [manifest("v1", status="known_good"), manifest("v2", status="live")]:
        await publish_signed(topics.DEPLOYMENTS.name, m)
    decider = Decider(
        topics_ready,
        PolicySource(policy),
        load_signer(topics_ready.resolved_signing_key_file),
        DeciderSettings(app_id="decider-blue", tick_s=0.2),
    )
    task = asyncio.create_task(decider.run())
    try:
        await until(lambda: decider.counts["status_published"] == 2, 60)
        unchecked = await run("deploy", "check", "m")
        assert unchecked.returncode == 4
        assert "not ready: no health check of v1" in one_line_error(unchecked)

        await publish(
            topics.HEALTH.name, HealthCheckEvent(model_id="m", model_version="v1", ok=True)
        )
        await until(lambda: decider.counts["status_published"] == 3, 30)
        ready = await run("deploy", "check", "m")
        assert ready.returncode == 0, ready.stderr
        assert "ready: m can roll back from sys-v2 to sys-v1 (model v1)" in ready.stdout

        # a health check of the live version changes nothing the status shows
        await publish(
            topics.HEALTH.name, HealthCheckEvent(model_id="m", model_version="v2", ok=False)
        )
        await until(lambda: decider.counts["HealthCheckEvent"] == 2, 30)
        await asyncio.sleep(1.0)  # five ticks with nothing due
        assert decider.counts["status_published"] == 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_detector_follows_a_changed_policy_file(tmp_path: Path) -> None:
    import os

    from rollguard_services.detector.app import Detector

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"defaults": {"window": {"seconds": 1.0}}}))
    settings = RollguardSettings(kafka_bootstrap="127.0.0.1:1", state_dir=tmp_path)
    detector = Detector(settings, PolicySource(path), DetectorSettings())
    assert detector.policy.defaults.window.seconds == 1.0
    path.write_text(yaml.safe_dump({"defaults": {"window": {"seconds": 5.0}}}))
    os.utime(path, (3, 3))
    detector._maybe_reload()
    assert detector.policy.defaults.window.seconds == 5.0
    assert (
        detector.folder.latency_windows._policy("m").seconds == 5.0
    )  # the windows see the new policy too


def test_policy_lint_reports_every_error_of_a_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults:\n  rollback:\n    level: sideways\n    cooldown_s: -1\n")
    result = rollguard("policy", "lint", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    text = "\n".join(lines)
    assert f"{bad}:3: defaults.rollback.level: Input should be 'auto' or 'system'" in text
    assert (
        f"{bad}:4: defaults.rollback.cooldown_s: Input should be greater than or equal to" in text
    )
