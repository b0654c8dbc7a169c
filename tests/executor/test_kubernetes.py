"""The kubernetes applier through the broker, against a fake of the Kubernetes API server.

No cluster runs here, so the API server is faked — the narrowest fake the official client
accepts: GET and PATCH of a Deployment, an Argo Rollouts Rollout and a KServe
InferenceService on loopback HTTP, applying each patch as the API server merges one (maps
merged, lists replaced). The client, the applier and the executor are the real ones: three
signed level-1 commands roll the three models back (a 503 on the first PATCH is retried), each
object serves the target and is annotated with the command, the acks are read off the topic;
a step applied again writes nothing; a target that does not exist fails at once."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from rollguard import topics
from rollguard.events import CommandAck
from rollguard.settings import RollguardSettings
from rollguard.signing import load_signer
from rollguard_services.executor.app import Executor
from rollguard_services.executor.appliers.base import Step
from rollguard_services.executor.appliers.kubernetes import ANNOTATION, KubernetesApplier
from rollguard_services.executor.settings import ExecutorSettings, KubernetesSettings
from tests.conftest import TopicReader, free_port, ledgered_acks, run_until
from tests.factories import command, manifest

pytest.importorskip("kubernetes", reason="pip install kubernetes (make test does)")

pytestmark = pytest.mark.broker

DEPLOYMENTS = "apis/apps/v1/namespaces/{ns}/deployments/{name}"
ROLLOUTS = "apis/argoproj.io/v1alpha1/namespaces/{ns}/rollouts/{name}"
ISVCS = "apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices/{name}"


def _pod_template(image: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "fraud"}},
        "spec": {
            "containers": [
                {"name": "sidecar", "image": "envoy:1.30"},
                {"name": "model", "image": image, "ports": [{"containerPort": 8080}]},
            ]
        },
    }


def _objects() -> dict[str, dict[str, Any]]:
    return {
        DEPLOYMENTS.format(ns="models", name="fraud"): {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "fraud", "namespace": "models"},
            "spec": {
                "selector": {"matchLabels": {"app": "fraud"}},
                "template": _pod_template("registry/fraud:v2"),
            },
        },
        ROLLOUTS.format(ns="models", name="ranker"): {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": "ranker", "namespace": "models"},
            "spec": {"template": _pod_template("registry/ranker:v2")},
        },
        ISVCS.format(ns="serving", name="churn"): {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": "churn", "namespace": "serving"},
            "spec": {"predictor": {"model": {"storageUri": "s3://models/churn/v2"}}},
        },
    }


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


class FakeApiServer:
    def __init__(self) -> None:
        self.objects = _objects()
        self.patches: list[tuple[str, str, dict[str, Any]]] = []
        self.fail_next_patch = 0

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path.lstrip("/")
        obj = self.objects.get(path)
        if obj is None:
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}
            return web.json_response({**status, "reason": "NotFound"}, status=404)
        if request.method == "PATCH":
            if self.fail_next_patch:
                self.fail_next_patch -= 1
                return web.json_response({"kind": "Status", "code": 503}, status=503)
            body = await request.json()
            self.patches.append((path, request.content_type, body))
            _merge(obj, body)
        return web.json_response(obj)


@pytest.fixture
async def api_server() -> AsyncIterator[tuple[FakeApiServer, str]]:
    fake = FakeApiServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield fake, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _settings(host: str) -> KubernetesSettings:
    return KubernetesSettings.model_validate(
        {
            "host": host,
            "targets": {
                "fraud": {
                    "kind": "deployment",
                    "namespace": "models",
                    "name": "fraud",
                    "container": "model",
                    "image": "registry/fraud:{version}",
                },
                "ranker": {
                    "kind": "rollout",
                    "namespace": "models",
                    "name": "ranker",
                    "container": "model",
                    "image": "registry/ranker:{version}",
                },
                "churn": {
                    "kind": "inferenceservice",
                    "namespace": "serving",
                    "name": "churn",
                    "storage_uri": "s3://models/churn/{version}",
                },
                "ghost": {
                    "kind": "deployment",
                    "namespace": "models",
                    "name": "ghost",
                    "image": "registry/ghost:{version}",
                },
            },
        }
    )


def _rollback(model_id: str) -> Any:
    return command(
        model_id=model_id,
        from_manifest=manifest("v2", model_id=model_id),
        to_manifest=manifest("v1", model_id=model_id, status="known_good"),
    )


async def test_a_deployment_a_rollout_and_an_inference_service_rolled_back(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    api_server: tuple[FakeApiServer, str],
) -> None:
    fake, host = api_server
    fake.fail_next_patch = 1  # the API server busy once: retried
    signer = load_signer(topics_ready.resolved_signing_key_file)
    commands = {m: signer.sign(_rollback(m)) for m in ("fraud", "ranker", "churn")}
    for cmd in commands.values():
        await publish(topics.COMMANDS.name, cmd)
    settings = ExecutorSettings(
        group_id="kube",
        executor_id="e",
        applier=None,
        appliers_by_model=dict.fromkeys(commands, "kubernetes"),
        kubernetes=_settings(host),
        retry_initial_s=0.05,
    )
    ex = Executor(topics_ready, settings)
    await run_until(ex, lambda: ex.counts["applied"] == 3)

    deployment = fake.objects[DEPLOYMENTS.format(ns="models", name="fraud")]
    images = {c["name"]: c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert images == {"sidecar": "envoy:1.30", "model": "registry/fraud:v1"}  # only the model's
    assert deployment["metadata"]["annotations"][ANNOTATION] == commands["fraud"].command_id
    rollout = fake.objects[ROLLOUTS.format(ns="models", name="ranker")]
    containers = rollout["spec"]["template"]["spec"]["containers"]
    assert [c["image"] for c in containers] == ["envoy:1.30", "registry/ranker:v1"]
    assert containers[1]["ports"] == [{"containerPort": 8080}]  # the rest as it was
    isvc = fake.objects[ISVCS.format(ns="serving", name="churn")]
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://models/churn/v1"
    assert len(fake.patches) == 3  # the 503 was not applied

    acks = [
        CommandAck.model_validate_json(r.value)
        for r in await reader.read(topics.ACKS.name, until=lambda r: len(r) >= 6)
    ]
    applied = {a.model_id: a.detail for a in acks if a.status == "applied"}
    ledgered = await ledgered_acks(
        topics_ready, {c.command_id for c in commands.values()}, len(acks)
    )
    assert sorted(p["status"] for p in ledgered) == sorted(a.status for a in acks)
    assert "registry/fraud:v2 → registry/fraud:v1" in applied["fraud"]
    assert "storageUri s3://models/churn/v2 → s3://models/churn/v1" in applied["churn"]

    applier = KubernetesApplier(_settings(host))
    try:
        again = await applier.apply(Step(commands["fraud"], "model", "v2", "v1"))
        assert again.status == "applied" and "already" in again.detail
        assert len(fake.patches) == 3  # nothing written the second time
        ghost = await applier.apply(Step(signer.sign(_rollback("ghost")), "model", "v2", "v1"))
        assert ghost.status == "failed" and not ghost.retriable and "404" in ghost.detail
    finally:
        await applier.close()
