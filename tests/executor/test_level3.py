"""Level 3 (feature pipeline) through the broker: the pipeline restored (a command step), its
features recomputed (a webhook step with its own ack), the executor waiting until the feature
store says they are ready (a loopback HTTP server that says "not yet" twice), then the model
trained on those features restored, each step acked in order; features that never get ready
fail the step once the wait is over, and what was changed is set back."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from rollguard import topics
from rollguard.events import CommandAck
from rollguard.settings import RollguardSettings
from rollguard.signing import load_signer
from rollguard_services.executor.app import Executor
from rollguard_services.executor.settings import (
    CommandSettings,
    ExecutorSettings,
    ReadySettings,
    WebhookSettings,
)
from tests.conftest import TopicReader, free_port, ledgered_acks, run_until
from tests.factories import command, manifest

pytestmark = pytest.mark.broker

PIPELINE = """
import json, os, sys
doc = json.load(sys.stdin)
with open(os.environ["PIPELINE_CALLS"], "a") as f:
    f.write(json.dumps([doc["component"], doc["to_version"], doc["compensation"]]) + "\\n")
print(f"pipeline now {doc['to_version']}")
"""


class FeatureStore:
    """Recompute requests in; "ready" after ``not_ready`` asks."""

    def __init__(self, not_ready: int) -> None:
        self.not_ready = not_ready
        self.recomputes: list[dict[str, Any]] = []
        self.asked = 0

    async def recompute(self, request: web.Request) -> web.Response:
        self.recomputes.append(await request.json())
        return web.json_response({"started": True})

    async def ready(self, request: web.Request) -> web.Response:
        self.asked += 1
        ready = self.asked > self.not_ready
        return web.json_response({"ready": ready, "version": request.match_info["version"]})


@pytest.fixture
async def store() -> AsyncIterator[tuple[FeatureStore, str]]:
    fs = FeatureStore(not_ready=2)
    app = web.Application()
    app.router.add_post("/recompute/{model_id}", fs.recompute)
    app.router.add_get("/ready/{model_id}/{version}", fs.ready)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield fs, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _settings(url: str, script: Path, timeout_s: float = 60) -> ExecutorSettings:
    return ExecutorSettings(
        group_id=f"l3-{timeout_s}",
        executor_id="e",
        applier="registry",
        appliers_by_model={
            "m": {
                "feature_pipeline": "command",
                "recompute": "webhook",
                "features_ready": "ready",
                "model": "registry",
            }
        },
        command=CommandSettings(argv=[sys.executable, str(script)]),
        webhook=WebhookSettings(url=f"{url}/recompute/{{model_id}}"),
        ready=ReadySettings(
            url=f"{url}/ready/{{model_id}}/{{version}}", interval_s=0.2, timeout_s=timeout_s
        ),
        retry_initial_s=0.05,
        retry_max_s=0.2,
    )


def _pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The pipeline controller's script, and where it notes each call."""
    script = tmp_path / "pipeline.py"
    script.write_text(PIPELINE)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PIPELINE_CALLS", str(calls))
    return script, calls


def _level3() -> Any:
    return command(
        level=3,
        from_manifest=manifest("v2", feature_pipeline="fp-2"),
        to_manifest=manifest("v1", status="known_good"),  # fp-1, and the model trained on it
    )


async def test_level_3_restores_recomputes_waits_for_the_features_then_the_model(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    store: tuple[FeatureStore, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fs, url = store
    script, calls = _pipeline(tmp_path, monkeypatch)
    cmd = load_signer(topics_ready.resolved_signing_key_file).sign(_level3())
    await publish(topics.COMMANDS.name, cmd)
    ex = Executor(topics_ready, _settings(url, script))
    await run_until(ex, lambda: ex.counts["applied"] == 1)

    assert [json.loads(line) for line in calls.read_text().splitlines()] == [
        ["feature_pipeline", "fp-1", False]
    ]
    assert [(r["component"], r["to_version"]) for r in fs.recomputes] == [("recompute", "fp-1")]
    assert fs.asked == 3  # not ready twice, then ready
    acks = [
        CommandAck.model_validate_json(r.value)
        for r in await reader.read(topics.ACKS.name, until=lambda r: len(r) >= 6)
    ]
    done = [a.component for a in acks if a.status == "applied" and a.component]
    assert done == ["feature_pipeline", "recompute", "features_ready", "model"]
    ready = next(a for a in acks if a.component == "features_ready" and a.status == "applied")
    assert ready.detail.startswith("features of fp-1 ready after")
    ledgered = await ledgered_acks(topics_ready, {cmd.command_id}, len(acks))
    assert [p.get("component") for p in ledgered if p["status"] == "applied"][:4] == done


async def test_features_never_ready_fail_the_step_and_the_pipeline_is_set_back(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    store: tuple[FeatureStore, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fs, url = store
    fs.not_ready = 10_000
    script, calls = _pipeline(tmp_path, monkeypatch)
    cmd = load_signer(topics_ready.resolved_signing_key_file).sign(_level3())
    await publish(topics.COMMANDS.name, cmd)
    ex = Executor(topics_ready, _settings(url, script, timeout_s=1.0))
    await run_until(ex, lambda: ex.counts["failed"] == 1)
    acks = [
        CommandAck.model_validate_json(r.value)
        for r in await reader.read(
            topics.ACKS.name,
            until=lambda r: any(
                CommandAck.model_validate_json(x.value).status == "failed"
                and not CommandAck.model_validate_json(x.value).component
                for x in r
            ),
        )
    ]
    final = next(a for a in acks if a.status == "failed" and not a.component)
    assert "features_ready" in final.detail and "not ready within 1 s" in final.detail
    # the pipeline went to fp-1 and was set back to fp-2 (the model was never touched)
    assert [json.loads(line)[:3] for line in calls.read_text().splitlines()] == [
        ["feature_pipeline", "fp-1", False],
        ["feature_pipeline", "fp-2", True],
    ]
