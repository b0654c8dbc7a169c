"""Role tokens: who may request and approve what, proven without revealing anything reusable.

A token is a random secret handed to one person. It is never configured and never travels:
the CLI derives an Ed25519 key from it (HKDF-SHA256, ``person_signer``) and signs the
person's requests and approvals with that key. The tokens file (``{name, role, key_id,
public_key}`` per person) holds only the public half, so neither the file, the topics nor
the ledger hold anything that lets a reader act as someone else: copying an approval's
fields into a new one breaks its signature, and sending a signed one again is a replay the
decider refuses (``rollguard_services.decider``: one use per event, and a time limit).
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from rollguard.errors import ConfigError, yaml_problem
from rollguard.policy import Role
from rollguard.secrets import check_private, write_private
from rollguard.signing import Retired, Signer, Trust, key_id

ROLES: tuple[str, ...] = get_args(Role)

#: Binds the derived key to rollguard and to this derivation; a new scheme changes it.
_PERSON_KEY_SALT = b"rollguard person key v1"


def person_signer(token: str) -> Signer:
    """The Ed25519 key a token holder signs requests and approvals with, derived from the
    token alone (the same token, the same key, on any machine)."""
    seed = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=_PERSON_KEY_SALT, info=b"ed25519"
    ).derive(token.strip().encode())
    private = Ed25519PrivateKey.from_private_bytes(seed)
    return Signer(private, key_id(private.public_key()), "operator")


def _raw_public(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


@dataclass(frozen=True)
class Identity:
    name: str
    role: str


class TokenRegistry:
    """The people of the tokens file, by the key id of the key their token derives."""

    def __init__(
        self,
        identities: dict[str, Identity] | None = None,
        keys: dict[str, Ed25519PublicKey] | None = None,
        legacy: int = 0,
        revoked: dict[str, Retired] | None = None,
    ) -> None:
        self._by_key = dict(identities or {})
        self.keys = dict(keys or {})
        #: Entries of an older rollguard (a token's SHA-256, which approvals carried and
        #: anyone could copy): ignored, their holders need a new token.
        self.legacy = legacy
        #: People whose token was revoked (``rollguard tokens revoke``), by key id: nothing
        #: they sign now is taken; what the ledger recorded before keeps their word.
        self.revoked = dict(revoked or {})

    def __len__(self) -> int:
        return len(self._by_key)

    def lookup(self, key_id: str) -> Identity | None:
        return self._by_key.get(key_id)

    @classmethod
    def of_tokens(cls, people: dict[str, Identity]) -> TokenRegistry:
        """A registry of ``{token: identity}`` (tests, fixed set-ups)."""
        signers = {token: person_signer(token) for token in people}
        return cls(
            {signers[t].key_id: who for t, who in people.items()},
            {s.key_id: s.private.public_key() for s in signers.values()},
        )

    def trust(self, base: Trust, *, history: bool = False) -> Trust:
        """``base`` and, as operator keys, the keys of the people here: what a consumer of
        requests and approvals checks their signatures against. With ``history``, revoked
        people's keys too, for what was recorded before their revocation."""
        trusted = base.with_keys("operator", self.keys)
        if not history:
            return trusted
        return Trust(trusted.keys, trusted.unsigned, {**self.revoked, **trusted.retired})

    @classmethod
    def load(cls, path: Path) -> TokenRegistry:
        """Read the tokens file; a missing file is an empty registry (nobody may approve)."""
        identities: dict[str, Identity] = {}
        keys: dict[str, Ed25519PublicKey] = {}
        revoked: dict[str, Retired] = {}
        legacy = 0
        for i, entry in enumerate(_token_entries(path)):
            if not isinstance(entry, dict):
                raise ConfigError(f"{path}: tokens[{i}] is not a mapping")
            name, role, kid = entry.get("name"), entry.get("role"), entry.get("key_id")
            if "sha256" in entry and "public_key" not in entry:
                legacy += 1
                continue
            public = _public_of(entry.get("public_key"))
            if not name or role not in ROLES or public is None or kid != key_id(public):
                raise ConfigError(
                    f"{path}: tokens[{i}] needs name, role (one of {', '.join(ROLES)}), "
                    "public_key (base64 of a raw Ed25519 key) and its key_id"
                )
            revoked_at = entry.get("revoked_at")
            if revoked_at is not None:
                try:
                    at = datetime.fromisoformat(str(revoked_at))
                except ValueError as exc:
                    raise ConfigError(
                        f"{path}: tokens[{i}].revoked_at: not an ISO 8601 time ({revoked_at!r})"
                    ) from exc
                revoked[kid] = Retired(
                    "operator", public, at if at.tzinfo else at.replace(tzinfo=UTC)
                )
                continue
            identities[kid] = Identity(str(name), str(role))
            keys[kid] = public
        return cls(identities, keys, legacy, revoked)


