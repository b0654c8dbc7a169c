"""Role tokens: who may request and approve what.

A token is a random secret handed to one person; only its SHA-256 is configured (a YAML file
of ``{name, role, sha256}``) and only its SHA-256 travels in events, so neither the topics
nor the ledger ever hold a usable token.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml

from rollguard.errors import ConfigError, yaml_problem
from rollguard.policy import Role
from rollguard.secrets import check_private, write_private

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
        identities: dict[str, Identity] = {}
        for i, entry in enumerate(_token_entries(path)):
            name, role, digest = entry.get("name"), entry.get("role"), entry.get("sha256")
            if not name or role not in ROLES or not isinstance(digest, str) or len(digest) != 64:
                raise ConfigError(
                    f"{path}: tokens[{i}] needs name, role (one of {', '.join(ROLES)}) and a "
                    "64-hex sha256"
                )
            identities[digest] = Identity(str(name), str(role))
        return cls(identities)


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
    check_private(path, "tokens file")  # the hashes it holds are what approvals carry
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_problem(path, exc)) from exc
    entries = doc.get("tokens") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(entries, list | None):
        raise ConfigError(f"{path}: a tokens file is a mapping with a list under 'tokens'")
    return list(entries or [])


def create_token(path: Path, name: str, role: str) -> str:
    """Add a person with a new random token to the tokens file; return the token (once)."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; known: {', '.join(ROLES)}")
    entries = _token_entries(path)
    token = secrets.token_urlsafe(32)
    entries.append({"name": name, "role": role, "sha256": hash_token(token)})
    write_private(path, yaml.safe_dump({"tokens": entries}, sort_keys=False).encode())
    return token
