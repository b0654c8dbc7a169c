"""Notifier settings (ROLLGUARD_NOTIFIER_*): channels, routing by tier, retries.

Routing lives here for now; it moves to the policy file once policies carry it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

KNOWN_CHANNELS = ("pagerduty", "slack", "webhook")


class NotifierSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROLLGUARD_NOTIFIER_", frozen=True, extra="ignore")

    group_id: str = "rollguard-notifier"
    page_drills: bool = Field(
        default=False,
        description="Notify for drill models (rollguard drill) as for real ones; off: never.",
    )
    slack_webhook_url: SecretStr | None = Field(
        default=None, description="Slack incoming webhook URL; unset: no Slack channel."
    )
    pagerduty_routing_key: SecretStr | None = Field(
        default=None, description="Events API v2 integration key; unset: no PagerDuty channel."
    )
    pagerduty_url: str = "https://events.pagerduty.com/v2/enqueue"
    webhook_url: str | None = Field(
        default=None, description="Receiver of Alertmanager-style JSON; unset: no webhook."
    )
    incident_base_url: str | None = Field(
        default=None,
        description="Links point at <incident_base_url><incident id>; default: the "
        "dashboard's incident page, <ROLLGUARD_API_PUBLIC_URL>/incidents/.",
    )
    unknown_tier_channels: list[str] = Field(
        default_factory=lambda: ["slack", "webhook"],
        description="Channels for an ack whose decision the notifier has not seen.",
    )
    notify_holds: bool = Field(default=False, description="Also announce 'hold' decisions.")
    max_attempts: int = Field(default=6, ge=1, description="HTTP attempts per message.")
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    retry_after_max_s: float = Field(
        default=300.0, gt=0, description="Longest Retry-After honoured; a longer one is capped."
    )
    request_timeout_s: float = Field(default=10.0, gt=0)
    slack_min_interval_s: float = Field(
        default=1.0, ge=0, description="Slack allows about one message per second per webhook."
    )
    outbox_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the outbox; default <state_dir>/notifier.db."
    )

    def resolved_outbox_url(self, state_dir: Path) -> str:
        return self.outbox_url or f"sqlite:///{state_dir / 'notifier.db'}"
