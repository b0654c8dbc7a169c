"""Ed25519 signing of every control event over canonical bytes, and who may sign what.

Each producer signs what it publishes with the key of its role (``ROLES``): the detector its
breaches and baselines, the decider its decisions, commands, model status, verified acks and
known-good marks, the executor its acks, invalidations and pointer moves, the deployer (the CI
that runs ``rollguard deploy record``) deployments, a person (the key their role token
derives, rollguard.authority) requests and approvals, as an operator, and the API the alerts
Alertmanager posts to it and the breaches they become. A consumer holds the public keys it
trusts, by role (``Trust``), and acts only on an event signed by a key of a role allowed to
sign that event (``signers``): a detector key cannot sign an ack. A key's id is the first 16 hex digits of
SHA-256 over its raw public bytes; several keys per role are trusted at once, so keys rotate.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeVar, get_args

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from rollguard import events as ev
from rollguard.errors import ConfigError
from rollguard.secrets import check_private, private_dir, write_private
from rollguard.settings import RollguardSettings

Role = Literal["decider", "detector", "executor", "deployer", "operator", "api"]
ROLES: tuple[Role, ...] = get_args(Role)

S = TypeVar("S", bound=ev.Signed)
#: The ``kind`` of a Breach made of an Alertmanager alert (rollguard.alerts).
ALERT_KIND = "alertmanager"


def signers(event: ev.Signed) -> frozenset[Role]:
    """The roles whose keys may sign ``event`` (least privilege: one role per fact, but for
    a deployment, which the deployer records, the decider marks known good after its bake and
    the executor's pointer moves in a rollback)."""
    match event:
        case ev.Breach():
            # An alert Alertmanager posted is the API's word; a detector's measurement never.
            return frozenset({"api" if event.kind == ALERT_KIND else "detector"})
        case ev.Alert():
            return frozenset({"api"})
        case ev.TrafficReport():
            return frozenset({"detector"})
        case ev.BaselineSnapshot():
            return frozenset({"detector", "deployer"})
        case ev.Decision() | ev.RollbackCommand() | ev.ModelStatus():
            return frozenset({"decider"})
        case ev.CommandAck():
            return frozenset({"decider" if event.status == "verified" else "executor"})
        case ev.OutputInvalidation():
            return frozenset({"executor"})
        case ev.SystemManifest():
            moved = {"known_good": "decider", "live": "executor", "rolled_back": "executor"}
            extra = moved.get(event.status)
            return frozenset({"deployer", extra} if extra else {"deployer"})  # type: ignore[arg-type]
        case ev.RollbackRequest() | ev.Approval():
            return frozenset({"operator"})
        case ev.DrillRun():
            return frozenset({"deployer"})
    raise TypeError(f"{type(event).__name__} is not a control event")


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def canonical_bytes(event: ev.Signed) -> bytes:
    """The bytes a signature covers: every field of the event but the signature itself, as
    JSON with sorted keys (what a consumer that parsed the event's JSON dumps again)."""
    body = event.model_dump(mode="json", by_alias=True, exclude={"signature"})
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class Signer:
    private: Ed25519PrivateKey
    key_id: str
    role: Role = "decider"

    def sign(self, event: S) -> S:
        """``event`` with this key's id and signature (any earlier signature replaced)."""
        unsigned = event.model_copy(update={"key_id": self.key_id, "signature": ""})
        sig = self.private.sign(canonical_bytes(unsigned))
        return unsigned.model_copy(update={"signature": base64.b64encode(sig).decode()})


def generate_keypair(private_path: Path, trusted_dir: Path) -> str:
    """Write a new private key (PEM, mode 0600) and its public key into ``trusted_dir``."""
    private = Ed25519PrivateKey.generate()
    kid = key_id(private.public_key())
    private_dir(private_path.parent)
    trusted_dir.mkdir(parents=True, exist_ok=True)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private(private_path, pem)
    (trusted_dir / f"{kid}.pub").write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return kid


def load_signer(path: Path, role: Role = "decider") -> Signer:
    try:
        check_private(path, "signing key")
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(f"signing key {path} does not exist (rollguard keys generate)") from exc
    except ValueError as exc:
        raise ConfigError(f"signing key {path} is not a PEM private key: {exc}") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"signing key {path} is not an Ed25519 key")
    return Signer(private, key_id(private.public_key()), role)


