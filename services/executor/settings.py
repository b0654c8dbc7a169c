"""Executor settings (ROLLGUARD_EXECUTOR_*)."""

from __future__ import annotations

import socket

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ExecutorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROLLGUARD_EXECUTOR_", frozen=True, extra="ignore")

    group_id: str = "rollguard-executor"
    executor_id: str = Field(default_factory=lambda: f"executor@{socket.gethostname()}")
    applier: str = Field(default="registry", description="Which applier acts on commands.")
    retry_initial_s: float = Field(default=0.2, gt=0)
    retry_max_s: float = Field(default=5.0, gt=0)
