"""Executing commands through the broker: level-2 order, per-component acks, compensation,
retries up to the deadline, invalidations, and bad input that never stops the executor."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka.partitioner import DefaultPartitioner

from rollguard import topics
from rollguard.events import CommandAck, OutputInvalidation, RollbackCommand, SystemManifest
from rollguard.invalidations import InvalidationClient
from rollguard.policy import ModelPolicy, PolicySet, RollbackPolicy
from rollguard.settings import RollguardSettings
from rollguard.signing import load_signer, signer_of, trust_of
from rollguard_services.executor.app import Executor
from rollguard_services.executor.plans import Plan, Refusal
from rollguard_services.executor.settings import CommandSettings, ExecutorSettings, WebhookSettings
from rollguard_services.notifier.notifications import from_ack
from tests.conftest import TopicReader, run_until, scaled
from tests.factories import command, manifest

pytestmark = pytest.mark.broker

Publish = Callable[..., Awaitable[None]]

SCRIPT = """\
import json, os, sys
doc = json.load(sys.stdin)
with open(os.environ["CALLS"], "a") as f:
    f.write(json.dumps([doc["component"], doc["to_version"], doc["compensation"]]) + "\\n")
if doc["component"] == os.environ.get("FAIL_AT") and not doc["compensation"]:
    print("pipeline controller refused", file=sys.stderr)
    sys.exit(3)