def load_trusted_keys(directory: Path) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    if not directory.is_dir():
        raise ConfigError(f"trusted keys directory {directory} does not exist")
    for path in sorted(directory.glob("*.pub")):
        public = load_public(path)
        keys[key_id(public)] = public
    return keys


def load_public(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file ``path``; a ConfigError naming the file when it
    is empty, unreadable, not PEM or another kind of key."""
    try:
        public = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"trusted key {path} cannot be read: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"trusted key {path} is not a PEM public key; remove it or replace it with the "
            "file rollguard keys generate wrote"
        ) from exc
    if not isinstance(public, Ed25519PublicKey):
        raise ConfigError(f"trusted key {path} is not an Ed25519 public key")
    return public


@dataclass(frozen=True)
class Verdict:
    """Whether a consumer may act on an event; ``reason`` is a stable code when not."""

    ok: bool
    reason: str = ""
    detail: str = ""

    @property
    def refusal(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class Retired:
    """A key no longer trusted for what is recorded from ``at`` on (``rollguard keys
    retire``); what the ledger recorded before then keeps the key's word."""

    role: Role
    public: Ed25519PublicKey
    at: datetime


@dataclass(frozen=True)
class Trust:
    """The public keys a consumer trusts, by role; ``unsigned="warn"`` takes unsigned events
    (counted by the caller) while producers are moved to signing, and still refuses a wrong
    signature, an unknown key and a key of the wrong role. ``retired`` keys count only for
    ``check_recorded`` (history), never for ``check`` (what to act on now)."""

    keys: dict[str, tuple[Role, Ed25519PublicKey]] = field(default_factory=dict)
    unsigned: Literal["refuse", "warn"] = "refuse"
    retired: dict[str, Retired] = field(default_factory=dict)

    def with_keys(self, role: Role, keys: dict[str, Ed25519PublicKey]) -> Trust:
        """This trust and ``keys`` for ``role`` (a key trusted already keeps its role)."""
        merged = {kid: (role, public) for kid, public in keys.items()} | self.keys
        return Trust(merged, self.unsigned, self.retired)

    def roles(self) -> dict[Role, list[str]]:
        out: dict[Role, list[str]] = {}
        for kid, (role, _) in self.keys.items():
            out.setdefault(role, []).append(kid)
        return out

    def check(self, event: ev.Signed) -> Verdict:
        """Whether ``event`` is signed by a key trusted for its type (see ``signers``)."""
        if not event.signature:
            if self.unsigned == "warn":
                return Verdict(True, "unsigned", "taken unsigned (ROLLGUARD_SIGNED_EVENTS=warn)")
            return Verdict(False, "unsigned", f"{type(event).__name__} carries no signature")
        known = self.keys.get(event.key_id)
        if known is None:
            return Verdict(False, "unknown_key", f"key_id {event.key_id!r} is not trusted")
        return self._verify(event, *known)

    def check_recorded(self, event: ev.Signed, recorded_at: datetime) -> Verdict:
        """``check`` for an event recorded at ``recorded_at`` (a ledger entry): a key retired
        since still vouches for what was recorded before its retirement, so retiring a key
        does not rewrite history; what was recorded after is ``retired_key``."""
        gone = self.retired.get(event.key_id) if event.key_id not in self.keys else None
        if gone is None or not event.signature:
            return self.check(event)
        if recorded_at >= gone.at:
            return Verdict(
                False,
                "retired_key",
                f"key {event.key_id} was retired at {gone.at.isoformat()}, before this record",
            )
        return self._verify(event, gone.role, gone.public)

    def _verify(self, event: ev.Signed, role: Role, public: Ed25519PublicKey) -> Verdict:
        allowed = signers(event)
        if role not in allowed:
            wanted = " or ".join(sorted(allowed))
            return Verdict(
                False,
                "wrong_role",
                f"key {event.key_id} is a {role} key; {type(event).__name__} needs {wanted}",
            )
        try:
            public.verify(base64.b64decode(event.signature, validate=True), canonical_bytes(event))
        except (InvalidSignature, ValueError):
            return Verdict(False, "bad_signature", "signature does not match the event")
        return Verdict(True)


def trusted_files(directory: Path) -> list[tuple[Role, Path]]:
    """Every trusted public key file under ``directory`` and its role: ``<role>/*.pub``, and at
    its top ``<role>.<anything>.pub`` (a flat directory, such as a Kubernetes Secret mounted as
    files) or any other ``*.pub`` (where keys were kept before roles: decider keys)."""
    if not directory.is_dir():
        raise ConfigError(f"trusted keys directory {directory} does not exist")
    found: list[tuple[Role, Path]] = []
    for path in sorted(directory.glob("*.pub")):
        prefix = path.name.split(".", 1)[0]
        role: Role = next(
            (r for r in ROLES if r == prefix and path.name.count(".") >= 2), "decider"
        )
        found.append((role, path))
    for role in ROLES:
        found += [(role, path) for path in sorted((directory / role).glob("*.pub"))]
    return found


def trusted_keys(directory: Path) -> list[tuple[Role, str, Path, Ed25519PublicKey]]:
    """(role, key id, file, key) of every trusted key under ``directory``
    (``trusted_files``), each file parsed once."""
    out = []
    for role, path in trusted_files(directory):
        public = load_public(path)
        out.append((role, key_id(public), path, public))
    return out


#: Where ``rollguard keys retire`` moves a key, beside its retirement time.
RETIRED_DIR = "retired"


def retire_key(directory: Path, role: Role, path: Path, at: datetime) -> Path:
    """Move the trusted key ``path`` of ``role`` to ``directory``/retired as
    ``<role>.<key id>.pub`` with its retirement time (``<...>.retired_at``, ISO 8601)."""
    retired = directory / RETIRED_DIR
    retired.mkdir(exist_ok=True)
    kid = key_id(load_public(path))
    target = retired / f"{role}.{kid}.pub"
    (retired / f"{role}.{kid}.retired_at").write_text(at.isoformat() + "\n")
    path.rename(target)
    return target


def retired_keys(directory: Path) -> dict[str, Retired]:
    """The keys retired under ``directory`` with the time each was retired; a retired key
    without its time (moved there by hand) vouches for nothing."""
    out: dict[str, Retired] = {}
    for path in sorted((directory / RETIRED_DIR).glob("*.pub")):
        role, _, rest = path.name.partition(".")
        stamp = path.with_name(f"{role}.{rest.removesuffix('.pub')}.retired_at")
        if role not in ROLES or not stamp.is_file():
            continue
        try:
            at = datetime.fromisoformat(stamp.read_text().strip())
        except ValueError as exc:
            raise ConfigError(f"{stamp} is not an ISO 8601 time: {exc}") from exc
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        public = load_public(path)
        out[key_id(public)] = Retired(role, public, at)
    return out


def load_trust(
    directory: Path, unsigned: Literal["refuse", "warn"] = "refuse", *, history: bool = False
) -> Trust:
    """The keys under ``directory`` (``trusted_keys``); with ``history``, the retired ones
    too, for reading what was recorded (``Trust.check_recorded``). A key under two roles is
    a configuration error: one key, one role."""
    keys: dict[str, tuple[Role, Ed25519PublicKey]] = {}
    for role, kid, _, public in trusted_keys(directory):
        if kid in keys and keys[kid][0] != role:
            raise ConfigError(
                f"key {kid} is trusted as {keys[kid][0]} and as {role} under {directory}; "
                "a key has one role"
            )
        keys[kid] = (role, public)
    return Trust(keys, unsigned, retired_keys(directory) if history else {})


def trust_of(settings: RollguardSettings, *, history: bool = False) -> Trust:
    """The keys a service of this installation trusts, as its settings say; ``history``
    adds the retired keys, for reading the ledger."""
    unsigned: Literal["refuse", "warn"] = "warn" if settings.signed_events == "warn" else "refuse"
    return load_trust(settings.resolved_trusted_keys_dir, unsigned, history=history)


class TrustSource:
    """The trusted keys as the directory holds them now: a key added (``keys generate
    --rotate``) or retired while a service runs is in force within ``min_interval_s``, no
    restart needed. A directory that no longer loads keeps the last good keys and says why
    (``last_error``)."""

    def __init__(self, settings: RollguardSettings, min_interval_s: float = 1.0) -> None:
        self.settings = settings
        self.min_interval_s = min_interval_s
        self.current = trust_of(settings)
        self.last_error: str | None = None
        self._stamp = self._files()
        self._checked = time.monotonic()

    def _files(self) -> tuple[tuple[str, int, int], ...]:
        root = self.settings.resolved_trusted_keys_dir
        try:
            found = [root, *sorted(root.rglob("*"))]
            return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in found)
        except OSError:
            return ()

    def refresh(self, *, force: bool = False, within_s: float | None = None) -> bool:
        """True when other keys are in force now. The directory is looked at when it was not
        for ``within_s`` (default ``min_interval_s``)."""
        now = time.monotonic()
        interval = self.min_interval_s if within_s is None else within_s
        if not force and now - self._checked < interval:
            return False
        self._checked = now
        stamp = self._files()
        if not force and stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            fresh = trust_of(self.settings)
        except ConfigError as exc:
            self.last_error = str(exc)
            return False
        self.last_error = None

        def roles(trust: Trust) -> dict[str, Role]:
            return {kid: role for kid, (role, _) in trust.keys.items()}

        changed = roles(fresh) != roles(self.current)  # a key moved to another role too
        self.current = fresh
        return changed


