"""Each applier against a real counterpart: an HTTP server on loopback, a real executable, a
real MLflow registry on SQLite."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from rollguard.errors import ConfigError
from rollguard.retry_after import retry_after_s
from rollguard_services.executor.appliers import build_appliers
from rollguard_services.executor.appliers.base import Step
from rollguard_services.executor.appliers.command import CommandApplier
from rollguard_services.executor.appliers.webhook import WebhookApplier
from rollguard_services.executor.settings import CommandSettings, ExecutorSettings, WebhookSettings
from tests.factories import command, manifest


def step(component: str = "model", **kw: Any) -> Step:
    cmd = command(**kw)
    return Step(cmd, component, "v2", "v1", single=component == "model")


# --------------------------------------------------------------------------- webhook


class Target:
    """A loopback HTTP server answering from a script of responses, recording every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes, str]] = []
        self.answers: list[Callable[[], Awaitable[web.StreamResponse]]] = []
        #: Set at teardown, so a handler that hangs on purpose lets the server stop.
        self.released = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((dict(request.headers), await request.read(), request.raw_path))
        answer = self.answers.pop(0) if self.answers else None
        if answer is None:
            return web.json_response({"ok": True})
        return await answer()


@pytest.fixture
async def target() -> AsyncIterator[tuple[Target, str]]:
    t = Target()
    app = web.Application()
    app.router.add_post("/{tail:.*}", t.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield t, f"http://127.0.0.1:{port}"
    t.released.set()
    await runner.cleanup()


def respond(status: int, body: str = "", headers: dict[str, str] | None = None) -> Any:
    async def answer() -> web.StreamResponse:
        return web.Response(status=status, text=body, headers=headers)

    return answer


async def test_webhook_posts_the_step_signed_with_the_idempotency_key(
    target: tuple[Target, str],
) -> None:
    t, base = target
    applier = WebhookApplier(
        WebhookSettings(
            url=base + "/rollouts/{model_id}/{component}",
            secret=SecretStr("s3cret"),
            headers={"Authorization": "Bearer abc"},
        )
    )
    s = step(model_id="fraud/eu")
    try:
        effect = await applier.apply(s)
    finally:
        await applier.close()
    assert (effect.status, effect.detail) == ("applied", 'webhook HTTP 200: {"ok": true}')
    ((headers, body, path),) = t.requests
    assert path == "/rollouts/fraud%2Feu/model"
    assert headers["Idempotency-Key"] == s.command.command_id
    assert headers["Authorization"] == "Bearer abc"
    assert headers["Content-Type"] == "application/json"
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Rollguard-Signature"] == expected
    doc = json.loads(body)
    assert doc["command_id"] == s.command.command_id
    assert (doc["component"], doc["from_version"], doc["to_version"]) == ("model", "v2", "v1")
    assert doc["to_manifest"]["system_version"] == "sys-v1"
    assert doc["compensation"] is False


async def test_webhook_keys_level_2_steps_and_their_undoing_apart(
    target: tuple[Target, str],
) -> None:
    t, base = target
    applier = WebhookApplier(WebhookSettings(url=base))
    s = Step(command(level=2), "config", "cfg-2", "cfg-1", single=False)
    try:
        await applier.apply(s)
        await applier.apply(s.undo())
    finally:
        await applier.close()
    keys = [h["Idempotency-Key"] for h, _, _ in t.requests]
    cid = s.command.command_id
    assert keys == [f"{cid}:config", f"{cid}:config:compensate"]
    assert "X-Rollguard-Signature" not in t.requests[0][0]  # no secret, no signature
    undo = json.loads(t.requests[1][1])
    assert (undo["from_version"], undo["to_version"], undo["compensation"]) == (
        "cfg-1",
        "cfg-2",
        True,
    )


@pytest.mark.parametrize(
    ("status", "headers", "retriable", "after"),
    [
        (503, {"Retry-After": "7"}, True, 7.0),
        (429, {"Retry-After": "120"}, True, 30.0),  # capped at max_retry_after_s
        (500, {}, True, None),
        (408, {}, True, None),
        (400, {}, False, None),
        (404, {}, False, None),
        (302, {"Location": "/elsewhere"}, False, None),  # redirects are not followed
    ],
)
async def test_webhook_answers_decide_retriable_or_final(
    target: tuple[Target, str],
    status: int,
    headers: dict[str, str],
    retriable: bool,
    after: float | None,
) -> None:
    t, base = target
    t.answers.append(respond(status, "nope", headers))
    applier = WebhookApplier(WebhookSettings(url=base))
    try:
        effect = await applier.apply(step())
    finally:
        await applier.close()
    assert (effect.status, effect.retriable, effect.retry_after_s) == ("failed", retriable, after)
    assert f"HTTP {status}" in effect.detail and "nope" in effect.detail
    assert len(t.requests) == 1


async def test_webhook_that_hangs_is_cut_off_by_the_timeout(target: tuple[Target, str]) -> None:
    t, base = target

    async def hang() -> web.StreamResponse:
        await t.released.wait()
        return web.Response()

    t.answers.append(hang)
    applier = WebhookApplier(WebhookSettings(url=base, timeout_s=0.3))
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        effect = await applier.apply(step())
    finally:
        await applier.close()
    assert loop.time() - started < 2
    assert (effect.status, effect.retriable) == ("failed", True)
    assert "within 0.3s" in effect.detail


async def test_webhook_answering_garbage_or_nothing_is_a_retriable_failure() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"\x00\xffthis is not HTTP\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    applier = WebhookApplier(WebhookSettings(url=f"http://127.0.0.1:{port}/x"))
    try:
        effect = await applier.apply(step())
    finally:
        await applier.close()
        server.close()
        await server.wait_closed()
    assert (effect.status, effect.retriable) == ("failed", True)
    assert "garbled" in effect.detail

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    applier = WebhookApplier(WebhookSettings(url=f"http://127.0.0.1:{closed}/x"))
    try:
        effect = await applier.apply(step())
    finally:
        await applier.close()
    assert (effect.status, effect.retriable) == ("failed", True)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_s("5") == 5.0
    assert retry_after_s("Thu, 01 Jan 2026 12:00:09 GMT", now) == 9.0
    assert retry_after_s("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0
    assert retry_after_s("soon") is None
    assert retry_after_s(None) is None


def test_webhook_needs_a_url_with_known_placeholders() -> None:
    with pytest.raises(ConfigError, match="URL"):
        WebhookApplier(WebhookSettings(url=""))
    with pytest.raises(ConfigError, match="model_id"):
        WebhookApplier(WebhookSettings(url="http://x/{rollout}"))


# --------------------------------------------------------------------------- command


SCRIPT = """\
import json, os, sys
doc = json.load(sys.stdin)
with open(os.environ["OUT"], "a") as f:
    f.write(json.dumps({"doc": doc, "component": os.environ["ROLLGUARD_COMPONENT"],
                        "key": os.environ["ROLLGUARD_IDEMPOTENCY_KEY"]}) + "\\n")
mode = os.environ.get("MODE", "ok")
if mode == "tempfail":
    print("registry busy", file=sys.stderr); sys.exit(75)
if mode == "fail":
    print("no such deployment", file=sys.stderr); sys.exit(3)
if mode == "hang":
    import time; time.sleep(30)
print(f"restored {doc['component']} to {doc['to_version']}")
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "rollback.py"
    path.write_text(SCRIPT)
    return path


async def run_script(
    script: Path, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch, **kw: Any
) -> tuple[Any, list[dict[str, Any]]]:
    out = tmp_path / "calls.jsonl"
    monkeypatch.setenv("OUT", str(out))
    monkeypatch.setenv("MODE", mode)
    applier = CommandApplier(CommandSettings(argv=[sys.executable, str(script)], **kw))
    effect = await applier.apply(step())
    calls = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return effect, calls


async def test_command_gets_the_manifest_on_stdin_and_reports_its_output(
    script: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    effect, calls = await run_script(script, tmp_path, "ok", monkeypatch)
    assert (effect.status, effect.detail) == ("applied", "restored model to v1")
    ((call,),) = [calls]
    assert call["doc"]["to_manifest"]["components"]["model"] == "v1"
    assert call["component"] == "model"
    assert call["key"] == call["doc"]["command_id"]


@pytest.mark.parametrize(
    ("mode", "retriable", "words"),
    [("tempfail", True, "exited 75: registry busy"), ("fail", False, "exited 3: no such")],
)
async def test_command_exit_codes_decide_retriable_or_final(
    script: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    retriable: bool,
    words: str,
) -> None:
    effect, calls = await run_script(script, tmp_path, mode, monkeypatch)
    assert (effect.status, effect.retriable) == ("failed", retriable)
    assert words in effect.detail
    assert len(calls) == 1


async def test_command_that_hangs_is_killed_at_the_timeout(
    script: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    effect, _ = await run_script(script, tmp_path, "hang", monkeypatch, timeout_s=0.5)
    assert loop.time() - started < 5
    assert (effect.status, effect.retriable) == ("failed", True)
    assert "longer than 0.5s" in effect.detail


async def test_command_that_does_not_exist_fails_for_good(tmp_path: Path) -> None:
    applier = CommandApplier(CommandSettings(argv=[str(tmp_path / "missing")]))
    effect = await applier.apply(step())
    assert (effect.status, effect.retriable) == ("failed", False)
    assert "cannot run" in effect.detail


# --------------------------------------------------------------------------- mlflow

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real MLflow registry on SQLite with model 'fraud' versions 1..3, alias at 3."""
    db = tmp_path_factory.mktemp("mlflow") / "registry.db"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    client.create_registered_model("fraud")
    for i in range(3):
        client.create_model_version("fraud", source=f"file:///models/fraud/{i + 1}")
    client.set_registered_model_alias("fraud", "champion", "3")
    return client, f"sqlite:///{db}"


pytestmark = pytest.mark.filterwarnings(
    # MLflow's own SQLAlchemy models use APIs SQLAlchemy 2.1 deprecates.
    "ignore::DeprecationWarning:mlflow.*",
    "ignore:.*noload.*:DeprecationWarning",
    "ignore::sqlalchemy.exc.SADeprecationWarning",
)


def mlflow_step(version_from: str, version_to: str, model_id: str = "fraud", **kw: Any) -> Step:
    cmd = command(
        model_id=model_id,
        model_version=version_from,
        from_manifest=manifest(version_from, model_id=model_id),
        to_manifest=manifest(version_to, model_id=model_id, status="known_good"),
    )
    return Step(cmd, kw.pop("component", "model"), version_from, version_to)


def mlflow_applier(uri: str, **kw: Any) -> Any:
    from rollguard_services.executor.appliers.mlflow import MlflowApplier
    from rollguard_services.executor.settings import MlflowSettings

    return MlflowApplier(MlflowSettings(tracking_uri=uri, registry_uri=uri, **kw))


async def test_mlflow_moves_the_alias_to_the_target_version_and_again_is_harmless(
    registry: Any,
) -> None:
    client, uri = registry
    applier = mlflow_applier(uri)
    first = await applier.apply(mlflow_step("3", "2"))
    again = await applier.apply(mlflow_step("3", "2"))
    assert (first.status, first.detail) == ("applied", "fraud@champion → version 2")
    assert again.status == "applied"
    assert str(client.get_model_version_by_alias("fraud", "champion").version) == "2"


async def test_mlflow_maps_model_ids_to_registered_names_and_aliases(registry: Any) -> None:
    client, uri = registry
    applier = mlflow_applier(uri, alias="prod", registered_models={"fraud-eu": "fraud"})
    effect = await applier.apply(mlflow_step("3", "1", model_id="fraud-eu"))
    assert effect.status == "applied"
    assert str(client.get_model_version_by_alias("fraud", "prod").version) == "1"


@pytest.mark.parametrize(
    ("model_id", "to", "component", "words"),
    [
        ("fraud", "9", "model", "RESOURCE_DOES_NOT_EXIST"),  # no such version
        ("nobody", "1", "model", "RESOURCE_DOES_NOT_EXIST"),  # no such registered model
        ("fraud", "v1", "model", "INVALID_PARAMETER_VALUE"),  # not an MLflow version
        ("fraud", "1", "infra", "model aliases only"),
    ],
)
async def test_mlflow_unreachable_targets_fail_for_good_and_change_nothing(
    registry: Any, model_id: str, to: str, component: str, words: str
) -> None:
    client, uri = registry
    client.set_registered_model_alias("fraud", "champion", "3")
    applier = mlflow_applier(uri)
    effect = await applier.apply(mlflow_step("3", to, model_id=model_id, component=component))
    assert (effect.status, effect.retriable) == ("failed", False)
    assert words in effect.detail
    assert str(client.get_model_version_by_alias("fraud", "champion").version) == "3"


# --------------------------------------------------------------------------- choosing


def test_appliers_are_chosen_per_model_and_component() -> None:
    s = ExecutorSettings(
        applier=None,
        appliers_by_model={"fraud": "webhook", "ranker": {"model": "mlflow", "infra": "command"}},
    )
    assert s.applier_for("fraud", "config") == "webhook"
    assert s.applier_for("ranker", "model") == "mlflow"
    assert s.applier_for("ranker", "config") is None  # no default: not configured
    assert s.applier_for("other", "model") is None
    assert s.applier_names() == {"webhook", "mlflow", "command"}


def test_an_unknown_applier_or_component_is_a_config_error_naming_the_known_ones() -> None:
    with pytest.raises(
        ConfigError, match="known: command, delta, kubernetes, mlflow, ready, registry, webhook"
    ):
        build_appliers(ExecutorSettings(appliers_by_model={"m": "argo"}))
    with pytest.raises(ValueError, match="unknown component"):
        ExecutorSettings(appliers_by_model={"m": {"features": "webhook"}})


def test_settings_read_json_and_nested_secrets_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROLLGUARD_EXECUTOR_APPLIERS_BY_MODEL", '{"fraud": "webhook"}')
    monkeypatch.setenv("ROLLGUARD_EXECUTOR_WEBHOOK__URL", "https://flags.example/rollback")
    monkeypatch.setenv("ROLLGUARD_EXECUTOR_WEBHOOK__SECRET", "hunter2")
    s = ExecutorSettings()
    assert s.applier_for("fraud", "model") == "webhook"
    assert s.webhook.url == "https://flags.example/rollback"
    assert s.webhook.secret is not None and s.webhook.secret.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s)
