"""Policies: YAML parsed into frozen pydantic models, with per-model overrides.

Every model gets ``defaults``; ``models.<model_id>`` overrides any field of it, merged field
by field (dictionaries merge by key, lists and scalars replace). Several files merge in the
order given (a directory: its ``*.yaml`` in name order). A bad file fails at load with the
file, the line of the field, the field and what is allowed.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    model_validator,
)

from rollguard.detector_policy import (
    DetectorBase,
    DetectorKinds,
    FalseAlarmPolicy,
    default_detectors,
)
from rollguard.errors import ConfigError, yaml_problem
from rollguard.logs import get_logger

log = get_logger("rollguard.policy")

Tier = Literal["immediate", "rapid", "delayed"]
Component = Literal["feature_pipeline", "config", "model", "infra"]
Role = Literal["ml_engineer", "ml_lead", "data_engineering_lead", "sre", "auditor"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WindowPolicy(_Frozen):
    seconds: float = Field(default=1.0, gt=0, le=3600, description="Tumbling window length.")
    max_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=86_400,
        description="A window short of the events its tests need (their min_events) is pooled "
        "with the version's next ones until it has them or spans this long, then judged as one: "
        "a quiet model gets conclusive tests without tuning. The immediate tier's version "
        "checks (health) still run on every window.",
    )
    close_grace_s: float = Field(
        default=0.3, ge=0, le=60, description="Wall-clock wait after a window's end for stragglers."
    )
    max_future_s: float = Field(
        default=300.0,
        gt=0,
        description="An event dated further ahead of the detector's clock is refused (dead "
        "letter, clock_skew): one would otherwise open a window nothing ever closes.",
    )
    max_past_s: float = Field(
        default=86_400.0,
        gt=0,
        description="An event dated further behind is refused too: older than the ground-truth "
        "join keeps a prediction (a day), it would date a version's first event, and its MTTD, "
        "back to a stopped clock.",
    )


#: How far automation goes for a model (RollbackPolicy.mode; switchable at run time).
Mode = Literal["enforce", "recommend", "observe"]


class RollbackPolicy(_Frozen):
    mode: Mode = Field(
        default="enforce",
        description="enforce: roll back as decided. recommend: decide, say so and wait for a "
        "person to confirm it (`rollguard approve`, or a click on the dashboard), under the "
        "same authority rules as a manual rollback. observe: decide as enforce would and "
        "record (ledger, notification) that it would have rolled back, when and to what, but "
        "send nothing to executors — to run rollguard beside a team's current process before "
        "trusting it. A person's own `rollguard rollback` still acts. Switched at run time "
        "per model with `rollguard mode` (or the API), who and why in the ledger.",
    )
    cooldown_s: float = Field(default=300.0, ge=0, description="No second rollback within this.")
    command_ttl_s: float = Field(default=60.0, gt=0, description="A command expires after this.")
    automatic_tiers: tuple[Tier, ...] = ("immediate", "rapid")
    on_data_shift: Literal["investigate", "rollback"] = Field(
        default="investigate",
        description="A rapid-tier breach that comes with input-feature drift while the live and "
        "target manifests share the feature pipeline: the inputs changed, not the model, and a "
        "rollback would not help. investigate pages a person; rollback acts anyway.",
    )
    level: Literal["auto", "system"] = Field(
        default="auto",
        description="auto: level 1 when only the model differs, else 2; system: always 2.",
    )
    component_order: tuple[Component, ...] = ("feature_pipeline", "config", "model", "infra")
    bake_s: float = Field(
        default=600.0, ge=0, description="Live this long without a breach: known good."
    )
    verification_s: float = Field(
        default=120.0, gt=0, description="After applied, the restored version must stay clean."
    )
    verification_min_requests: int = Field(
        default=100,
        ge=0,
        description="The restored version must serve at least this many requests in its "
        "verification window (counted by the detector), else the rollback is unverifiable: "
        "silence proves nothing. 0: any traffic, none included, verifies.",
    )
    target_ready_within_s: float | None = Field(
        default=None,
        gt=0,
        description="If set, the target needs an ok health check this recent to be ready.",
    )

    @model_validator(mode="after")
    def _order_is_complete(self) -> RollbackPolicy:
        if sorted(self.component_order) != sorted(("feature_pipeline", "config", "model", "infra")):
            raise ValueError("component_order must name each component exactly once")
        return self


class AuthorityPolicy(_Frozen):
    """Who must approve a rollback of each level (levels 1 and 2 are automatic)."""

    level3_roles: tuple[Role, ...] = ("data_engineering_lead",)
    level4_roles: tuple[Role, ...] = ("data_engineering_lead", "ml_lead")
    approval_ttl_s: float = Field(
        default=3600.0, gt=0, description="An approval expires after this."
    )
    notify_on_level2: tuple[Role, ...] = ("ml_lead",)
    operate_roles: tuple[Role, ...] = Field(
        default=("ml_engineer", "ml_lead", "data_engineering_lead", "sre"),
        min_length=1,
        description="Who may pause or resume a model's automation, switch its mode, and "
        "confirm a recommended rollback (levels 1 and 2; levels 3 and 4 need their roles).",
    )


class ExpectedChange(_Frozen):
    """A declared intentional change: breaches inside it hold instead of rolling back."""

    start: AwareDatetime
    end: AwareDatetime
    reason: str = Field(min_length=1)
    model_versions: tuple[str, ...] = Field(default=(), description="Empty: every version.")

    @model_validator(mode="after")
    def _ordered(self) -> ExpectedChange:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self

    def covers(self, model_version: str, at: datetime) -> bool:
        in_time = self.start <= at < self.end
        return in_time and (not self.model_versions or model_version in self.model_versions)


class NotificationPolicy(_Frozen):
    """Which channels hear about which tier (channel names are configured in the notifier)."""

    immediate: tuple[str, ...] = ("pagerduty", "slack", "webhook")
    rapid: tuple[str, ...] = ("slack", "webhook")
    delayed: tuple[str, ...] = ("slack", "webhook")


class AlertRule(_Frozen):
    """What a firing Alertmanager alert of one name becomes (``alerts.<alertname>``): a breach
    of ``tier`` for the model its ``model_id`` label names (docs/integrations.md)."""

    tier: Tier = Field(description="immediate and rapid act as the policy's rollback says.")
    signal: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="The breach's signal; default the alert's name.",
    )


class ModelPolicy(_Frozen):
    window: WindowPolicy = WindowPolicy()
    #: Instance name → entry; typed by each kind's config class when loaded with the kinds.
    detectors: dict[str, SerializeAsAny[DetectorBase]] = Field(default_factory=default_detectors)
    false_alarm: FalseAlarmPolicy = FalseAlarmPolicy()
    rollback: RollbackPolicy = RollbackPolicy()
    authority: AuthorityPolicy = AuthorityPolicy()
    expected_changes: tuple[ExpectedChange, ...] = ()
    notifications: NotificationPolicy = NotificationPolicy()
    #: Alertmanager alert name → what a firing alert of that name becomes; names not here are
    #: recorded and not acted on.
    alerts: dict[str, AlertRule] = Field(default_factory=dict)

    def expected_change(self, model_version: str, at: datetime) -> ExpectedChange | None:
        return next((c for c in self.expected_changes if c.covers(model_version, at)), None)


class PolicySet(_Frozen):
    """Defaults for every model plus per-model overrides, already validated."""

    version: Literal[1] = 1
    defaults: ModelPolicy = ModelPolicy()
    models: dict[str, ModelPolicy] = Field(default_factory=dict)
    sources: tuple[str, ...] = Field(default=(), description="The files it was loaded from.")

    def for_model(self, model_id: str) -> ModelPolicy:
        return self.models.get(model_id, self.defaults)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest YAML node on ``loc``; loc parts that are not keys (the
    discriminator tag of a union) are skipped."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(part)), None)
            if match is None:
                continue
            node = match
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
        else:
            continue
        line = node.start_mark.line + 1
    return line


def _describe(
    exc: ValidationError, path: Path, root: yaml.Node | None, prefix: tuple[Any, ...]
) -> str:
    """Every error of one validation, a line each: ``file:line: field: message (got ...)``."""
    lines = []
    for error in exc.errors():
        loc = (*prefix, *error["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(root, loc)
        at = f"{path}:{line}" if line else str(path)
        lines.append(f"{at}: {where}: {error['msg']} (got {error.get('input')!r})")
    return "\n".join(lines)


#: The shipped defaults' file name in a policy directory: merged first, whatever the others are.
SHIPPED_DEFAULT_NAMES = ("default.yaml", "default.yml")


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            # The shipped default first, then the team's files in name order: a team's
            # 50-team.yaml overrides default.yaml, never the other way round.
            found = sorted([*p.glob("*.yaml"), *p.glob("*.yml")], key=lambda f: f.name)
            out += sorted(found, key=lambda f: f.name not in SHIPPED_DEFAULT_NAMES)
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError(f"policy path {p} does not exist")
    if not out:
        raise ConfigError(f"no policy files in {', '.join(map(str, paths))}")
    return out


def typed_detectors(
    policy: ModelPolicy,
    kinds: DetectorKinds,
    where: tuple[Path, yaml.Node | None, tuple[Any, ...]] | None = None,
) -> ModelPolicy:
    """``policy`` with every detector entry validated by its kind's config class.

    ConfigError for an unknown kind (listing the known ones) or a bad field; ``where`` (file,
    YAML root, location prefix) lets it name the file and line.
    """
    typed: dict[str, DetectorBase] = {}
    for name, entry in policy.detectors.items():
        config = kinds.get(entry.kind)
        loc = (*where[2], "detectors", name) if where else ("detectors", name)
        if config is None:
            at = f"{where[0]}:{_line_of(where[1], (*loc, 'kind'))}: " if where else ""
            raise ConfigError(
                f"{at}{'.'.join(map(str, loc))}.kind: unknown detector kind {entry.kind!r}; "
                f"known: {', '.join(sorted(kinds))}"
            )
        if type(entry) is config:
            typed[name] = entry
            continue
        try:
            typed[name] = config.model_validate(entry.model_dump(exclude_unset=True))
        except ValidationError as exc:
            if where is None:
                raise ConfigError(f"{'.'.join(map(str, loc))}: {exc.errors()[0]['msg']}") from exc
            raise ConfigError(_describe(exc, where[0], where[1], (*loc, entry.kind))) from exc
    return policy.model_copy(update={"detectors": typed})


def load_policy(*paths: Path, kinds: DetectorKinds | None = None) -> PolicySet:
    """Load, merge and validate policy files; ConfigError names file, line, field.

    With ``kinds`` (kind → config class) every detector entry is validated by its kind too.
    """
    defaults: dict[str, Any] = {}
    overrides: dict[str, tuple[dict[str, Any], Path, yaml.Node | None]] = {}
    files = _files(list(paths))
    for path in files:
        try:
            text = path.read_text()
            root = yaml.compose(text)
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(yaml_problem(path, exc)) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a policy file is a mapping with defaults and/or models")
        unknown = set(raw) - {"version", "defaults", "models"}
        if unknown:
            raise ConfigError(
                f"{path}:{_line_of(root, (sorted(unknown)[0],))}: unknown top-level key "
                f"{sorted(unknown)[0]!r}; allowed: version, defaults, models"
            )
        if raw.get("version", 1) != 1:
            raise ConfigError(
                f"{path}: version {raw.get('version')!r} is not supported; allowed: 1"
            )
        try:
            checked = ModelPolicy.model_validate(_deep_merge(defaults, raw.get("defaults") or {}))
        except ValidationError as exc:
            raise ConfigError(_describe(exc, path, root, ("defaults",))) from exc
        if kinds is not None:
            typed_detectors(checked, kinds, (path, root, ("defaults",)))
        defaults = _deep_merge(defaults, raw.get("defaults") or {})
        models = raw.get("models") or {}
        if not isinstance(models, dict):
            raise ConfigError(f"{path}:{_line_of(root, ('models',))}: models must be a mapping")
        for model_id, override in models.items():
            previous = overrides.get(model_id, ({}, path, root))[0]
            overrides[model_id] = (_deep_merge(previous, override or {}), path, root)

    base = ModelPolicy.model_validate(defaults)
    if kinds is not None:
        base = typed_detectors(base, kinds)
    validated: dict[str, ModelPolicy] = {}
    for model_id, (override, path, root) in overrides.items():
        try:
            # Only what was set, so a kind's own defaults are filled in by its config class;
            # but every detector entry of the defaults, set or defaulted, is kept.
            dumped = base.model_dump(exclude_unset=True)
            dumped["detectors"] = {
                name: entry.model_dump(exclude_unset=True) for name, entry in base.detectors.items()
            }
            merged = ModelPolicy.model_validate(_deep_merge(dumped, override))
        except ValidationError as exc:
            raise ConfigError(_describe(exc, path, root, ("models", model_id))) from exc
        if kinds is not None:
            merged = typed_detectors(merged, kinds, (path, root, ("models", model_id)))
        validated[model_id] = merged
    return PolicySet(defaults=base, models=validated, sources=tuple(str(f) for f in files))


SHIPPED_POLICY = Path("policies")


def resolve_policy(path: Path | None, kinds: DetectorKinds | None = None) -> PolicySet:
    """The policy at ``path`` (file or directory); without one, ./policies/ when present,
    else the built-in defaults."""
    if path is not None:
        return load_policy(path, kinds=kinds)
    if SHIPPED_POLICY.is_dir() and any(SHIPPED_POLICY.glob("*.yaml")):
        return load_policy(SHIPPED_POLICY, kinds=kinds)
    if kinds is None:
        return PolicySet()
    defaults = typed_detectors(ModelPolicy(), kinds)
    return PolicySet(defaults=defaults)


class PolicyView(Protocol):
    """What services need of a policy: the effective policy of one model."""

    def for_model(self, model_id: str) -> ModelPolicy: ...


class PolicySource:
    """The policy in force, reloaded when its files change or on SIGHUP.

    A bad change keeps the last good policy and says why (``last_error``, and a log line from
    whoever calls ``reload``).
    """

    def __init__(self, path: Path | None, kinds: DetectorKinds | None = None) -> None:
        self.path = path
        self.kinds = kinds
        self.current = resolve_policy(path, kinds)
        self.last_error: str | None = None
        self._stamp = self._mtimes()
        self._checked = 0.0

    def for_model(self, model_id: str) -> ModelPolicy:
        return self.current.for_model(model_id)

    def _mtimes(self) -> tuple[tuple[str, float], ...]:
        stamps = []
        for source in self.current.sources:
            try:
                stamps.append((source, Path(source).stat().st_mtime))
            except OSError:
                stamps.append((source, -1.0))
        # A directory (given, or the ./policies/ used when none is): files added to it or
        # removed from it count as a change too.
        folder = self.path if self.path is not None else SHIPPED_POLICY
        if folder.is_dir():
            stamps += [(str(p), p.stat().st_mtime) for p in sorted(folder.glob("*.y*ml"))]
        return tuple(sorted(set(stamps)))

    def changed(self) -> bool:
        return self._mtimes() != self._stamp

    def refresh(self, min_interval_s: float = 1.0, *, force: bool = False) -> bool | None:
        """Reload if the files changed (or always, with ``force``: SIGHUP), checking at most once
        per ``min_interval_s`` (stat calls stay off hot paths). None: nothing changed; True:
        reloaded; False: rejected, the last good policy stays. Either way it says so in the log."""
        now = time.monotonic()
        if not force and now - self._checked < min_interval_s:
            return None
        self._checked = now
        if not force and not self.changed():
            return None
        if self.reload():
            log.info("policy_reloaded", sources=list(self.current.sources))
            return True
        log.error("policy_rejected", error=self.last_error, kept="last good policy")
        return False

    def reload(self) -> bool:
        """Load again; True when the new policy is in force, False when the old one stays."""
        try:
            fresh = resolve_policy(self.path, self.kinds)
        except ConfigError as exc:
            self.last_error = str(exc)
            self._stamp = self._mtimes()  # do not retry the same bad files every tick
            return False
        self.current, self.last_error = fresh, None
        self._stamp = self._mtimes()
        return True
