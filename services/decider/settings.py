"""Decider settings (ROLLGUARD_DECIDER_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The faust table of per-model state (its changelog topic is named after it).
STATE_TABLE = "model-state"


class DeciderSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROLLGUARD_DECIDER_", frozen=True, extra="ignore")

    app_id: str = Field(default="decider", description="faust app id, after the topic prefix.")
    tick_s: float = Field(
        default=0.5, gt=0, description="How often verification, approval expiry and bake run."
    )
    people_input_ttl_s: float = Field(
        default=600.0,
        gt=0,
        description="A rollback request or approval made longer ago than this (its ts) is "
        "refused: a signed one read off a topic or the ledger cannot be sent again later.",
    )
    traffic_grace_s: float = Field(
        default=10.0,
        ge=0,
        description="A verification short of traffic waits this long past its window for the "
        "detector's last traffic reports before it is called unverifiable.",
    )
    rescan_s: float = Field(
        default=30.0,
        gt=0,
        description="The timer reads every stored state this often anyway (a safety net: "
        "between rescans it looks only at the models whose deadline came).",
    )
    breach_concurrency: int = Field(
        default=32,
        ge=1,
        description="Breaches decided at once (of different models; a model's own are taken "
        "one at a time). 1: strictly in the order read.",
    )
    manifest_wait_s: float = Field(
        default=1.5,
        ge=0,
        description="A fresh breach of a version the decider has no manifest of waits this "
        "long for its deployment to arrive (the two come on different topics, in either "
        "order) before it is decided; once per version.",
    )
    store: str = Field(
        default="memory://",
        description="faust table store; tables are rebuilt from their changelog topics.",
    )

    def ticks_topic(self, topic_prefix: str) -> str:
        """The internal topic the timer sends ticks on (see app.py)."""
        return f"{topic_prefix}{self.app_id}-ticks"

    def changelog_topic(self, topic_prefix: str) -> str:
        """The compacted topic faust keeps the model-state table in."""
        return f"{topic_prefix}{self.app_id}-{STATE_TABLE}-changelog"
