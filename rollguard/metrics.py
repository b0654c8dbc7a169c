"""Prometheus metrics of every service (prometheus_client), named per Prometheus conventions:
``rollguard_`` prefix, base units (seconds), ``_total`` counters. docs/metrics.md lists them.

Labels are bounded: service, topic, reason code, action, status, tier, channel and the
detector instance name all come from closed sets or from the policy (a handful of names per
installation); no metric is labelled by model id, event id or version, so a fleet of 10,000
models costs the same series as one.

The API serves them at /metrics in `rollguard up` (every service of the process on one
registry); `rollguard run SERVICE` serves them with its probes (rollguard_shell.probes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: Seconds from 50 ms to 30 min: an immediate-tier rollback lands in the first buckets, a
#: rapid-tier one in the minutes, a verification in the tens of minutes.
_TIMES = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)

EVENTS_CONSUMED = Counter(
    "rollguard_events_consumed_total", "Records read from a topic.", ["service", "topic"]
)
DEAD_LETTERS = Counter(
    "rollguard_dead_letters_total",
    "Records sent to the dead-letter topic, by why.",
    ["service", "reason"],
)
EVALUATIONS = Counter(
    "rollguard_evaluations_total",
    "Detector tests run on a window, by detector instance and tier.",
    ["detector", "tier"],
)
BREACHES = Counter(
    "rollguard_breaches_total",
    "Breaches published, by detector instance and tier.",
    ["detector", "tier"],
)
DECISIONS = Counter(
    "rollguard_decisions_total",
    "Decisions published, by action and reason code (a decision counts once per reason).",
    ["action", "reason"],
)
COMMANDS = Counter("rollguard_commands_total", "Rollback commands issued, by level.", ["level"])
ACKS = Counter(
    "rollguard_acks_total",
    "Command acknowledgements published by executors, by status.",
    ["status"],
)
MTTD = Histogram(
    "rollguard_mttd_seconds", "Bad version live → first breach, per rollback.", buckets=_TIMES
)
TIME_TO_DECISION = Histogram(
    "rollguard_time_to_decision_seconds", "First breach → rollback decision.", buckets=_TIMES
)
TIME_TO_ROLLBACK = Histogram(
    "rollguard_time_to_rollback_seconds",
    "Bad version live → rollback applied (the executor's ack).",
    buckets=_TIMES,
)
TIME_TO_VERIFIED = Histogram(
    "rollguard_time_to_verified_seconds",
    "Bad version live → rollback verified.",
    buckets=(*_TIMES, 3600),
)
VERIFICATIONS = Counter(
    "rollguard_verifications_total",
    "Rollbacks judged after they were applied, by result (verified, failed, unverifiable).",
    ["result"],
)
CONSUMER_LAG = Gauge(
    "rollguard_consumer_lag_records",
    "Records on a topic not yet read by the service (end offset − position, summed over "
    "the partitions it holds).",
    ["service", "topic"],
)
LEDGER_HEAD = Gauge("rollguard_ledger_head_seq", "Sequence number of the ledger's newest entry.")
LEDGER_ENTRIES = Counter("rollguard_ledger_entries_total", "Entries appended to the ledger.")
#: Labelled by who verified (the API), so that no sample exists before a first verification:
#: an unlabelled gauge says 0 ("broken") from every process until then.
LEDGER_VERIFIED = Gauge(
    "rollguard_ledger_verify_ok",
    "1 when the ledger's last verification passed, 0 when it failed.",
    ["verifier"],
)
LEDGER_VERIFIED_AT = Gauge(
    "rollguard_ledger_verify_timestamp_seconds",
    "Unix time of the ledger's last verification.",
    ["verifier"],
)
NOTIFICATIONS = Counter(
    "rollguard_notifications_total",
    "Notification deliveries, by channel and result (sent, failed).",
    ["channel", "result"],
)
ALERTS = Counter(
    "rollguard_alerts_received_total",
    "Alertmanager alerts the API received, by status and what became of each (breach, "
    "resolved, unmapped, unknown_model, repeat, skipped).",
    ["status", "outcome"],
)
READY = Gauge("rollguard_service_ready", "1 once the service consumes and produces.", ["service"])


class Consumption:
    """What one service's consumer read: ``rollguard_events_consumed_total`` and
    ``rollguard_consumer_lag_records`` per topic, from each batch ``getmany`` returned (the
    lag from the highwater the broker sent with it, summed over the partitions held)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._lag: dict[tuple[str, int], int] = {}

    def took(self, consumer: Any, batches: Mapping[Any, Sequence[Any]]) -> None:
        topics = set()
        for tp, records in batches.items():
            if not records:
                continue
            EVENTS_CONSUMED.labels(self.service, tp.topic).inc(len(records))
            high = consumer.highwater(tp)
            if high is not None:
                self._lag[(tp.topic, tp.partition)] = max(0, high - records[-1].offset - 1)
            topics.add(tp.topic)
        held = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        for key in [k for k in self._lag if k not in held]:  # revoked: not ours to report
            topics.add(key[0])
            del self._lag[key]
        for topic in topics:
            lag = sum(v for (t, _), v in self._lag.items() if t == topic)
            CONSUMER_LAG.labels(self.service, topic).set(lag)


def exposition() -> tuple[bytes, str]:
    """This process's metrics in the Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
