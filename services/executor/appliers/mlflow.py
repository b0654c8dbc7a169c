"""The MLflow applier: points a registered model's alias (``champion`` by default) at the
target model version, so servers that load ``models:/<name>@champion`` serve it.

Only the model component lives in a registry; map a level-2 rollback's other components to
another applier (``appliers_by_model``). Model versions are MLflow's version numbers. The
MLflow client is synchronous: calls run in a worker thread. Needs the extra
``rollguard[mlflow]``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rollguard.errors import ConfigError
from rollguard_services.executor.appliers.base import Effect, Step
from rollguard_services.executor.settings import MlflowSettings

#: MLflow error codes that no retry can fix: the model or version is not there, or is wrong.
_FINAL_ERRORS = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "PERMISSION_DENIED"}


class MlflowApplier:
    name = "mlflow"

    def __init__(self, settings: MlflowSettings) -> None:
        try:
            from mlflow import MlflowClient
        except ImportError:
            raise ConfigError(
                "the mlflow applier needs MLflow: pip install 'rollguard[mlflow]'"
            ) from None
        self.settings = settings
        self._client: Any = MlflowClient(
            tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri
        )

    def registered_model(self, model_id: str) -> str:
        return self.settings.registered_models.get(model_id, model_id)

    async def apply(self, step: Step) -> Effect:
        if step.component != "model":
            return Effect(
                "failed",
                f"mlflow sets model aliases only; map {step.component} of "
                f"{step.command.model_id} to another applier (appliers_by_model)",
            )
        return await asyncio.to_thread(
            self._set_alias, self.registered_model(step.command.model_id), step.to_version
        )

    def _set_alias(self, name: str, version: str) -> Effect:
        from mlflow.exceptions import MlflowException

        alias = self.settings.alias
        try:
            # Fails (RESOURCE_DOES_NOT_EXIST) before anything changes when the target is missing.
            self._client.get_model_version(name, version)
            self._client.set_registered_model_alias(name, alias, version)
            now = self._client.get_model_version_by_alias(name, alias).version
        except MlflowException as exc:
            code = exc.error_code
            return Effect(
                "failed", f"mlflow {code}: {exc.message}"[:500], code not in _FINAL_ERRORS
            )
        except OSError as exc:  # the tracking server or its database cannot be reached
            return Effect("failed", f"mlflow unreachable: {exc!r}"[:500], retriable=True)
        if str(now) != version:
            return Effect(
                "failed", f"{name}@{alias} reads {now} after setting it to {version}", True
            )
        return Effect("applied", f"{name}@{alias} → version {version}")

    async def close(self) -> None:
        return None
