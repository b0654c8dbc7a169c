"""What a person asks of rollguard, the same from the CLI and the API: their key from their
role token, the request or approval, sent signed and answered (rollguard.answers).

The token never leaves the caller: the CLI reads it from ROLLGUARD_TOKEN, the API from the
request's bearer credential, and both derive the person's signing key from it here
(rollguard.authority.person_signer) and sign with that. Kafka and the ledger see the signed
event and the key id, never the token.
"""

from __future__ import annotations

from pathlib import Path

from rollguard import topics
from rollguard.answers import Answer, Wait, ask
from rollguard.authority import TokenRegistry, person_signer
from rollguard.bus import publish_one, read_topic, wait_for_broker
from rollguard.errors import ConfigError, UsageError
from rollguard.events import (
    Approval,
    Decision,
    RollbackRequest,
    approval_decision_id,
    approved_decision_id,
    request_decision_id,
)
from rollguard.policy import Role
from rollguard.settings import RollguardSettings
from rollguard.signing import Signer, trust_of


class NotAllowed(UsageError):
    """A token the decider would refuse (revoked, unknown, another role's): said before
    anything is sent, not as a refusal out of sight. ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


def person(token: str | None, role: Role, tokens_file: Path, source: str) -> Signer:
    """The key the holder of ``token`` signs with as ``role``.

    Where the tokens file the decider reads is readable here (`rollguard up`, the API beside
    the decider), a token it would refuse is refused now. ``source`` names where the token
    came from, for the message (ROLLGUARD_TOKEN, the bearer token)."""
    if token is None or not token.strip():
        raise NotAllowed(f"no role token: set {source} (rollguard tokens create)", 401)
    signer = person_signer(token)
    try:
        registry = TokenRegistry.load(tokens_file) if tokens_file.exists() else None
    except PermissionError:  # not ours to read here: the decider decides
        registry = None
    except (OSError, ConfigError) as exc:  # the decider's file, broken: say so, send nothing
        raise NotAllowed(f"ROLLGUARD_TOKENS_FILE: {exc}", 503) from exc
    if registry is None:
        return signer
    revoked = registry.revoked.get(signer.key_id)
    if revoked is not None:
        raise NotAllowed(
            f"{source} was revoked at {revoked.at.isoformat()} ({tokens_file}); "
            "ask for a new one (rollguard tokens create)",
            401,
        )
    who = registry.lookup(signer.key_id)
    if who is None:
        raise NotAllowed(
            f"{source} is not a token of {tokens_file}: the decider would refuse what it signs",
            401,
        )
    if who.role != role:
        raise NotAllowed(f"{source} is {who.name}'s, whose role is {who.role}, not {role}")
    return signer


def answers_to(event: RollbackRequest | Approval) -> set[str]:
    """The ids of the decisions that answer ``event`` (rollguard.events.derived_id)."""
    if isinstance(event, RollbackRequest):
        return {request_decision_id(event.event_id)}
    return {approval_decision_id(event.event_id), approved_decision_id(event.decision_id)}


def topic_of(event: RollbackRequest | Approval) -> str:
    return topics.REQUESTS.name if isinstance(event, RollbackRequest) else topics.APPROVALS.name


async def submit(
    settings: RollguardSettings,
    event: RollbackRequest | Approval,
    signer: Signer,
    wait: Wait = "decided",
    timeout_s: float = 30.0,
) -> Answer:
    """Send ``event`` signed by ``signer`` and wait for the decider's answer (and, asked to,
    for the rollback it launches to be applied or verified)."""

    async def send() -> None:
        await publish_one(settings, topic_of(event), signer.sign(event), event.key)

    return await ask(settings, send, answers_to(event), wait, timeout_s)


async def decision_model(settings: RollguardSettings, decision_id: str) -> str | None:
    """The model of the trusted decision ``decision_id`` on the decisions topic, if any."""
    await wait_for_broker(settings)
    records = await read_topic(settings, topics.DECISIONS.name)
    trust = trust_of(settings)
    found = None
    for record in records:
        try:
            decision = Decision.model_validate_json(record.value)
        except ValueError:
            continue
        if decision.event_id == decision_id and trust.check(decision).ok:
            found = decision.model_id
    return found
