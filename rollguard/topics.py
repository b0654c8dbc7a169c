"""The topics, what each carries, and how each is provisioned."""

from __future__ import annotations

from dataclasses import dataclass

from rollguard import events as ev


@dataclass(frozen=True)
class TopicSpec:
    name: str
    event: type[ev.Event]
    #: Control topics carry decisions and their effects: acks=all, small fetch wait, ledgered.
    control: bool
    compacted: bool = False


PREDICTIONS = TopicSpec("predictions", ev.PredictionEvent, control=False)
LATENCY = TopicSpec("latency", ev.LatencyEvent, control=False)
BUSINESS = TopicSpec("business", ev.BusinessMetricEvent, control=False)
HEALTH = TopicSpec("health", ev.HealthCheckEvent, control=False)
OUTCOMES = TopicSpec("outcomes", ev.OutcomeEvent, control=False)
DEPLOYMENTS = TopicSpec("deployments", ev.SystemManifest, control=True, compacted=True)
BASELINES = TopicSpec("baselines", ev.BaselineSnapshot, control=False, compacted=True)
BREACHES = TopicSpec("breaches", ev.Breach, control=True)
DECISIONS = TopicSpec("decisions", ev.Decision, control=True)
APPROVALS = TopicSpec("approvals", ev.Approval, control=True)
REQUESTS = TopicSpec("requests", ev.RollbackRequest, control=True)
COMMANDS = TopicSpec("commands", ev.RollbackCommand, control=True)
ACKS = TopicSpec("acks", ev.CommandAck, control=True)
INVALIDATIONS = TopicSpec("invalidations", ev.OutputInvalidation, control=True, compacted=True)
DEADLETTER = TopicSpec("deadletter", ev.DeadLetter, control=False)

ALL: tuple[TopicSpec, ...] = (
    PREDICTIONS,
    LATENCY,
    BUSINESS,
    HEALTH,
    OUTCOMES,
    DEPLOYMENTS,
    BASELINES,
    BREACHES,
    DECISIONS,
    APPROVALS,
    REQUESTS,
    COMMANDS,
    ACKS,
    INVALIDATIONS,
    DEADLETTER,
)

#: What the ledger records: every control topic.
LEDGERED: tuple[TopicSpec, ...] = tuple(t for t in ALL if t.control)

BY_NAME: dict[str, TopicSpec] = {t.name: t for t in ALL}
