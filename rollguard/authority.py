"""Role tokens: who may request and approve what.

A token is a random secret handed to one person; only its SHA-256 is configured (a YAML file
of ``{name, role, sha256}``) and only its SHA-256 travels in events, so neither the topics
nor the ledger ever hold a usable token.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import yaml

from rollguard.errors import ConfigError
from rollguard.policy import Role

ROLES: tuple[str, ...] = get_args(Role)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


@dataclass(frozen=True)
class Identity:
    name: str
    role: str


class TokenRegistry:
    def __init__(self, identities: dict[str, Identity] | None = None) -> None:
        self._by_hash = dict(identities or {})

    def __len__(self) -> int:
        return len(self._by_hash)

    def lookup(self, token_sha256: str) -> Identity | None:
        return self._by_hash.get(token_sha256)

    @classmethod
    def load(cls, path: Path) -> TokenRegistry:
        """Read the tokens file; a missing file is an empty registry (nobody may approve)."""
        if not path.exists():
            return cls()
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        identities: dict[str, Identity] = {}
        for i, entry in enumerate(doc.get("tokens") or []):
            name, role, digest = entry.get("name"), entry.get("role"), entry.get("sha256")
            if not name or role not in ROLES or not isinstance(digest, str) or len(digest) != 64:
                raise ConfigError(
                    f"{path}: tokens[{i}] needs name, role (one of {', '.join(ROLES)}) and a "
                    "64-hex sha256"
                )
            identities[digest] = Identity(str(name), str(role))
        return cls(identities)


def create_token(path: Path, name: str, role: str) -> str:
    """Add a person with a new random token to the tokens file; return the token (once)."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; known: {', '.join(ROLES)}")
    doc = yaml.safe_load(path.read_text()) if path.exists() else None
    entries = list((doc or {}).get("tokens") or [])
    token = secrets.token_urlsafe(32)
    entries.append({"name": name, "role": role, "sha256": hash_token(token)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"tokens": entries}, sort_keys=False))
    path.chmod(0o600)
    return token