def signer_of(settings: RollguardSettings, role: Role) -> Signer:
    """The key a service of ``role`` signs with."""
    path = settings.key_file(role)
    if not path.exists():
        where = "ROLLGUARD_SIGNING_KEY_FILE" if role == "decider" else "ROLLGUARD_KEYS_DIR"
        raise ConfigError(
            f"no {role} key at {path}: rollguard keys generate --role {role}, or set {where}"
        )
    return load_signer(path, role)


def ensure_keys(
    settings: RollguardSettings, roles: tuple[Role, ...] = ROLES
) -> list[tuple[Role, str]]:
    """Create, at their default places, the key pair of each of ``roles`` that has none yet
    (every role for the embedded default: one installation, every service and the CLI on one
    machine); a key given by a setting is never made up. Returns the (role, key id) of the
    keys created."""
    made: list[tuple[Role, str]] = []
    for role in roles:
        path = settings.key_file(role)
        given = settings.signing_key_file if role == "decider" else settings.keys_dir
        if given is None and not path.exists():
            trusted = settings.resolved_trusted_keys_dir / role
            made.append((role, generate_keypair(path, trusted)))
    return made


def verify_command(command: ev.RollbackCommand, trust: Trust, now: datetime) -> Verdict:
    """What an executor asks of a command: signed by a trusted decider key, not expired."""
    verdict = trust.check(command)
    if not verdict.ok or not command.signature:
        return verdict if not verdict.ok else Verdict(False, "unsigned", verdict.detail)
    if now >= command.expires_at:
        return Verdict(False, "expired", f"expired at {command.expires_at.isoformat()}")
    return Verdict(True)
