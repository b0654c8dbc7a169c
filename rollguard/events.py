"""Event contracts: one frozen pydantic model per event, shared by producers and consumers.

``schemas/*.json`` is generated from these models (``rollguard schemas export``); a test
fails when the two differ. Every event carries a ``schema`` tag ``<Name>/v<N>`` so a consumer
can refuse a version it does not know.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    model_validator,
)

Tier = Literal["immediate", "rapid", "delayed"]
ManifestStatus = Literal["candidate", "live", "known_good", "rolled_back"]
DecisionAction = Literal["rollback", "investigate", "hold"]
AckStatus = Literal["received", "applied", "verified", "failed", "rejected"]
RollbackLevel = Annotated[int, Field(ge=1, le=4)]
#: A number on the wire: an int or a float. Never a boolean (``true`` is not 1 ms) nor a string
#: ("5"): a producer sending either has a bug that must surface as a dead letter.
Number = Annotated[float, Field(strict=True)]
#: The longest label (a class predicted, an outcome, a categorical feature's value): a detector
#: keeps up to 256 of them per signal and window, so a megabyte of free text sent as one is
#: refused, not kept.
MAX_LABEL = 1_024
Label = Annotated[str, Field(max_length=MAX_LABEL)]
#: A feature's name becomes a signal's name; as long as an id at most.
MAX_FEATURE_NAME = 256
FeatureName = Annotated[str, Field(max_length=MAX_FEATURE_NAME)]
Scalar = float | Label | None

#: Why a consumer refused a record (``DeadLetter.reason``), a closed set: ``malformed``, not one
#: JSON document (bytes that do not parse, a tombstone, NaN, nesting past the parser's limit);
#: ``invalid``, a document the event model or the consumer's rules refuse (a wrong type, a
#: missing field, an unknown schema tag, a version without a manifest); ``clock_skew``, an
#: event dated too far ahead of or behind the consumer's clock; ``untrusted``, a control event
#: not signed by a key the consumer trusts for its type (unsigned, unknown key, wrong role,
#: bad signature).
DeadLetterReason = Literal["malformed", "invalid", "clock_skew", "untrusted"]

# A day in milliseconds: anything slower is a broken clock or a unit error, not a latency.
MAX_LATENCY_MS = 86_400_000.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


def derived_id(*parts: object) -> str:
    """A deterministic id (32 hex digits) from the inputs it stands for: replaying the same
    input stream produces the same decisions and commands, byte for byte."""
    return uuid.uuid5(uuid.NAMESPACE_OID, ":".join(str(p) for p in parts)).hex


# The ids of the decider's answers to a person's input: a contract, so the CLI (or any
# client) knows which decision to wait for before it sends the request or the approval.
def request_decision_id(request_event_id: str) -> str:
    """The decision answering a RollbackRequest (a rollback, a hold, a refusal, an unlock)."""
    return derived_id("request", request_event_id)


def approval_decision_id(approval_event_id: str) -> str:
    """The decision answering an Approval that did not complete its decision (a refusal, or
    "still needs ...")."""
    return derived_id("approval", approval_event_id)


def approved_decision_id(pending_decision_id: str) -> str:
    """The rollback decision once the approvals a pending decision needs are all in."""
    return derived_id("approved", pending_decision_id)


class Event(BaseModel):
    """Fields every event has. Subclasses set ``SCHEMA`` and a matching ``schema`` literal."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    SCHEMA: ClassVar[str] = ""

    event_id: str = Field(default_factory=new_id, min_length=1, max_length=128)
    ts: AwareDatetime = Field(default_factory=utcnow, description="Event time, UTC.")

    def encode(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", by_alias=True))


class Signed(BaseModel):
    """A control event, signed by the service or person that produced it (rollguard.signing):
    Ed25519 over every field but ``signature``, by a key trusted for the event's type."""

    key_id: str = Field(default="", max_length=64, description="Id of the key that signed it.")
    signature: str = Field(
        default="",
        max_length=128,
        description="Base64 Ed25519 over the canonical bytes (every field but this one).",
    )


class ModelEvent(Event):
    """An event about one model version; ``model_id`` is the Kafka message key."""

    model_id: str = Field(min_length=1, max_length=256)
    model_version: str = Field(min_length=1, max_length=256)
    system_version: str | None = Field(default=None, max_length=256)

    @property
    def key(self) -> bytes:
        return self.model_id.encode()


def _tag(name: str, version: int = 1) -> Any:
    tag = f"{name}/v{version}"
    return Field(default=tag, alias="schema", description=f"Schema tag, always {tag!r}.")


class PredictionEvent(ModelEvent):
    SCHEMA: ClassVar[str] = "PredictionEvent/v1"
    schema_tag: Literal["PredictionEvent/v1"] = _tag("PredictionEvent")
    request_id: str = Field(min_length=1, max_length=256)
    prediction: Number | Label = Field(description="A number (regression, score) or a label.")
    score: Number | None = None
    features: dict[FeatureName, Scalar] | None = None
    shadow: StrictBool = Field(
        default=False,
        description="Scored in shadow, never served: the known-good version a rollback would "
        "restore, scoring a sample of the live version's requests on the same inputs. The "
        "detector measures it apart from that version's own traffic (the counterfactual check, "
        'docs/policies.md "Data shift vs bad model").',
    )


class LatencyEvent(ModelEvent):
    SCHEMA: ClassVar[str] = "LatencyEvent/v1"
    schema_tag: Literal["LatencyEvent/v1"] = _tag("LatencyEvent")
    request_id: str = Field(min_length=1, max_length=256)
    latency_ms: Number = Field(ge=0.0, le=MAX_LATENCY_MS, allow_inf_nan=False)
    status: Literal["ok", "error"]
    error_kind: str | None = Field(default=None, max_length=256)


class BusinessMetricEvent(ModelEvent):
    SCHEMA: ClassVar[str] = "BusinessMetricEvent/v1"
    schema_tag: Literal["BusinessMetricEvent/v1"] = _tag("BusinessMetricEvent")
    metric: str = Field(min_length=1, max_length=128, description="ctr, conversion, revenue, ...")
    value: Number | None = Field(default=None, allow_inf_nan=False)
    numerator: Number | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    denominator: Number | None = Field(default=None, gt=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _value_or_ratio(self) -> BusinessMetricEvent:
        has_ratio = self.numerator is not None and self.denominator is not None
        if self.value is None and not has_ratio:
            raise ValueError("set value, or both numerator and denominator")
        return self


class HealthCheckEvent(ModelEvent):
    SCHEMA: ClassVar[str] = "HealthCheckEvent/v1"
    schema_tag: Literal["HealthCheckEvent/v1"] = _tag("HealthCheckEvent")
    ok: bool = Field(strict=True, description='true or false; never 1, "yes" or "true".')
    detail: str = Field(default="", max_length=4096)


class OutcomeEvent(ModelEvent):
    SCHEMA: ClassVar[str] = "OutcomeEvent/v1"
    schema_tag: Literal["OutcomeEvent/v1"] = _tag("OutcomeEvent")
    request_id: str = Field(min_length=1, max_length=256)
    outcome: Number | Label = Field(description="Ground truth for request_id; arrives late.")


class Components(BaseModel):
    """The versions that together make one system version, restored together at level 2."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1)
    feature_pipeline: str = Field(min_length=1)
    config: str = Field(min_length=1)
    infra: str = Field(min_length=1)
    data: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="The version of the data the model was trained on: a Delta table version "
        "(a number) or a time (ISO 8601). A level-4 rollback restores it; levels 1-3 never "
        "touch data.",
    )


class SystemManifest(ModelEvent, Signed):
    """A fact about one system version of a model: registered, live, known good or rolled back.

    Status ``live`` or ``known_good`` means this system version serves traffic from ``ts`` on.
    """

    SCHEMA: ClassVar[str] = "SystemManifest/v1"
    schema_tag: Literal["SystemManifest/v1"] = _tag("SystemManifest")
    system_version: str = Field(min_length=1, max_length=256)
    components: Components
    status: ManifestStatus
    note: str = Field(default="", max_length=4096)

    @model_validator(mode="after")
    def _model_matches(self) -> SystemManifest:
        if self.components.model != self.model_version:
            raise ValueError(
                f"model_version {self.model_version!r} differs from components.model "
                f"{self.components.model!r}"
            )
        return self

    @property
    def serving(self) -> bool:
        return self.status in ("live", "known_good")


class BaselineSnapshot(ModelEvent, Signed):
    SCHEMA: ClassVar[str] = "BaselineSnapshot/v1"
    schema_tag: Literal["BaselineSnapshot/v1"] = _tag("BaselineSnapshot")
    signal: str = Field(min_length=1, max_length=256)
    n: int = Field(ge=0)
    reference: list[float] = Field(default_factory=list, description="Capped reference sample.")
    bin_edges: list[float] = Field(default_factory=list, description="Quantile bin edges.")
    counts: list[int] = Field(default_factory=list)
    categories: dict[str, float] = Field(default_factory=dict, description="Category frequencies.")
    rates: dict[str, float] = Field(default_factory=dict, description="error_rate, ctr, ...")
    checksum: str = Field(default="", description="SHA-256 of the canonical snapshot body.")


class Sustain(BaseModel):
    """How a rapid-tier breach was sustained: ``hits`` breaching windows of the last ``n``,
    where ``k`` were needed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    k: int = Field(ge=1)
    n: int = Field(ge=1)
    hits: int = Field(ge=0)
    severe: bool = Field(
        default=False,
        description="Published before k of n: its corrected p-value and effect size passed "
        "the policy's severe bar (false_alarms.severe_p, severe_effect).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Sustain:
        if not self.k <= self.n or self.hits > self.n:
            raise ValueError(
                f"needs k <= n and hits <= n, got k={self.k} n={self.n} hits={self.hits}"
            )
        return self


class DriftedInput(BaseModel):
    """An input feature that drifted in the window of a breach (a ks or psi detector's
    measurement of a ``feature:*`` signal past its threshold, sustained or not)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    signal: str = Field(min_length=1, description="feature:<name>")
    detector: str = Field(min_length=1)
    statistic: str = Field(min_length=1)
    value: float
    p_value: float | None = Field(default=None, ge=0.0, le=1.0)


class Counterfactual(BaseModel):
    """What the version a rollback would restore did on the same inputs: its shadow
    predictions (``PredictionEvent.shadow``) of the breach's window, measured on the breach's
    signal against that version's own baseline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_version: str = Field(min_length=1, max_length=256, description="The shadow version.")
    detector: str = Field(min_length=1)
    statistic: str = Field(min_length=1)
    value: float
    p_value: float | None = Field(default=None, ge=0.0, le=1.0)
    threshold: float | None = None
    n: int = Field(ge=0, description="Shadow predictions measured.")
    drifted: bool = Field(description="Past the detector's threshold too: it drifts the same way.")
    window_end: AwareDatetime


class Breach(ModelEvent, Signed):
    """A detector's measurement past its threshold, as the decider and the incident figures read
    it. ``evidence`` carries detector-specific numbers for people and reports only: no other
    service branches on its keys."""

    SCHEMA: ClassVar[str] = "Breach/v1"
    schema_tag: Literal["Breach/v1"] = _tag("Breach")
    detector: str = Field(min_length=1, description="The policy's name of the detector instance.")
    kind: str = Field(min_length=1, description="The detector kind (ks, psi, error_rate, ...).")
    signal: str = Field(min_length=1)
    statistic: str = Field(min_length=1, description="Name of the statistic, e.g. wilson_lower")
    value: float
    p_value: float | None = Field(default=None, ge=0.0, le=1.0)
    threshold: float
    window_start: AwareDatetime
    window_end: AwareDatetime
    n: int = Field(ge=0)
    tier: Tier
    sustain: Sustain | None = Field(
        default=None,
        description="Rapid tier (required): k of n windows breached, hits >= k; none otherwise.",
    )
    version_first_event_ts: AwareDatetime | None = Field(
        default=None, description="First event of this model version the detector saw (MTTD)."
    )
    version_events: int | None = Field(
        default=None, ge=0, description="Events of this version seen so far (blast radius)."
    )
    evidence: dict[str, float | int | str] = Field(default_factory=dict)
    input_drift: list[DriftedInput] = Field(
        default_factory=list,
        max_length=64,
        description="The input features that drifted in the same window of the same version: "
        "with the feature pipeline unchanged, the decider reads a rapid-tier breach as a data "
        'shift, not a bad model (docs/policies.md, "Data shift").',
    )
    counterfactual: Counterfactual | None = Field(
        default=None,
        description="The rollback target's shadow predictions on the same inputs, measured on "
        "this breach's signal: drifted too, a rollback would not help (a data shift); within "
        "baseline, it would.",
    )

    @model_validator(mode="after")
    def _sustained(self) -> Breach:
        # An unsustained rapid measurement is not a breach: the detector holds it back, and
        # a rapid breach must say how it was sustained.
        if self.tier == "rapid" and self.sustain is None:
            raise ValueError("sustain: a rapid-tier breach needs its k of n (sustain)")
        if (
            self.sustain is not None
            and self.sustain.hits < self.sustain.k
            and not self.sustain.severe
        ):
            raise ValueError(
                f"sustain: {self.sustain.hits} of the last {self.sustain.n} windows breached, "
                f"{self.sustain.k} needed"
            )
        return self


AlertStatus = Literal["firing", "resolved"]
#: What the API made of an alert: ``breach``, a firing alert with a tier in the model's policy
#: (``alerts``), published as a Breach; ``resolved``, its end; ``unmapped``, firing under a name
#: the policy gives no tier; ``unknown_model``, firing for a model with no live version known
#: (and no ``model_version`` label); ``ambiguous_version``, firing with no ``model_version``
#: label while the model has just been rolled back (in flight, verifying or in its cooldown):
#: it may be about the version rolled back, not the one live now, so it is not acted on.
AlertOutcome = Literal["breach", "resolved", "unmapped", "unknown_model", "ambiguous_version"]
#: An alert's labels or annotations as kept: at most this many, each this long.
MAX_ALERT_FIELDS = 64
AlertText = Annotated[str, Field(max_length=MAX_LABEL)]


class Alert(Event, Signed):
    """An alert Alertmanager posted to the API (webhook payload version 4), as received and
    what became of it, signed by the API: every firing and resolved alert about a model is
    recorded once (its ``event_id`` is derived from Alertmanager's fingerprint, start and
    status, so a repeated notification is the same fact)."""

    SCHEMA: ClassVar[str] = "Alert/v1"
    schema_tag: Literal["Alert/v1"] = _tag("Alert")
    model_id: str = Field(min_length=1, max_length=256)
    model_version: str | None = Field(
        default=None,
        max_length=256,
        description="The alert's model_version label, else the version live when it arrived.",
    )
    status: AlertStatus
    alertname: str = Field(min_length=1, max_length=256)
    fingerprint: str = Field(min_length=1, max_length=128)
    starts_at: AwareDatetime
    ends_at: AwareDatetime | None = None
    labels: dict[AlertText, AlertText] = Field(default_factory=dict, max_length=MAX_ALERT_FIELDS)
    annotations: dict[AlertText, AlertText] = Field(
        default_factory=dict, max_length=MAX_ALERT_FIELDS
    )
    generator_url: str = Field(default="", max_length=4096)
    receiver: str = Field(default="", max_length=256, description="Alertmanager's receiver.")
    outcome: AlertOutcome
    tier: Tier | None = Field(default=None, description="The tier the policy gives the alert.")
    breach_id: str | None = Field(default=None, description="The Breach it became, if any.")

    @property
    def key(self) -> bytes:
        return self.model_id.encode()


class DrillRun(Event, Signed):
    """One rollback drill (``rollguard drill``, rollguard.drills): the fault injected on a drill
    model, what the chain did and how long each step took; signed by the deployer key that ran
    it. Never a real incident: drill models are not paged for."""

    SCHEMA: ClassVar[str] = "DrillRun/v1"
    schema_tag: Literal["DrillRun/v1"] = _tag("DrillRun")
    drill_id: str = Field(min_length=1, max_length=128)
    scenario: str = Field(min_length=1, max_length=64)
    model_id: str = Field(min_length=1, max_length=256)
    bad_version: str = Field(min_length=1, max_length=256)
    good_version: str = Field(min_length=1, max_length=256)
    passed: StrictBool
    reason: str = Field(default="", max_length=4096, description="Why it failed; empty if not.")
    started_at: AwareDatetime
    ended_at: AwareDatetime
    figures: dict[str, float] = Field(
        default_factory=dict,
        description="mttd_s, time_to_decision_s, time_to_rollback_s, time_to_verified_s "
        "(from the bad deployment), blast_radius (the bad version's requests).",
    )
    decision_id: str | None = None
    command_id: str | None = None

    @property
    def key(self) -> bytes:
        return self.model_id.encode()


#: Every reason a decision can give, a closed set: each one is documented, with what it means
#: and what an operator does, in docs/policies.md ("Reason codes").
ReasonCode = Literal[
    # the input behind a decision
    "breach",
    "manual_request",
    # rollbacks and their level
    "model_only",
    "model_only_incompatible",
    "policy_system_level",
    "notify_lead",
    # holds and escalations of a breach
    "unknown_model",
    "not_live_version",
    "expected_change",
    "tier_not_automatic",
    "locked",
    "rollback_in_flight",
    "cooldown",
    "no_known_good_target",
    "target_not_ready",
    # after a command
    "command_unacknowledged",
    "verification_failed",
    "unverifiable",
    "data_shift",
    # the policy's rollback.mode is observe: what enforce would have done, not done
    "observe_mode",
    # rollback.mode recommend: the rollback decided, waiting for a person to confirm it
    "recommend_mode",
    # people operating a model: automation paused / resumed, its mode switched
    "paused",
    "resumed",
    "mode_set",
    "not_permitted",
    # people: requests and approvals
    "unknown_token",
    "wrong_role",
    "unlocked",
    "awaiting_approval",
    "approval_rejected",
    "approved",
    "approval_expired",
]


class Reason(BaseModel):
    """One machine-readable reason behind a decision (``code``) with words for people."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: ReasonCode
    detail: str = ""


class Decision(ModelEvent, Signed):
    SCHEMA: ClassVar[str] = "Decision/v1"
    schema_tag: Literal["Decision/v1"] = _tag("Decision")
    action: DecisionAction
    level: RollbackLevel | None = None
    tier: Tier | None = None
    reasons: list[Reason] = Field(min_length=1)
    breach_ids: list[str] = Field(default_factory=list)
    target_system_version: str | None = None
    command_id: str | None = None
    approvals_needed: int = Field(default=0, ge=0)
    approvals_given: list[str] = Field(default_factory=list)
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="mttd_s, time_to_decision_s, blast_radius_events, ... (seconds, counts).",
    )
    parent_decision_id: str | None = Field(
        default=None,
        description="The decision this one continues (an approval outcome, a verification).",
    )
    requested_by: str | None = Field(default=None, description="Who asked, for manual rollbacks.")


class Approval(Event, Signed):
    """A person's approval of a pending decision, signed with the key their role token
    derives (rollguard.authority.person_signer): ``key_id`` names the person. v2: v1 carried
    the token's SHA-256, which anyone who read it could copy."""

    SCHEMA: ClassVar[str] = "Approval/v2"
    schema_tag: Literal["Approval/v2"] = _tag("Approval", 2)
    model_id: str = Field(min_length=1, max_length=256)
    decision_id: str = Field(min_length=1)
    role: str = Field(min_length=1, max_length=64, description="The role the approver claims.")
    comment: str = Field(default="", max_length=4096)

    @property
    def key(self) -> bytes:
        return self.model_id.encode()


class RollbackRequest(Event, Signed):
    """A person asking for a rollback (or to lift a verification lock) through the decider,
    signed like an Approval with the key their token derives (v2: no token hash)."""

    SCHEMA: ClassVar[str] = "RollbackRequest/v2"
    schema_tag: Literal["RollbackRequest/v2"] = _tag("RollbackRequest", 2)
    model_id: str = Field(min_length=1, max_length=256)
    action: Literal["rollback", "unlock", "pause", "resume", "set_mode"] = Field(
        default="rollback",
        description="pause / resume: stop / restart automatic action on the model (breaches "
        "are still recorded); set_mode: switch its mode (``mode``) at run time.",
    )
    mode: Literal["enforce", "recommend", "observe"] | None = Field(
        default=None, description="For set_mode: the model's mode from now on."
    )
    to_system_version: str | None = Field(default=None, description="Default: the rollback target.")
    level: RollbackLevel | None = Field(default=None, description="Default: chosen by the policy.")
    role: str = Field(min_length=1, max_length=64)
    reason: str = Field(default="", max_length=4096)

    @property
    def key(self) -> bytes:
        return self.model_id.encode()


class RollbackCommand(ModelEvent, Signed):
    """A signed instruction to make ``to_manifest`` live again; ``command_id`` is idempotent."""

    SCHEMA: ClassVar[str] = "RollbackCommand/v1"
    schema_tag: Literal["RollbackCommand/v1"] = _tag("RollbackCommand")
    command_id: str = Field(min_length=1, max_length=128)
    decision_id: str = Field(min_length=1)
    from_manifest: SystemManifest
    to_manifest: SystemManifest
    level: RollbackLevel
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    nonce: str = Field(min_length=16)


class CommandAck(ModelEvent, Signed):
    SCHEMA: ClassVar[str] = "CommandAck/v1"
    schema_tag: Literal["CommandAck/v1"] = _tag("CommandAck")
    command_id: str = Field(min_length=1, max_length=128)
    status: AckStatus
    executor_id: str = Field(min_length=1)
    detail: str = ""
    retriable: bool = False
    component: str | None = None
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds.")
    compensation: bool = Field(
        default=False,
        description="True on a component ack that undoes a step after a later step failed.",
    )
    attempts: int = Field(default=0, ge=0, description="Applier calls behind this outcome.")


class OutputInvalidation(ModelEvent, Signed):
    SCHEMA: ClassVar[str] = "OutputInvalidation/v1"
    schema_tag: Literal["OutputInvalidation/v1"] = _tag("OutputInvalidation")
    bad_versions: list[str] = Field(min_length=1)
    valid_from: AwareDatetime = Field(description="Start of the interval whose outputs are bad.")
    valid_to: AwareDatetime = Field(description="End of the interval (rollback applied).")
    command_id: str = Field(min_length=1)


class TrafficReport(ModelEvent, Signed):
    """How many requests of one version the detector saw in the windows it closed since its
    last report (one report per version every ``traffic_interval_s``; none for no traffic).

    What a verification counts: a restored version that served no traffic, or too little to
    judge, is not called verified. Signed by the detector; not ledgered (the decision that
    counts them is)."""

    SCHEMA: ClassVar[str] = "TrafficReport/v1"
    schema_tag: Literal["TrafficReport/v1"] = _tag("TrafficReport")
    start: AwareDatetime = Field(description="Start of the first window counted (event time).")
    end: AwareDatetime = Field(description="End of the last window counted (event time).")
    requests: int = Field(ge=0, description="Latency events: requests served, errors too.")
    errors: int = Field(ge=0, description="Of those, the requests that failed.")
    predictions: int = Field(ge=0, description="Prediction events.")
    windows: int = Field(ge=1, description="Closed windows counted.")

    @property
    def served(self) -> int:
        """Requests served: a server may report latencies, predictions or both."""
        return max(self.requests, self.predictions)


class DeadLetter(Event):
    """An input a consumer could not accept, kept with where it came from and why."""

    SCHEMA: ClassVar[str] = "DeadLetter/v1"
    schema_tag: Literal["DeadLetter/v1"] = _tag("DeadLetter")
    model_id: str | None = None
    source_topic: str
    partition: int
    offset: int
    consumer: str
    reason: DeadLetterReason | None = Field(
        default=None,
        description="Why it was refused (malformed, invalid, clock_skew); absent only in "
        "letters written before the field existed.",
    )
    error: str
    raw_b64: str = Field(description="The raw message value, base64 (its start if truncated).")
    raw_size: int = Field(default=0, ge=0, description="Size of the whole raw value, bytes.")
    raw_sha256: str = Field(default="", description="SHA-256 of the whole raw value (hex).")
    raw_truncated: bool = Field(
        default=False, description="Only the start of the value is kept (it was too large)."
    )


class LedgerCheckpoint(Event):
    """The ledger's word that after ``size`` entries its chain's head hash was
    ``head_hash``, signed by the ledger's checkpoint key over ``size``, ``head_hash``, ``ts``
    and ``key_id``. Kept in the checkpoint file and witnessed on the ledger-checkpoints topic,
    where the ledger's writer cannot take one back (rollguard_services.ledger.checkpoints)."""

    SCHEMA: ClassVar[str] = "LedgerCheckpoint/v1"
    schema_tag: Literal["LedgerCheckpoint/v1"] = _tag("LedgerCheckpoint")
    size: int = Field(ge=0, description="Entries the chain had: seq 1..size.")
    head_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="hash of entry `size`.")
    key_id: str = Field(min_length=1, max_length=64)
    signature: str = Field(default="", max_length=128, description="Base64 Ed25519.")

    def signed_bytes(self) -> bytes:
        body = self.model_dump(mode="json", include={"size", "head_hash", "ts", "key_id"})
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


class LastHealthCheck(BaseModel):
    """The latest health check of one model version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ts: AwareDatetime
    ok: bool


class CommandInFlight(BaseModel):
    """A rollback command issued and not yet applied, failed or expired."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: str = Field(min_length=1, max_length=128)
    level: RollbackLevel
    target_system_version: str = Field(min_length=1)
    expires_at: AwareDatetime


class RollbackVerifying(BaseModel):
    """An applied rollback whose restored version must stay clean until ``deadline``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: str = Field(min_length=1, max_length=128)
    restored_version: str = Field(min_length=1, description="The restored model version.")
    deadline: AwareDatetime


class Approver(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    role: str = Field(min_length=1)


class PendingApproval(BaseModel):
    """A decision (level 3 or 4) waiting for approvals."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    decision_id: str = Field(min_length=1)
    level: RollbackLevel
    required_roles: list[str] = Field(min_length=1)
    approvers: list[Approver] = Field(default_factory=list, description="Approvals so far.")
    expires_at: AwareDatetime
    any_of: bool = Field(
        default=False,
        description="One approval by any of required_roles is enough (a recommended "
        "rollback's confirmation); else one per role.",
    )


class Paused(BaseModel):
    """Automatic action on a model stopped by a person (rollguard pause), until resumed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    by: str
    role: str
    reason: str
    at: AwareDatetime


def target_health_problem(
    model_version: str, last: LastHealthCheck | None, within_s: float | None, now: datetime
) -> str | None:
    """Why a rollback target may not take traffic (None: it may).

    With ``within_s`` None no health check is required; else the target's last check must be
    ok and at most ``within_s`` seconds old at ``now``. The decider (``target_not_ready``) and
    ``rollguard deploy check`` both apply this rule.
    """
    if within_s is None:
        return None
    if last is None:
        return f"no health check of {model_version}"
    if not last.ok:
        return f"{model_version} failed its last health check"
    age_s = (now - last.ts).total_seconds()
    if age_s > within_s:
        return f"last health check of {model_version} is {age_s:.0f}s old"
    return None


class ModelStatus(Event, Signed):
    """What the decider knows of one model, published whenever a field of it changes: the
    public view of the decider's private state (compacted; the latest per model counts)."""

    SCHEMA: ClassVar[str] = "ModelStatus/v1"
    schema_tag: Literal["ModelStatus/v1"] = _tag("ModelStatus")
    model_id: str = Field(min_length=1, max_length=256)
    live: SystemManifest | None = Field(default=None, description="None: no deployment known.")
    known_good: list[SystemManifest] = Field(
        default_factory=list, description="Known-good system versions, newest last."
    )
    rollback_target: SystemManifest | None = Field(
        default=None, description="Newest known good other than live; None: nothing to go to."
    )
    target_health: LastHealthCheck | None = Field(
        default=None, description="Last health check of the target's model version."
    )
    locked: ReasonCode | None = Field(
        default=None, description="Why automatic action on the model stopped (until a person acts)."
    )
    cooldown_until: AwareDatetime | None = None
    in_flight: CommandInFlight | None = None
    verifying: RollbackVerifying | None = None
    pending: list[PendingApproval] = Field(default_factory=list)
    paused: Paused | None = Field(default=None, description="Automation paused, by whom, why.")
    mode: Literal["enforce", "recommend", "observe"] | None = Field(
        default=None, description="The mode switched at run time (None: the policy's)."
    )

    @property
    def key(self) -> bytes:
        return self.model_id.encode()

    def not_ready(self, target_ready_within_s: float | None, now: datetime) -> str | None:
        """Why a rollback of this model could not run now (None: it could) — what a deploy
        gate asks. ``target_ready_within_s`` is the model's policy value."""
        if self.live is None:
            return f"the decider knows no deployment of {self.model_id}"
        target = self.rollback_target
        if target is None:
            return (
                f"{self.model_id} has no known-good target other than the live "
                f"{self.live.system_version}"
            )
        problem = target_health_problem(
            target.model_version, self.target_health, target_ready_within_s, now
        )
        if problem is not None:
            return problem
        if self.locked:
            return f"{self.model_id} is locked ({self.locked}); unlock it first"
        return None


EVENT_TYPES: tuple[type[Event], ...] = (
    PredictionEvent,
    LatencyEvent,
    BusinessMetricEvent,
    HealthCheckEvent,
    OutcomeEvent,
    SystemManifest,
    BaselineSnapshot,
    Breach,
    Alert,
    DrillRun,
    Decision,
    Approval,
    RollbackRequest,
    RollbackCommand,
    CommandAck,
    OutputInvalidation,
    TrafficReport,
    DeadLetter,
    ModelStatus,
    LedgerCheckpoint,
)

E = TypeVar("E", bound=Event)


def decode(cls: type[E], raw: bytes | None) -> E:
    """Parse one message value into ``cls``; raises pydantic.ValidationError (not a valid
    event) or another ValueError (not one JSON document: orjson.JSONDecodeError, a tombstone).

    orjson parses, as the detector does: pydantic's own parser takes ``NaN`` and ``Infinity``,
    which are not JSON, and a Breach with ``"value": NaN`` was read as one."""
    if raw is None:
        raise ValueError("message has no value (tombstone)")
    return cls.model_validate(orjson.loads(raw))
