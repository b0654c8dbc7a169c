"""Ledger settings (ROLLGUARD_LEDGER_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class LedgerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROLLGUARD_LEDGER_", frozen=True, extra="ignore")

    group_id: str = Field(
        default="rollguard-ledger",
        description="Run one ledger consumer per chain: the chain has a single writer.",
    )
    max_batch: int = Field(default=500, ge=1)
