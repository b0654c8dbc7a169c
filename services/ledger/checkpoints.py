"""Ed25519-signed checkpoints of the chain's head, kept outside the ledger table.

A checkpoint says "after ``size`` entries the head hash was ``head_hash``", signed by the
ledger's own key. Someone who can rewrite the table (the owner, triggers disabled) can cut its
tail or rebuild every hash after a change and still get a chain that verifies; they cannot
produce a checkpoint that vouches for the new head without the private key. Checkpoints are
appended one JSON object per line to a file (fsynced), and optionally copied to a topic.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from rollguard.errors import LedgerError
from rollguard.signing import Signer


class Checkpoint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(ge=0, description="Entries the chain had: seq 1..size.")
    head_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="hash of entry `size`.")
    ts: AwareDatetime
    key_id: str = Field(min_length=1)
    signature: str = Field(default="", description="Base64 Ed25519 over signed_bytes().")

    def signed_bytes(self) -> bytes:
        body = self.model_dump(mode="json", include={"size", "head_hash", "ts", "key_id"})
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)

    def encode(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


def sign_checkpoint(signer: Signer, size: int, head_hash: str, ts: datetime) -> Checkpoint:
    unsigned = Checkpoint(size=size, head_hash=head_hash, ts=ts, key_id=signer.key_id)
    sig = signer.private.sign(unsigned.signed_bytes())
    return unsigned.model_copy(update={"signature": base64.b64encode(sig).decode()})


def signature_problem(cp: Checkpoint, trusted: dict[str, Ed25519PublicKey]) -> str | None:
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

    checkpoints: list[Checkpoint]
    unreadable_lines: list[int]


class CheckpointFile:
    """Append-only JSON-lines file of checkpoints."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, cp: Checkpoint) -> None:
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
        good: list[Checkpoint] = []
        bad: list[int] = []
        try:
            lines = self.path.read_bytes().splitlines()
        except OSError as exc:
            raise LedgerError(f"cannot read checkpoint file {self.path}: {exc}") from exc
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                good.append(Checkpoint.model_validate_json(line))
            except ValidationError:
                bad.append(number)
        return CheckpointRead(good, bad)

    def last(self) -> Checkpoint | None:
        found = self.read().checkpoints
        return max(found, key=lambda c: c.size) if found else None
