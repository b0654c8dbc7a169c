"""API settings (ROLLGUARD_API_*): where it listens and how long an action waits."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROLLGUARD_API_", frozen=True, extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address to listen on (0.0.0.0 in a pod).")
    port: int = Field(default=8080, ge=0, le=65535, description="0: any free port (tests).")
    wait_max_s: float = Field(
        default=120.0, gt=0, description="Longest an action may wait for its answer."
    )
    verify_every_s: float = Field(
        default=60.0, gt=0, description="How often the ledger is verified in the background."
    )
    refresh_s: float = Field(
        default=2.0, gt=0, description="How often the dashboard asks for what changed."
    )
    alertmanager_token_file: Path | None = Field(
        default=None,
        description="The bearer secret Alertmanager posts alerts with (one line, mode 0600); "
        "unset: state_dir/alertmanager.token when it exists (rollguard up makes it), else the "
        "receiver is off.",
    )

    def alertmanager_secret_path(self, state_dir: Path) -> Path | None:
        if self.alertmanager_token_file is not None:
            return self.alertmanager_token_file
        default = state_dir / ALERTMANAGER_TOKEN
        return default if default.exists() else None


#: Where `rollguard up` keeps the Alertmanager receiver's secret, under the state directory.
ALERTMANAGER_TOKEN = "alertmanager.token"
