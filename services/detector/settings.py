"""Detector settings (ROLLGUARD_DETECTOR_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DetectorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROLLGUARD_DETECTOR_", frozen=True, extra="ignore")

    group_id: str = "rollguard-detector"
    max_batch: int = Field(default=5_000, ge=1, description="Records per getmany call.")
    poll_timeout_ms: int = Field(default=100, ge=1)
    fetch_max_wait_ms: int = Field(default=50, ge=0)
    version_ttl_s: float = Field(
        default=3600.0, gt=0, description="Forget a version that sent nothing for this long."
    )
    tick_s: float = Field(default=0.1, gt=0, description="How often idle windows are closed.")
