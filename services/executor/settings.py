"""Executor settings (ROLLGUARD_EXECUTOR_*): which applier acts for which model, and how.

Nested values are JSON (``ROLLGUARD_EXECUTOR_WEBHOOK='{"url": "..."}'``) or one field at a
time with ``__`` (``ROLLGUARD_EXECUTOR_WEBHOOK__SECRET=...``), which keeps secrets out of JSON.
"""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rollguard.errors import ConfigError

#: The components a system version is made of (rollguard.events.Components), and the steps a
#: level-3 rollback may add after restoring the feature pipeline (recomputing the features,
#: waiting until they are ready) and a level-4 one after restoring the data (retraining).
COMPONENTS = (
    "feature_pipeline",
    "config",
    "model",
    "infra",
    "data",
    "retrain",
    "recompute",
    "features_ready",
)

#: Named places where a crash test may kill the executor (ROLLGUARD_EXECUTOR_CRASH_AT).
CrashPoint = Literal["after_receive", "after_effect", "after_ack", "before_commit"]


class WebhookSettings(BaseModel):
    """POSTs each step to ``url`` (``{model_id}`` and ``{component}`` are filled in)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(default="", description="http(s) URL; {model_id} and {component} allowed.")
    secret: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key for the signature header; unset: unsigned."
    )
    signature_header: str = "X-Rollguard-Signature"
    timeout_s: float = Field(default=5.0, gt=0, description="Per attempt, connect to last byte.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra headers, e.g. a bearer token for the target."
    )
    max_retry_after_s: float = Field(
        default=30.0,
        gt=0,
        description="A longer Retry-After is cut to this (still bounded by expiry).",
    )


class MlflowSettings(BaseModel):
    """Sets ``alias`` of a registered model to the target model version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tracking_uri: str | None = Field(default=None, description="Default: MLflow's own default.")
    registry_uri: str | None = Field(default=None, description="Default: the tracking URI.")
    alias: str = Field(default="champion", min_length=1)
    registered_models: dict[str, str] = Field(
        default_factory=dict,
        description="model_id → registered model name; a model not listed uses its model_id.",
    )


class DeltaSettings(BaseModel):
    """Level 4 on Delta Lake: the table of each model's training data, restored to the data
    version of the target manifest (services/executor/appliers/delta.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tables: dict[str, str] = Field(
        default_factory=dict,
        description="JSON: model_id → table URI (a path, s3://..., gs://..., abfss://...).",
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict, description="deltalake storage options (credentials, endpoint)."
    )


class KubernetesTarget(BaseModel):
    """Where one model is served on Kubernetes, and how its version shows there."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["deployment", "rollout", "inferenceservice"] = Field(
        description="A Deployment, an Argo Rollouts Rollout, or a KServe InferenceService."
    )
    namespace: str = Field(min_length=1)
    name: str = Field(min_length=1)
    container: str | None = Field(
        default=None,
        description="Deployment / Rollout: the container serving the model (default: the first).",
    )
    image: str | None = Field(
        default=None,
        description="Deployment / Rollout: the image of a model version, {version} filled in "
        "(registry.example.com/fraud:{version}).",
    )
    storage_uri: str | None = Field(
        default=None,
        description="InferenceService: the predictor's storageUri of a version "
        "(s3://models/fraud/{version}).",
    )

    @field_validator("image", "storage_uri")
    @classmethod
    def _has_version(cls, value: str | None) -> str | None:
        if value is not None and "{version}" not in value:
            raise ValueError("must contain {version}")
        return value


