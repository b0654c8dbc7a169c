"""Ed25519-signed checkpoints of the chain's head, kept outside the ledger table.

A checkpoint (``rollguard.events.LedgerCheckpoint``) says "after ``size`` entries the head
hash was ``head_hash``", signed by the ledger's own key. Someone who can rewrite the table
(the owner, triggers disabled) can cut its tail or rebuild every hash after a change and
still get a chain that verifies; they cannot produce a checkpoint that vouches for the new
head without the private key. Checkpoints are appended one JSON object per line to a file
(fsynced) and published to the ledger-checkpoints topic, the witness: whoever can write the
state directory (the file, the database, even the key) cannot take a published checkpoint
back, so a cut tail, deleted checkpoints or a re-signed rewrite still show against it.
"""

from __future__ import annotations

import asyncio
import base64
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from rollguard import topics
from rollguard.bus import read_topic
from rollguard.errors import LedgerError
from rollguard.events import LedgerCheckpoint
from rollguard.logs import get_logger
from rollguard.settings import RollguardSettings
from rollguard.signing import Signer

log = get_logger("rollguard.ledger")


def sign_checkpoint(signer: Signer, size: int, head_hash: str, ts: datetime) -> LedgerCheckpoint:
    unsigned = LedgerCheckpoint(size=size, head_hash=head_hash, ts=ts, key_id=signer.key_id)
    sig = signer.private.sign(unsigned.signed_bytes())
    return unsigned.model_copy(update={"signature": base64.b64encode(sig).decode()})


def signature_problem(cp: LedgerCheckpoint, trusted: dict[str, Ed25519PublicKey]) -> str | None:
    """None when a trusted key signed exactly this checkpoint; else why not."""
    public = trusted.get(cp.key_id)
    if public is None:
        return f"signed by key {cp.key_id}, which is not trusted"
    try:
        public.verify(base64.b64decode(cp.signature, validate=True), cp.signed_bytes())
    except (InvalidSignature, ValueError):
        return "signature does not match"
    return None


@dataclass(frozen=True)
class CheckpointRead:
    """Checkpoints of a file in order, and its lines that are not checkpoints (line numbers)."""

    checkpoints: list[LedgerCheckpoint]
    unreadable_lines: list[int]


class CheckpointFile:
    """Append-only JSON-lines file of checkpoints."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, cp: LedgerCheckpoint) -> None:
        """Write one line and fsync it; LedgerError (retriable) when the disk refuses."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(cp.encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise LedgerError(f"cannot write checkpoint file {self.path}: {exc}") from exc

    def read(self) -> CheckpointRead:
        if not self.path.exists():
            return CheckpointRead([], [])
        good: list[LedgerCheckpoint] = []
        bad: list[int] = []
        try:
            lines = self.path.read_bytes().splitlines()
        except OSError as exc:
            raise LedgerError(f"cannot read checkpoint file {self.path}: {exc}") from exc
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                good.append(LedgerCheckpoint.model_validate_json(line))
            except ValidationError:
                bad.append(number)
        return CheckpointRead(good, bad)

    def last(self) -> LedgerCheckpoint | None:
        found = self.read().checkpoints
        return max(found, key=lambda c: c.size) if found else None


@dataclass(frozen=True)
class WitnessRead:
    """What the witness topic held: the checkpoints a trusted key signed, and how many of
    its records were anything else (unreadable, untrusted key, bad signature): anyone who can
    write the topic can add noise, never a checkpoint."""

    checkpoints: list[LedgerCheckpoint]
    ignored: int = 0
    #: Well-formed checkpoints no trusted key signed: the checkpoint key was replaced (a
    #: state-directory attacker making their own), or something else writes the topic.
    untrusted: list[LedgerCheckpoint] = field(default_factory=list)


def witnessed_valid(
    records: list[bytes | None], trusted: dict[str, Ed25519PublicKey]
) -> WitnessRead:
    """The witness topic's values, sorted into trusted checkpoints and the rest."""
    good: list[LedgerCheckpoint] = []
    untrusted: list[LedgerCheckpoint] = []
    ignored = 0
    for value in records:
        try:
            cp = LedgerCheckpoint.model_validate_json(value or b"")
        except ValidationError:
            ignored += 1
            continue
        (good if signature_problem(cp, trusted) is None else untrusted).append(cp)
    return WitnessRead(good, ignored, untrusted)


async def witnessed(
    settings: RollguardSettings, trusted: dict[str, Ed25519PublicKey], timeout_s: float = 10.0
) -> WitnessRead:
    """The witness topic, read to its end; BrokerUnavailable when it cannot be."""
    records = await read_topic(settings, topics.LEDGER_CHECKPOINTS.name, timeout_s=timeout_s)
    return witnessed_valid([r.value for r in records], trusted)


class Witness:
    """Publishes each checkpoint to the witness topic, in order; one the broker did not take
    is kept and sent again before the next (``pending``), never dropped."""

    def __init__(self, producer: AIOKafkaProducer, settings: RollguardSettings) -> None:
        self.producer = producer
        self.topic = settings.topic(topics.LEDGER_CHECKPOINTS.name)
        self.pending: list[LedgerCheckpoint] = []
        self.published = 0
        #: Loop time before which a failed send is not tried again.
        self.retry_at = 0.0

    async def publish(self, cp: LedgerCheckpoint | None = None, timeout_s: float = 10.0) -> bool:
        """Send ``cp`` after what is pending; False (kept for later) when the broker does not
        take it within ``timeout_s``."""
        if cp is not None:
            self.pending.append(cp)
        while self.pending:
            head = self.pending[0]
            try:
                await asyncio.wait_for(
                    self.producer.send_and_wait(self.topic, head.encode(), key=b"ledger"),
                    timeout_s,
                )
            except (KafkaError, TimeoutError) as exc:
                self.retry_at = asyncio.get_running_loop().time() + timeout_s
                log.warning(
                    "witness_failed", size=head.size, pending=len(self.pending), error=str(exc)
                )
                return False
            self.pending.pop(0)
            self.published += 1
        return True
