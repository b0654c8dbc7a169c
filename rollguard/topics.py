"""The topics, what each carries, and how each is provisioned."""

from __future__ import annotations

from dataclasses import dataclass

from rollguard import events as ev


@dataclass(frozen=True)
class TopicSpec:
    name: str
    event: type[ev.Event]
    #: Control topics carry decisions and their effects: acks=all, small fetch wait.
    control: bool
    compacted: bool = False
    #: Recorded by the ledger (only control topics are).
    ledgered: bool = True
    #: retention.ms, when not the broker's default (-1: kept for ever).
    retention_ms: int | None = None


PREDICTIONS = TopicSpec("predictions", ev.PredictionEvent, control=False)
LATENCY = TopicSpec("latency", ev.LatencyEvent, control=False)
BUSINESS = TopicSpec("business", ev.BusinessMetricEvent, control=False)
HEALTH = TopicSpec("health", ev.HealthCheckEvent, control=False)
OUTCOMES = TopicSpec("outcomes", ev.OutcomeEvent, control=False)
DEPLOYMENTS = TopicSpec("deployments", ev.SystemManifest, control=True, compacted=True)
BASELINES = TopicSpec("baselines", ev.BaselineSnapshot, control=False, compacted=True)
BREACHES = TopicSpec("breaches", ev.Breach, control=True)
# Alerts Alertmanager posted to the API, firing and resolved, with what each became.
ALERTS = TopicSpec("alerts", ev.Alert, control=True)
# Rollback drills run (rollguard drill): what was injected and what the chain did.
DRILLS = TopicSpec("drills", ev.DrillRun, control=True)
DECISIONS = TopicSpec("decisions", ev.Decision, control=True)
APPROVALS = TopicSpec("approvals", ev.Approval, control=True)
REQUESTS = TopicSpec("requests", ev.RollbackRequest, control=True)
COMMANDS = TopicSpec("commands", ev.RollbackCommand, control=True)
ACKS = TopicSpec("acks", ev.CommandAck, control=True)
INVALIDATIONS = TopicSpec("invalidations", ev.OutputInvalidation, control=True, compacted=True)
DEADLETTER = TopicSpec("deadletter", ev.DeadLetter, control=False)
# Derived state, not a fact: every status follows from ledgered events (deployments,
# decisions, commands, acks) and health checks, and it is republished on every change
# (a health check of the target too). The ledger keeps the facts; ledgering this view would
# copy each of them again in another shape. Control all the same: acks=all, short fetch wait.
MODEL_STATUS = TopicSpec(
    "model-status", ev.ModelStatus, control=True, compacted=True, ledgered=False
)
# What the detector saw of each version, every few seconds: the decider counts a restored
# version's traffic before it calls a rollback verified. Counted, not a fact to keep: the
# decision that counts it is ledgered. A day is more than any verification window.
TRAFFIC = TopicSpec(
    "traffic", ev.TrafficReport, control=True, ledgered=False, retention_ms=86_400_000
)
# The ledger's signed checkpoints, witnessed where the ledger's writer cannot rewrite them:
# appended by the ledger, kept for ever, compared by ``rollguard ledger verify``. Not a fact
# about a model, so not ledgered (the ledger vouching for itself would prove nothing).
LEDGER_CHECKPOINTS = TopicSpec(
    "ledger-checkpoints",
    ev.LedgerCheckpoint,
    control=True,
    ledgered=False,
    retention_ms=-1,
)

ALL: tuple[TopicSpec, ...] = (
    PREDICTIONS,
    LATENCY,
    BUSINESS,
    HEALTH,
    OUTCOMES,
    DEPLOYMENTS,
    BASELINES,
    BREACHES,
    ALERTS,
    DRILLS,
    DECISIONS,
    APPROVALS,
    REQUESTS,
    COMMANDS,
    ACKS,
    INVALIDATIONS,
    DEADLETTER,
    MODEL_STATUS,
    TRAFFIC,
    LEDGER_CHECKPOINTS,
)

#: What the ledger records: the control topics that carry facts.
LEDGERED: tuple[TopicSpec, ...] = tuple(t for t in ALL if t.control and t.ledgered)

BY_NAME: dict[str, TopicSpec] = {t.name: t for t in ALL}