@dataclass(frozen=True)
class TokenHolder:
    """One entry of the tokens file as `rollguard tokens list` shows it (no secret in it:
    the file holds public keys only)."""

    name: str
    role: str
    key_id: str
    revoked_at: str | None = None
    #: An older rollguard's entry (a token's SHA-256): ignored, its holder needs a new token.
    legacy: bool = False


def token_holders(path: Path) -> list[TokenHolder]:
    """Who the tokens file names, in its order; ConfigError for a file the decider refuses."""
    TokenRegistry.load(path)  # the same checks the decider makes
    out = []
    for entry in _token_entries(path):
        legacy = "sha256" in entry and "public_key" not in entry
        out.append(
            TokenHolder(
                name=str(entry.get("name", "?")),
                role=str(entry.get("role", "?")),
                key_id=str(entry.get("key_id", "")) if not legacy else "",
                revoked_at=str(entry["revoked_at"]) if entry.get("revoked_at") else None,
                legacy=legacy,
            )
        )
    return out


def _public_of(text: Any) -> Ed25519PublicKey | None:
    if not isinstance(text, str):
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except ValueError:
        return None


class TokenSource:
    """The tokens file as it is now: reloaded when it changes (created, edited, removed),
    checked at most once per ``min_interval_s``. A file that does not load keeps the last good
    registry and says why (``last_error``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current = TokenRegistry.load(path)
        self.last_error: str | None = None
        self._stamp = self._mtime()
        self._checked = 0.0

    def _mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime_ns / 1e9
        except OSError:
            return None

    def refresh(self, min_interval_s: float = 1.0, *, force: bool = False) -> bool:
        """True when a new registry is in force."""
        now = time.monotonic()
        if not force and now - self._checked < min_interval_s:
            return False
        self._checked = now
        stamp = self._mtime()
        if not force and stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self.current, self.last_error = TokenRegistry.load(self.path), None
        except ConfigError as exc:
            self.last_error = str(exc)
            return False
        return True


def _token_entries(path: Path) -> list[Any]:
    """The ``tokens`` list of a tokens file (none when it does not exist); ConfigError, in one
    line, for a file group or others may read or write, or that is not YAML or not shaped as
    one."""
    if not path.exists():
        return []
    check_private(path, "tokens file")  # who may approve: nobody else edits it
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_problem(path, exc)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from exc
    entries = doc.get("tokens") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(entries, list | None):
        raise ConfigError(f"{path}: a tokens file is a mapping with a list under 'tokens'")
    return list(entries or [])


def _write_entries(path: Path, entries: list[Any]) -> None:
    """The tokens file, written whole, mode 0600 from its first byte."""
    write_private(path, yaml.safe_dump({"tokens": entries}, sort_keys=False).encode())


def create_token(path: Path, name: str, role: str) -> str:
    """Add a person with a new random token to the tokens file (the public key it derives,
    not the token); return the token, to be shown once."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; known: {', '.join(ROLES)}")
    if not name.strip() or not name.isprintable() or len(name) > 128:
        raise ConfigError(f"--name {name[:40]!r}: give a person's name (printable, 1-128 chars)")
    entries = _token_entries(path)
    if any(
        isinstance(e, dict) and e.get("name") == name and "revoked_at" not in e for e in entries
    ):
        raise ConfigError(
            f"{name} has a token already; rollguard tokens revoke --name {name} first"
        )
    token = secrets.token_urlsafe(32)
    person = person_signer(token)
    entries.append(
        {
            "name": name,
            "role": role,
            "key_id": person.key_id,
            "public_key": _raw_public(person.private.public_key()),
        }
    )
    _write_entries(path, entries)
    return token


def revoke_token(path: Path, name: str, at: datetime) -> int:
    """Mark every token of ``name`` revoked at ``at`` (kept in the file, for the ledger's
    history); how many were. Nothing they sign from then on is taken."""
    entries = _token_entries(path)
    hit = 0
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name and "revoked_at" not in entry:
            entry["revoked_at"] = at.isoformat()
            hit += 1
    if hit:
        _write_entries(path, entries)
    return hit
