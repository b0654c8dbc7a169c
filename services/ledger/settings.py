"""Ledger settings (ROLLGUARD_LEDGER_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url


class LedgerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROLLGUARD_LEDGER_", frozen=True, extra="ignore")

    group_id: str = Field(
        default="rollguard-ledger",
        description="Run one ledger consumer per chain: the chain has a single writer.",
    )
    max_batch: int = Field(
        default=2000,
        ge=1,
        description="Records stored per transaction at most: one commit (and one fsync) per "
        "batch is what bounds the append rate (benchmarks/ledger.py).",
    )
    checkpoint_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="At most this long between a new entry and a signed checkpoint covering it.",
    )
    checkpoint_file: Path | None = Field(
        default=None,
        description="JSON lines of signed checkpoints; default beside a SQLite ledger (<db>.checkpoints.jsonl), "
        "else <state_dir>/ledger-checkpoints.jsonl. "
        "Keep a copy where whoever can write the ledger database cannot.",
    )
    checkpoint_key_file: Path | None = Field(
        default=None,
        description="The ledger's Ed25519 private key (PEM); default <state_dir>/keys/ledger.pem, "
        "created on first use. Never the decider's key: executors must not trust it.",
    )
    checkpoint_trusted_dir: Path | None = Field(
        default=None,
        description="Public keys (*.pub) that may sign checkpoints; default "
        "<state_dir>/keys/ledger-trusted.",
    )
    retry_initial_s: float = Field(
        default=0.5, gt=0, description="First wait before retrying a store that failed."
    )
    retry_max_s: float = Field(default=30.0, gt=0, description="Longest wait between retries.")

    def resolved_checkpoint_file(self, ledger_url: str, state_dir: Path) -> Path:
        """Beside a SQLite ledger (a fresh database gets fresh checkpoints), else in state_dir."""
        if self.checkpoint_file is not None:
            return self.checkpoint_file
        url = make_url(ledger_url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            return Path(url.database + ".checkpoints.jsonl")
        return state_dir / "ledger-checkpoints.jsonl"

    def resolved_checkpoint_key_file(self, state_dir: Path) -> Path:
        return self.checkpoint_key_file or state_dir / "keys" / "ledger.pem"

    def resolved_checkpoint_trusted_dir(self, state_dir: Path) -> Path:
        return self.checkpoint_trusted_dir or state_dir / "keys" / "ledger-trusted"
