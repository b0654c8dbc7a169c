"""Ed25519 signing of rollback commands over canonical bytes.

The decider holds the private key; executors hold only public keys, several at once so keys
can rotate. A key's id is the first 16 hex digits of SHA-256 over its raw public bytes.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from rollguard.errors import ConfigError
from rollguard.events import RollbackCommand


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Signer:
    private: Ed25519PrivateKey
    key_id: str

    def sign(self, command: RollbackCommand) -> RollbackCommand:
        unsigned = command.model_copy(update={"key_id": self.key_id, "signature": ""})
        sig = self.private.sign(canonical_bytes(unsigned))
        return unsigned.model_copy(update={"signature": base64.b64encode(sig).decode()})


def canonical_bytes(command: RollbackCommand) -> bytes:
    """The bytes a signature covers: every field that decides what the command does."""
    body = command.model_dump(
        mode="json",
        include={
            "command_id",
            "model_id",
            "from_manifest",
            "to_manifest",
            "level",
            "issued_at",
            "expires_at",
            "nonce",
            "key_id",
        },
    )
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def generate_keypair(private_path: Path, trusted_dir: Path) -> str:
    """Write a new private key (PEM, mode 0600) and its public key into ``trusted_dir``."""
    private = Ed25519PrivateKey.generate()
    kid = key_id(private.public_key())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    trusted_dir.mkdir(parents=True, exist_ok=True)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private_path.write_bytes(pem)
    private_path.chmod(0o600)
    (trusted_dir / f"{kid}.pub").write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return kid


def load_signer(path: Path) -> Signer:
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(f"signing key {path} does not exist (rollguard keys generate)") from exc
    except ValueError as exc:
        raise ConfigError(f"signing key {path} is not a PEM private key: {exc}") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"signing key {path} is not an Ed25519 key")
    return Signer(private, key_id(private.public_key()))


def load_trusted_keys(directory: Path) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    if not directory.is_dir():
        raise ConfigError(f"trusted keys directory {directory} does not exist")
    for path in sorted(directory.glob("*.pub")):
        public = serialization.load_pem_public_key(path.read_bytes())
        if not isinstance(public, Ed25519PublicKey):
            raise ConfigError(f"{path} is not an Ed25519 public key")
        keys[key_id(public)] = public
    return keys


@dataclass(frozen=True)
class Verdict:
    """Whether an executor may act on a command; ``reason`` is a stable code when not."""

    ok: bool
    reason: str = ""
    detail: str = ""


def verify_command(
    command: RollbackCommand, trusted: dict[str, Ed25519PublicKey], now: datetime
) -> Verdict:
    if not command.signature:
        return Verdict(False, "unsigned", "command carries no signature")
    public = trusted.get(command.key_id)
    if public is None:
        return Verdict(False, "unknown_key", f"key_id {command.key_id} is not trusted")
    try:
        public.verify(base64.b64decode(command.signature, validate=True), canonical_bytes(command))
    except (InvalidSignature, ValueError):
        return Verdict(False, "bad_signature", "signature does not match the command")
    if now >= command.expires_at:
        return Verdict(False, "expired", f"expired at {command.expires_at.isoformat()}")
    return Verdict(True)
