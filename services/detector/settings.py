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
    lag_warn_records: int = Field(
        default=50_000,
        ge=1,
        description="Say `falling_behind` (at most every 10 s) while this many records or more "
        "wait behind the batch just folded.",
    )
    version_ttl_s: float = Field(
        default=3600.0, gt=0, description="Forget a version that sent nothing for this long."
    )
    tick_s: float = Field(default=0.1, gt=0, description="How often idle windows are closed.")
    window_events: int = Field(
        default=0,
        ge=0,
        description="Also close a prediction window after this many events (0: time only).",
    )
    rapid_span_windows: int = Field(
        default=1,
        ge=1,
        le=60,
        description="Rapid-tier tests run over the last this many windows (sliding); 1: tumbling.",
    )
    baseline_events: int = Field(
        default=5_000, ge=200, description="Capture a known-good baseline from this many events."
    )
    baseline_seconds: float = Field(
        default=600.0, gt=0, description="...or from what arrived in this long, if fewer."
    )
    unknown_version_wait_ms: int = Field(
        default=50,
        ge=0,
        description="Wait for a manifest before dead-lettering an unknown version.",
    )
    lateness_s: float = Field(
        default=2.0,
        ge=0,
        description="Close a prediction window once events this much later arrive.",
    )
    idle_close_s: float = Field(
        default=1.0, gt=0, description="...or once nothing reached it for this long (wall time)."
    )
    traffic_interval_s: float = Field(
        default=2.0,
        gt=0,
        description="How often each version's traffic is reported (topics.TRAFFIC): what the "
        "decider counts before it calls a restored version verified.",
    )
    table_load_timeout_s: float = Field(default=10.0, gt=0)
    resign_baselines: bool = Field(
        default=True,
        description="At start, sign again with the detector key of now the baselines an "
        "earlier, still trusted detector key signed (a routine rotation). Set false after a "
        "key leaked: what the leaked key signed would be vouched for by the new one; capture "
        "or import the baselines again instead.",
    )
    seed: int | None = Field(
        default=None, description="Reservoir sampling seed (tests, benchmarks)."
    )