class KubernetesSettings(BaseModel):
    """The kubernetes applier: patches what serves each model through the Kubernetes API."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    targets: dict[str, KubernetesTarget] = Field(
        default_factory=dict, description="JSON: model_id → where it is served."
    )
    in_cluster: bool = Field(
        default=False, description="Use the pod's service account (the executor runs in-cluster)."
    )
    kubeconfig: str | None = Field(default=None, description="Else this kubeconfig (or ~/.kube).")
    host: str | None = Field(
        default=None, description="An API server URL taken as is (a proxy, `kubectl proxy`)."
    )
    timeout_s: float = Field(default=10.0, gt=0, description="Per request.")


class ReadySettings(BaseModel):
    """The ``ready`` applier: waits until ``url`` answers 200 with ``{"ready": true}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(
        default="",
        description="http(s) URL; {model_id} and {version} (the restored feature pipeline's) "
        "filled in.",
    )
    timeout_s: float = Field(
        default=600.0, gt=0, description="Not ready after this long: the step fails."
    )
    interval_s: float = Field(default=5.0, gt=0, description="How often it asks.")
    headers: dict[str, str] = Field(default_factory=dict)


class CommandSettings(BaseModel):
    """Runs ``argv`` with the step document as JSON on stdin."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    argv: list[str] = Field(default_factory=list, description="Executable and its arguments.")
    timeout_s: float = Field(default=60.0, gt=0)
    retriable_exit_codes: list[int] = Field(
        default_factory=lambda: [75],
        description="Exit codes that mean 'try again' (75: EX_TEMPFAIL).",
    )


class ExecutorSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ROLLGUARD_EXECUTOR_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    group_id: str = "rollguard-executor"
    executor_id: str = Field(default_factory=lambda: f"executor@{socket.gethostname()}")
    applier: str | None = Field(
        default="registry",
        description="Applier for models not in appliers_by_model; null: reject such commands.",
    )
    appliers_by_model: dict[str, str | dict[str, str]] = Field(
        default_factory=dict,
        description="JSON: model_id → applier name, or → {component: applier name}.",
    )
    retry_initial_s: float = Field(default=0.2, gt=0)
    retry_max_s: float = Field(default=5.0, gt=0)
    compensation_deadline_s: float = Field(
        default=60.0, gt=0, description="How long undoing a failed level-2 rollback is retried."
    )
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    command: CommandSettings = Field(default_factory=CommandSettings)
    delta: DeltaSettings = Field(default_factory=DeltaSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    ready: ReadySettings = Field(default_factory=ReadySettings)
    crash_at: CrashPoint | None = Field(
        default=None, description="Crash tests only: SIGKILL the process at this step."
    )
    crash_after: int = Field(
        default=1, ge=1, description="Crash tests only: at the n-th time the step is reached."
    )

    @field_validator("appliers_by_model")
    @classmethod
    def _known_components(
        cls, chosen: dict[str, str | dict[str, str]]
    ) -> dict[str, str | dict[str, str]]:
        for model_id, choice in chosen.items():
            if isinstance(choice, dict) and not set(choice) <= set(COMPONENTS):
                unknown = ", ".join(sorted(set(choice) - set(COMPONENTS)))
                raise ValueError(
                    f"{model_id}: unknown component(s) {unknown}; known: {', '.join(COMPONENTS)}"
                )
        return chosen

    def applier_for(self, model_id: str, component: str) -> str | None:
        """The applier name for one component of one model; None when none is configured."""
        chosen = self.appliers_by_model.get(model_id)
        if isinstance(chosen, str):
            return chosen
        if isinstance(chosen, dict):
            return chosen.get(component, self.applier)
        return self.applier

    def applier_names(self) -> set[str]:
        names = {self.applier} if self.applier else set()
        for chosen in self.appliers_by_model.values():
            names |= {chosen} if isinstance(chosen, str) else set(chosen.values())
        return names

    def check(self, known: set[str]) -> None:
        """Fail at start, naming the known appliers, when a configured one does not exist."""
        unknown = self.applier_names() - known
        if unknown:
            raise ConfigError(
                f"unknown applier(s) {', '.join(sorted(unknown))} in ROLLGUARD_EXECUTOR_*; "
                f"known: {', '.join(sorted(known))}"
            )
