"""Settings shared by every service: where Kafka is, how to reach it, where state lives.

Read from ``ROLLGUARD_*`` environment variables once, at the entrypoint; library code takes
the frozen object as an argument and never reads the environment itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class RollguardSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROLLGUARD_", frozen=True, extra="ignore")

    kafka_bootstrap: str | None = Field(
        default=None,
        description="host:port[,host:port]. Unset: start the embedded broker (rollguard up/demo).",
    )
    topic_prefix: str = Field(default="rollguard.", pattern=r"^[A-Za-z0-9._-]*$")
    partitions: int = Field(default=3, ge=1, le=1000)
    replication_factor: int = Field(default=1, ge=1, le=7)
    enable_idempotence: bool = Field(
        default=True, description="Idempotent control producers; forced off on the embedded broker."
    )
    security_protocol: SecurityProtocol = "PLAINTEXT"
    client_id: str = Field(
        default="rollguard",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="The Kafka client id; each service adds its name (rollguard-detector), each "
        "command its own (rollguard-deploy), so broker logs, quotas and ACL audits tell them apart.",
    )
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None

    connect_timeout_s: float = Field(
        default=15.0, gt=0, description="How long to wait for the broker to answer at start."
    )
    broker_outage_limit_s: float | None = Field(
        default=None,
        gt=0,
        description="How long a running service waits out a broker that went away, resending "
        "what it owes, before it gives up (exit 3). Unset: for as long as it takes.",
    )
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(default=1_000, ge=100)
    rebalance_timeout_ms: int = Field(default=5_000, ge=500)
    control_fetch_max_wait_ms: int = Field(
        default=100,
        ge=0,
        le=1_000,
        description="How long a control consumer's fetch waits at the broker for data. Apache "
        "Kafka answers as soon as data arrives, so a long wait costs nothing there (500 is "
        "fine); the embedded broker looks again only every so often within the wait "
        "(measured: 100 ms → 14 ms median, 50 ms worst extra latency per hop; 500 ms → "
        "95/233 ms), and each fetch costs it CPU: 10 ms kept an idle `rollguard up` at ~70 % "
        "of a core, 100 ms at ~23 %.",
    )

    state_dir: Path = Path(".rollguard")
    embedded_storage: Literal["disk", "memory"] = Field(
        default="disk",
        description="Where the embedded broker keeps its log: on disk under the state "
        "directory (a restart loses nothing) or in memory (faster; a restart loses every topic).",
    )
    embedded_keep_batches: int = Field(
        default=1000,
        ge=10,
        description="Record batches the embedded broker keeps on disk per partition of every "
        "topic that is not compacted (compacted ones keep the latest record per key).",
    )
    ledger_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite under state_dir."
    )
    executor_db_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the executor inbox; default sqlite."
    )
    signing_key_file: Path | None = Field(
        default=None,
        description="Ed25519 private key (PEM) of the decider; default under state_dir.",
    )
    trusted_keys_dir: Path | None = Field(
        default=None,
        description="Directory of the public keys (PEM) every consumer trusts, one folder per "
        "role (decider/, detector/, executor/, deployer/, operator/); default under state_dir.",
    )
    keys_dir: Path | None = Field(
        default=None,
        description="Directory of this installation's private keys, <role>.pem (the decider's "
        "is signing_key_file); default state_dir/keys.",
    )
    signed_events: Literal["require", "warn"] = Field(
        default="require",
        description="require: a control event that is not signed by a key trusted for its type "
        "is refused (dead-lettered, reason untrusted). warn: unsigned ones are taken, with a "
        "warning and a count, while producers are moved to signing; a bad signature or an "
        "untrusted key is refused all the same.",
    )
    tokens_file: Path | None = Field(
        default=None,
        description="YAML of {name, role, sha256} for approvals; default under state_dir.",
    )
    token: SecretStr | None = Field(
        default=None, description="Your role token, for approve / rollback / deploy commands."
    )
    policy_path: Path | None = Field(
        default=None,
        description="Policy file or directory; default ./policies/ when present, else built-in.",
    )

    probe_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="`rollguard run SERVICE` serves /healthz, /readyz and /metrics here; "
        "unset: not served (the API serves them for `rollguard up`).",
    )
    probe_host: str = Field(default="0.0.0.0", description="Where the probes listen.")
    api_public_url: str = Field(
        default="http://localhost:8080",
        description="Where people reach the API and dashboard: notification links point at "
        "<api_public_url>/incidents/<id>.",
    )

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @property
    def embedded(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def resolved_ledger_url(self) -> str:
        return self.ledger_url or f"sqlite:///{self.state_dir / 'ledger.db'}"

    @property
    def resolved_executor_db_url(self) -> str:
        return self.executor_db_url or f"sqlite:///{self.state_dir / 'executor.db'}"

    @property
    def resolved_signing_key_file(self) -> Path:
        return self.signing_key_file or self.state_dir / "keys" / "signing.pem"

    def key_file(self, role: str) -> Path:
        """The private key a service of ``role`` signs with."""
        if role == "decider":
            return self.resolved_signing_key_file
        return (self.keys_dir or self.state_dir / "keys") / f"{role}.pem"

    @property
    def resolved_trusted_keys_dir(self) -> Path:
        return self.trusted_keys_dir or self.state_dir / "keys" / "trusted"

    @property
    def resolved_tokens_file(self) -> Path:
        return self.tokens_file or self.state_dir / "tokens.yaml"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"
