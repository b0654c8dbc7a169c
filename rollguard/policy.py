"""Policies: YAML parsed into frozen pydantic models, with per-model overrides.

A bad file fails at load with the file, the field and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rollguard.errors import ConfigError

Tier = Literal["immediate", "rapid", "delayed"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WindowPolicy(_Frozen):
    seconds: float = Field(default=1.0, gt=0, le=3600, description="Tumbling window length.")
    close_grace_s: float = Field(
        default=0.3, ge=0, le=60, description="Wall-clock wait after a window's end for stragglers."
    )


class ErrorRatePolicy(_Frozen):
    enabled: bool = True
    threshold: float = Field(
        default=0.05, gt=0, lt=1, description="Breach when the Wilson lower bound exceeds it."
    )
    min_events: int = Field(default=50, ge=1)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    tier: Tier = "immediate"


class LatencyPolicy(_Frozen):
    enabled: bool = True
    sla_ms: float = Field(default=100.0, gt=0)
    p99_multiplier: float = Field(
        default=5.0, gt=0, description="Breach when p99 > multiplier × SLA."
    )
    min_events: int = Field(default=50, ge=1)
    tier: Tier = "immediate"


class RollbackPolicy(_Frozen):
    cooldown_s: float = Field(default=300.0, ge=0, description="No second rollback within this.")
    command_ttl_s: float = Field(default=60.0, gt=0, description="A command expires after this.")
    automatic_tiers: tuple[Tier, ...] = ("immediate", "rapid")


class ModelPolicy(_Frozen):
    window: WindowPolicy = WindowPolicy()
    error_rate: ErrorRatePolicy = ErrorRatePolicy()
    latency: LatencyPolicy = LatencyPolicy()
    rollback: RollbackPolicy = RollbackPolicy()


class PolicySet(_Frozen):
    """Defaults for every model plus per-model overrides (merged field by field)."""

    version: Literal[1] = 1
    defaults: ModelPolicy = ModelPolicy()
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def for_model(self, model_id: str) -> ModelPolicy:
        override = self.models.get(model_id)
        if not override:
            return self.defaults
        merged = _deep_merge(self.defaults.model_dump(), override)
        return ModelPolicy.model_validate(merged)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(exc: ValidationError, path: Path) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return f"{path}: {where}: {first['msg']} (got {first.get('input')!r})"


def load_policy(path: Path) -> PolicySet:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"policy file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        policy = PolicySet.model_validate(raw)
        for model_id in policy.models:
            policy.for_model(model_id)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc
    return policy


SHIPPED_POLICY = Path("policies/default.yaml")


def resolve_policy(path: Path | None) -> PolicySet:
    """The policy at ``path``; without one, ./policies/default.yaml or the built-in defaults."""
    if path is not None:
        return load_policy(path)
    if SHIPPED_POLICY.is_file():
        return load_policy(SHIPPED_POLICY)
    return PolicySet()
