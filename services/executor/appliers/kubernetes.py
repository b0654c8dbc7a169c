"""The kubernetes applier: sets what serves a model on Kubernetes to the target version, with
the official client (``kubernetes`` on PyPI), for where most models are served.

Per model (``ROLLGUARD_EXECUTOR_KUBERNETES__TARGETS``): a ``Deployment`` or an Argo Rollouts
``Rollout`` whose serving container's image names the version (``image`` with ``{version}``), or
a KServe ``InferenceService`` whose predictor's ``storageUri`` does. One step reads the object
and, unless it serves the target already (then it is applied without a write: a retry, a
redelivery), patches it — the container list as read with the one image changed (a JSON merge
patch replaces lists whole), annotated with the command id. Argo Rollouts rolls the new pod
template out as it rolls any out (an abort of a canary in progress is its own); KServe moves
its traffic the same way. A 404 or 403 is final; a conflict, a 5xx, a timeout or a refused
connection is retried by the executor.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from rollguard.errors import ConfigError
from rollguard_services.executor.appliers.base import Effect, Step
from rollguard_services.executor.settings import KubernetesSettings, KubernetesTarget

#: (group, version, plural) of the custom resources it patches.
ROLLOUT = ("argoproj.io", "v1alpha1", "rollouts")
INFERENCE_SERVICE = ("serving.kserve.io", "v1beta1", "inferenceservices")
ANNOTATION = "rollguard.io/command-id"
_RETRIABLE = {408, 409, 425, 429, 500, 502, 503, 504}


class KubernetesApplier:
    name = "kubernetes"

    def __init__(self, settings: KubernetesSettings) -> None:
        self.settings = settings
        self._client: Any = None

    def _api(self) -> Any:
        if self._client is None:
            from kubernetes import client, config

            if self.settings.host is not None:
                configuration = client.Configuration()
                configuration.host = self.settings.host
            elif self.settings.in_cluster:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
                configuration = client.Configuration.get_default_copy()
            else:
                try:
                    config.load_kube_config(  # type: ignore[no-untyped-call]
                        config_file=self.settings.kubeconfig
                    )
                except (OSError, config.ConfigException) as exc:
                    raise ConfigError(f"the kubernetes applier: no kubeconfig ({exc})") from exc
                configuration = client.Configuration.get_default_copy()
            self._client = client.ApiClient(configuration)
        return self._client

    async def apply(self, step: Step) -> Effect:
        target = self.settings.targets.get(step.command.model_id)
        if target is None:
            return Effect(
                "failed",
                f"no Kubernetes target for {step.command.model_id} "
                "(ROLLGUARD_EXECUTOR_KUBERNETES__TARGETS)",
            )
        return await asyncio.to_thread(self._apply, target, step)

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None

    def _apply(self, target: KubernetesTarget, step: Step) -> Effect:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        where = f"{target.kind} {target.namespace}/{target.name}"
        try:
            if target.kind == "inferenceservice":
                return self._inference_service(target, step, where)
            return self._pod_template(target, step, where)
        except ApiException as exc:
            said = f"{where}: {exc.status} {exc.reason}"
            return Effect("failed", said, retriable=exc.status in _RETRIABLE)
        except (HTTPError, OSError) as exc:  # the API server away
            return Effect("failed", f"{where}: {exc}"[:300], retriable=True)

    def _pod_template(self, target: KubernetesTarget, step: Step, where: str) -> Effect:
        from kubernetes import client

        assert target.image is not None  # checked by _check
        want = target.image.format(version=step.to_version)
        timeout = self.settings.timeout_s
        if target.kind == "deployment":
            apps = client.AppsV1Api(self._api())
            obj = apps.read_namespaced_deployment(
                target.name, target.namespace, _request_timeout=timeout
            ).to_dict()
            containers = obj["spec"]["template"]["spec"]["containers"]
        else:
            custom = client.CustomObjectsApi(self._api())
            obj = cast(
                "dict[str, Any]",
                custom.get_namespaced_custom_object(
                    *ROLLOUT[:2], target.namespace, ROLLOUT[2], target.name,
                    _request_timeout=timeout,
                ),
            )  # fmt: skip
            containers = obj["spec"]["template"]["spec"]["containers"]
        index = _container(containers, target.container)
        if index is None:
            return Effect("failed", f"{where} has no container {target.container!r}")
        had = containers[index]["image"]
        if had == want:
            return Effect("applied", f"{where} serves {want} already")
        containers = [dict(c) for c in containers]
        containers[index]["image"] = want
        body = {
            "metadata": {"annotations": {ANNOTATION: step.command.command_id}},
            "spec": {"template": {"spec": {"containers": _plain(containers)}}},
        }
        if target.kind == "deployment":
            apps.patch_namespaced_deployment(
                target.name, target.namespace, body, _request_timeout=timeout
            )
        else:
            custom.patch_namespaced_custom_object(
                *ROLLOUT[:2], target.namespace, ROLLOUT[2], target.name, body,
                _request_timeout=timeout,
            )  # fmt: skip
        return Effect("applied", f"{where}: {had} → {want}")

    def _inference_service(self, target: KubernetesTarget, step: Step, where: str) -> Effect:
        from kubernetes import client

        assert target.storage_uri is not None
        want = target.storage_uri.format(version=step.to_version)
        timeout = self.settings.timeout_s
        custom = client.CustomObjectsApi(self._api())
        group, version, plural = INFERENCE_SERVICE
        obj = cast(
            "dict[str, Any]",
            custom.get_namespaced_custom_object(
                group, version, target.namespace, plural, target.name, _request_timeout=timeout
            ),
        )
        model = obj.get("spec", {}).get("predictor", {}).get("model", {})
        had = model.get("storageUri")
        if had == want:
            return Effect("applied", f"{where} serves {want} already")
        body = {
            "metadata": {"annotations": {ANNOTATION: step.command.command_id}},
            "spec": {"predictor": {"model": {"storageUri": want}}},
        }
        custom.patch_namespaced_custom_object(
            group, version, target.namespace, plural, target.name, body, _request_timeout=timeout
        )
        return Effect("applied", f"{where}: storageUri {had} → {want}")


def check(settings: KubernetesSettings) -> None:
    """At start: every target says how a version shows on it."""
    for model_id, target in settings.targets.items():
        needs = "storage_uri" if target.kind == "inferenceservice" else "image"
        if getattr(target, needs) is None:
            raise ConfigError(
                f"ROLLGUARD_EXECUTOR_KUBERNETES__TARGETS: {model_id} ({target.kind}) needs {needs}"
            )


def _container(containers: list[dict[str, Any]], name: str | None) -> int | None:
    if name is None:
        return 0 if containers else None
    return next((i for i, c in enumerate(containers) if c.get("name") == name), None)


def _plain(containers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The containers as the API takes them: the client's snake_case dicts (a Deployment read
    through the typed model) back in the API's camelCase, nulls left out."""

    def camel(key: str) -> str:
        head, *rest = key.split("_")
        return head + "".join(part.title() for part in rest)

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {camel(k): walk(v) for k, v in node.items() if v is not None}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out: list[dict[str, Any]] = walk(containers)
    return out