print(f"{doc['component']} now {doc['to_version']}")
"""


def level2(**kw: Any) -> RollbackCommand:
    """v2 on fp-2/cfg-1/infra-2 rolled back to v1 on fp-1/cfg-1/infra-1 (config unchanged)."""
    base: dict[str, Any] = {
        "level": 2,
        "from_manifest": manifest("v2", feature_pipeline="fp-2", infra="infra-2"),
        "to_manifest": manifest("v1", status="known_good"),
    }
    return command(**{**base, **kw})


async def acks_of(reader: TopicReader, n: int) -> list[CommandAck]:
    records = await reader.read(topics.ACKS.name, until=lambda r: len(r) >= n)
    return [CommandAck.model_validate_json(r.value) for r in records]


@pytest.fixture
def script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[CommandSettings, Path]:
    path = tmp_path / "restore.py"
    path.write_text(SCRIPT)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("CALLS", str(calls))
    return CommandSettings(argv=[sys.executable, str(path)]), calls


def calls_of(path: Path) -> list[list[Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_level_2_restores_in_order_acks_each_component_and_invalidates_once(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Publish,
    reader: TopicReader,
    script: tuple[CommandSettings, Path],
) -> None:
    argv, calls = script
    cmd = load_signer(topics_ready.resolved_signing_key_file).sign(level2())
    await publish(topics.COMMANDS.name, cmd)
    await publish(topics.COMMANDS.name, cmd)  # a replay: no second effect, no second invalidation
    ex = Executor(
        topics_ready,
        ExecutorSettings(group_id="l2", executor_id="e", applier="command", command=argv),
    )
    await run_until(ex, lambda: ex.counts["applied"] == 1 and ex.counts["replayed"] == 1)

    # feature pipeline, config (unchanged: not called), model, infra; then the pointer.
    assert calls_of(calls) == [
        ["feature_pipeline", "fp-1", False],
        ["model", "v1", False],
        ["infra", "infra-1", False],
    ]
    acks = await acks_of(reader, 7)
    assert [(a.status, a.component) for a in acks] == [
        ("received", None),
        ("applied", "feature_pipeline"),
        ("applied", "config"),
        ("applied", "model"),
        ("applied", "infra"),
        ("applied", None),
        ("rejected", None),  # the replay
    ]
    assert acks[2].detail == "config already at cfg-1" and acks[2].attempts == 0
    assert acks[1].detail == "feature_pipeline now fp-1" and acks[1].attempts == 1
    assert acks[5].detail.startswith("feature_pipeline fp-2 → fp-1, config cfg-1 → cfg-1")
    assert "live pointer sys-v2 → sys-v1" in acks[5].detail
    # What the notifier makes of these acks: one "applied" for the command, listing its
    # components, not one per component; the refused replay is told once, as a rejection.
    told = [n for a in acks if (n := from_ack(a, "immediate", None)) is not None]
    assert [n.kind for n in told] == ["rollback_applied", "rollback_failed"]
    assert "feature_pipeline fp-2 → fp-1" in told[0].summary and "model v2 → v1" in told[0].summary

    deployments = await reader.read(topics.DEPLOYMENTS.name, until=lambda r: len(r) >= 2)
    live = SystemManifest.model_validate_json(deployments[0].value)
    assert (live.system_version, live.status) == ("sys-v1", "live")

    records = await reader.read(topics.INVALIDATIONS.name, until=lambda r: False, timeout_s=1)
    assert len(records) == 1
    (record,) = records
    inv = OutputInvalidation.model_validate_json(record.value)
    assert (inv.model_id, inv.model_version, inv.bad_versions) == ("m", "v2", ["v2"])
    assert inv.command_id == cmd.command_id
    assert inv.valid_from == cmd.from_manifest.ts
    assert inv.valid_from < inv.valid_to <= acks[5].ts
    assert record.key == f"m:v2:{cmd.from_manifest.ts.isoformat()}".encode()
    # Keyed per version, yet on the model's partition like every other event of the model.
    parts = list(range(topics_ready.partitions))
    assert record.partition == DefaultPartitioner()(b"m", parts, parts)
    assert record.partition == deployments[0].partition

    async with InvalidationClient(topics_ready) as client:
        await client.catch_up()
        inside = inv.valid_from + (inv.valid_to - inv.valid_from) / 2
        assert client.is_invalid("m", "v2", inside)
        assert client.is_invalid("m", "v2", inv.valid_to)
        assert not client.is_invalid("m", "v2", inv.valid_from - timedelta(seconds=1))
        assert not client.is_invalid("m", "v2", inv.valid_to + timedelta(microseconds=1))
        assert not client.is_invalid("m", "v1", inside)
        assert not client.is_invalid("other", "v2", inside)

    env = {
        **os.environ,
        "ROLLGUARD_KAFKA_BOOTSTRAP": str(topics_ready.kafka_bootstrap),
        "ROLLGUARD_TOPIC_PREFIX": topics_ready.topic_prefix,
        # The invalidations are signed by the executor: the CLI checks them against the keys.
        "ROLLGUARD_STATE_DIR": str(topics_ready.state_dir),
    }
    rollguard = str(Path(sys.executable).with_name("rollguard"))
    listed = await asyncio.to_thread(
        subprocess.run,
        [rollguard, "invalidations", "list", "--model-id", "m", "--model-version", "v2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert listed.returncode == 0, listed.stderr
    first, count = listed.stdout.splitlines()
    assert first.startswith("m v2 ") and first.endswith(f"command {cmd.command_id}")
    assert count == "1 invalidation(s)"
    none = await asyncio.to_thread(
        subprocess.run,
        [rollguard, "invalidations", "list", "--model-version", "v1", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert (none.returncode, none.stdout) == (0, "")


async def test_a_failed_component_undoes_the_earlier_ones_last_first(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Publish,
    reader: TopicReader,
    script: tuple[CommandSettings, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv, calls = script
    monkeypatch.setenv("FAIL_AT", "model")
    cmd = level2(
        from_manifest=manifest("v2", feature_pipeline="fp-2", config="cfg-2", infra="infra-2")
    )
    await publish(
        topics.COMMANDS.name, load_signer(topics_ready.resolved_signing_key_file).sign(cmd)
    )
    ex = Executor(
        topics_ready,
        ExecutorSettings(group_id="l2f", executor_id="e", applier="command", command=argv),
    )
    await run_until(ex, lambda: ex.counts["failed"] == 1)

    assert calls_of(calls) == [
        ["feature_pipeline", "fp-1", False],
        ["config", "cfg-1", False],
        ["model", "v1", False],
        ["config", "cfg-2", True],
        ["feature_pipeline", "fp-2", True],
    ]
    acks = await acks_of(reader, 7)
    assert [(a.status, a.component, a.compensation) for a in acks] == [
        ("received", None, False),
        ("applied", "feature_pipeline", False),
        ("applied", "config", False),
        ("failed", "model", False),
        ("applied", "config", True),
        ("applied", "feature_pipeline", True),
        ("failed", None, False),
    ]
    # Failed and compensating acks are signed with the executor key like every other.
    trust, executor_key = trust_of(topics_ready), signer_of(topics_ready, "executor").key_id
    assert {(trust.check(a).ok, a.key_id) for a in acks} == {(True, executor_key)}
    final = acks[-1]
    assert not final.retriable
    assert final.detail.startswith("model failed: ")
    assert "pipeline controller refused" in final.detail
    assert final.detail.endswith("compensated: config back to cfg-2, feature_pipeline back to fp-2")
    # One "failed" notification for the command, not one per failed or undone component.
    told = [n for a in acks if (n := from_ack(a, "immediate", None)) is not None]
    assert [(n.kind, n.command_id) for n in told] == [("rollback_failed", final.command_id)]
    # Nothing moved: the live pointer and the invalidation wait for a whole success.
    assert await reader.read(topics.DEPLOYMENTS.name, until=lambda r: False, timeout_s=1) == []
    assert await reader.read(topics.INVALIDATIONS.name, until=lambda r: False, timeout_s=0.5) == []


def test_level_2_order_is_the_models_policy(settings: RollguardSettings, keys: str) -> None:
    order = ("model", "infra", "config", "feature_pipeline")
    policy = PolicySet(models={"m": ModelPolicy(rollback=RollbackPolicy(component_order=order))})
    ex = Executor(settings, ExecutorSettings(), policy)
    plan = ex.plan(level2())
    assert isinstance(plan, Plan)
    assert [s.component for s in plan.steps] == ["model", "infra", "config", "feature_pipeline"]
    default = Executor(settings, ExecutorSettings()).plan(level2())
    assert isinstance(default, Plan)
    assert [s.component for s in default.steps] == [
        "feature_pipeline",
        "config",
        "model",
        "infra",
    ]
    assert [s.component for s in default.steps] != [s.component for s in plan.steps]


def test_a_command_that_cannot_be_planned_is_refused_with_its_reason(
    settings: RollguardSettings, keys: str
) -> None:
    ex = Executor(settings, ExecutorSettings(applier=None, appliers_by_model={"m": "registry"}))
    data = ex.plan(command(level=4))
    assert data == Refusal(
        "unsupported_level",
        "level 4 (data): the target sys-v1 names no data version (rollguard deploy record --data)",
    )
    with_data = manifest("v1", status="known_good").model_copy(
        update={"components": manifest("v1").components.model_copy(update={"data": "3"})}
    )
    # A data version, but only the registry applier, which would change nothing outside.
    refused = ex.plan(command(level=4, to_manifest=with_data))
    assert isinstance(refused, Refusal) and refused.reason == "unknown_model"
    assert '{"data": "delta"}' in refused.detail
    stranger = ex.plan(
        command(
            model_id="stranger",
            from_manifest=manifest("v2", model_id="stranger"),
            to_manifest=manifest("v1", model_id="stranger", status="known_good"),
        )
    )
    assert isinstance(stranger, Refusal) and stranger.reason == "unknown_model"
    assert stranger.detail.startswith("no applier configured for model of stranger")
    one = ex.plan(command())
    assert isinstance(one, Plan) and not one.per_component
    assert [(s.component, s.single) for s in one.steps] == [("model", True)]


class Target:
    """Loopback HTTP server with a script of (status, headers) answers per model path."""

    def __init__(self) -> None:
        self.answers: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.requests: dict[str, list[tuple[float, dict[str, str], bytes]]] = {}
        self.released = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        self.requests.setdefault(model, []).append(
            (asyncio.get_running_loop().time(), dict(request.headers), await request.read())
        )
        if model == "hangs":
            await self.released.wait()
        script = self.answers.get(model) or [(200, {})]
        status, headers = script.pop(0) if len(script) > 1 else script[0]
        return web.Response(status=status, text=f"answer {status}", headers=headers)


@pytest.fixture
async def target() -> AsyncIterator[tuple[Target, str]]:
    t = Target()
    app = web.Application()
    app.router.add_post("/rollback/{model}", t.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield t, f"http://127.0.0.1:{runner.addresses[0][1]}/rollback/{{model_id}}"
    t.released.set()
    await runner.cleanup()


async def test_webhook_retries_honour_retry_after_and_stop_at_4xx_or_the_deadline(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Publish,
    reader: TopicReader,
    target: tuple[Target, str],
) -> None:
    t, url = target
    t.answers["flaky"] = [(503, {"Retry-After": "1"}), (429, {}), (200, {})]
    t.answers["refuses"] = [(400, {})]
    signer = load_signer(topics_ready.resolved_signing_key_file)
    now = command().issued_at
    cmds = {
        # Expires in 7 s (the group join takes a few): the retries stop there, each attempt
        # cut off after 0.4 s.
        "hangs": signer.sign(
            command(model_id="hangs", issued_at=now, expires_at=now + timedelta(seconds=7))
        ),
        "flaky": signer.sign(command(model_id="flaky")),
        "refuses": signer.sign(command(model_id="refuses")),
    }
    for cmd in cmds.values():
        # One partition, so they run in this order.
        await publish(topics.COMMANDS.name, cmd, key=b"one-partition")
    ex = Executor(
        topics_ready,
        ExecutorSettings(
            group_id="wh",
            executor_id="e",
            applier="webhook",
            webhook=WebhookSettings(url=url, timeout_s=0.4),
            retry_initial_s=0.1,
        ),
    )
    await run_until(ex, lambda: ex.counts["applied"] + ex.counts["failed"] == 3, timeout_s=40)

    finals = {a.model_id: a for a in await acks_of(reader, 6) if a.status != "received"}
    flaky = t.requests["flaky"]
    assert len(flaky) == 3
    assert flaky[1][0] - flaky[0][0] >= 1.0  # Retry-After: 1 honoured
    assert len({body for _, _, body in flaky}) == 1  # the same request each time
    assert {h["Idempotency-Key"] for _, h, _ in flaky} == {cmds["flaky"].command_id}
    assert (finals["flaky"].status, finals["flaky"].attempts) == ("applied", 3)

    assert len(t.requests["refuses"]) == 1  # never retried
    assert (finals["refuses"].status, finals["refuses"].retriable) == ("failed", False)
    assert "HTTP 400" in finals["refuses"].detail

    hangs = finals["hangs"]
    assert (hangs.status, hangs.retriable) == ("failed", True)
    assert (
        "gave up after" in hangs.detail and "no answer from the webhook within 0.4s" in hangs.detail
    )
    assert 2 <= len(t.requests["hangs"]) == hangs.attempts
    assert await reader.read(topics.INVALIDATIONS.name, until=lambda r: len(r) >= 1) != []


async def test_bad_input_gets_a_reason_and_the_executor_keeps_going(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Publish,
    reader: TopicReader,
    tmp_path: Path,
) -> None:
    signer = load_signer(topics_ready.resolved_signing_key_file)

    def for_model(model_id: str, **kw: Any) -> RollbackCommand:
        return signer.sign(
            command(
                model_id=model_id,
                from_manifest=manifest("v2", model_id=model_id),
                to_manifest=manifest("v1", model_id=model_id, status="known_good"),
                **kw,
            )
        )

    # All on one model id's partition would serialise them anyway; order them explicitly.
    sequence = [
        for_model("stranger"),  # no applier for this model
        for_model("good", level=4),  # data rollback: no applier can do it
        for_model("broken"),  # its script does not exist: the manifest cannot be reached
        for_model("good"),
    ]
    for cmd in sequence:
        await publish(topics.COMMANDS.name, cmd, key=b"one-partition")
    ex = Executor(
        topics_ready,
        ExecutorSettings(
            group_id="bad",
            executor_id="e",
            applier=None,
            appliers_by_model={"good": "registry", "broken": "command"},
            command=CommandSettings(argv=[str(tmp_path / "no-such-script")]),
        ),
    )
    await run_until(ex, lambda: ex.counts["applied"] == 1)

    finals = [a for a in await acks_of(reader, 6) if a.status != "received"]
    by_model = {(a.model_id, a.status): a.detail for a in finals}
    assert by_model[("stranger", "rejected")].startswith("unknown_model: no applier configured")
    assert by_model[("good", "rejected")].startswith("unsupported_level: level 4")
    assert "cannot run" in by_model[("broken", "failed")]
    assert ("good", "applied") in by_model
    # acks are keyed by model: their partitions, not the commands' order, decide how they read
    assert sorted(a.model_id for a in finals) == ["broken", "good", "good", "stranger"]
