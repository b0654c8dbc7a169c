"""Alertmanager alerts as triggers: what a webhook notification (payload version 4) becomes.

Alertmanager posts a group of alerts, firing and resolved, and posts it again on every group
change and repeat. Each alert about a model (its ``model_id`` label) is one ``Alert`` fact,
its id derived from Alertmanager's fingerprint, start and status, so a repeat is the same fact;
a firing alert whose name the model's policy maps to a tier (``alerts.<alertname>``) becomes
a Breach of that tier, its id derived from fingerprint and start, so the decider takes one
alert episode once however often it is posted. The API signs both (rollguard.signing: only
the API's key may sign a Breach of kind ``alertmanager``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from rollguard import events as ev
from rollguard.policy import ModelPolicy
from rollguard.signing import ALERT_KIND

#: Alertmanager writes the zero time (year 1) as the end of an alert still firing.
_NO_END_BEFORE = datetime(1971, 1, 1, tzinfo=UTC)
#: How much of an alert's text a breach's evidence keeps.
_EVIDENCE_CHARS = 512


class _Lenient(BaseModel):
    # Alertmanager adds fields from version to version; what is not read here is not refused.
    model_config = ConfigDict(extra="ignore", frozen=True)


def _bounded(texts: dict[str, str]) -> dict[str, str]:
    """At most MAX_ALERT_FIELDS of them, each name and value cut to MAX_LABEL characters: a
    long runbook annotation is kept in part, never a reason to refuse the whole group."""
    kept = list(texts.items())[: ev.MAX_ALERT_FIELDS]
    return {k[: ev.MAX_LABEL]: str(v)[: ev.MAX_LABEL] for k, v in kept}


class WebhookAlert(_Lenient):
    status: ev.AlertStatus
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: AwareDatetime
    endsAt: AwareDatetime | None = None
    generatorURL: str = ""
    fingerprint: str = Field(min_length=1, max_length=128)

    @field_validator("labels", "annotations")
    @classmethod
    def _cut(cls, value: dict[str, str]) -> dict[str, str]:
        return _bounded(value)

    @field_validator("generatorURL")
    @classmethod
    def _cut_url(cls, value: str) -> str:
        return value[:4096]

    @field_validator("startsAt", "endsAt")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # UTC, so that one instant written with two offsets is one alert (its ids)
        return None if value is None else value.astimezone(UTC)

    @field_validator("endsAt")
    @classmethod
    def _no_zero_time(cls, value: datetime | None) -> datetime | None:
        return None if value is None or value < _NO_END_BEFORE else value


class WebhookPayload(_Lenient):
    """Alertmanager's webhook body (``webhook_config``, payload version 4)."""

    version: Literal["4"]
    groupKey: str = Field(default="", max_length=4096)
    receiver: str = Field(default="", max_length=256)
    status: ev.AlertStatus
    alerts: list[WebhookAlert] = Field(max_length=10_000)


@dataclass(frozen=True)
class Received:
    """One alert of a notification: the fact to record (``alert``) and, for a firing alert
    the policy maps, the breach to decide on; ``alert`` is None for an alert rollguard does
    not follow (no ``model_id`` label), and ``skipped`` says why."""

    alert: ev.Alert | None
    breach: ev.Breach | None = None
    skipped: str = ""


def alert_id(fingerprint: str, starts_at: datetime, status: str, outcome: str) -> str:
    """One fact per alert episode, status and outcome: a firing alert first answered
    ``unknown_model`` and later made a breach is two facts, a repeat of either the same one."""
    return ev.derived_id("alert", fingerprint, starts_at.isoformat(), status, outcome)


def breach_id(fingerprint: str, starts_at: datetime) -> str:
    return ev.derived_id("alert-breach", fingerprint, starts_at.isoformat())


def receive(
    payload: WebhookPayload,
    policy_for: Callable[[str], ModelPolicy],
    status_of: Callable[[str], ev.ModelStatus | None],
    now: datetime,
) -> list[Received]:
    """What each alert of ``payload`` becomes, unsigned; ``status_of`` is a model's status as
    the decider last published it (None: it knows no deployment of the model)."""
    out = []
    for alert in payload.alerts:
        try:
            out.append(_one(alert, payload.receiver, policy_for, status_of, now))
        except ValidationError as exc:  # one alert's labels an event cannot carry, not all
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            out.append(Received(None, skipped=f"invalid: {where}: {first['msg']}"))
    return out


def _just_rolled_back(status: ev.ModelStatus | None, now: datetime) -> bool:
    """A rollback in flight, being verified, or done within the cooldown: the live version
    is new and an alert with no version of its own may be about the one it replaced."""
    if status is None:
        return False
    cooling = status.cooldown_until is not None and status.cooldown_until > now
    return status.in_flight is not None or status.verifying is not None or cooling


def _one(
    alert: WebhookAlert,
    receiver: str,
    policy_for: Callable[[str], ModelPolicy],
    status_of: Callable[[str], ev.ModelStatus | None],
    now: datetime,
) -> Received:
    model_id = alert.labels.get("model_id", "")
    name = alert.labels.get("alertname", "")
    if not model_id or not name:
        return Received(None, skipped="no model_id label" if name else "no alertname label")
    status = status_of(model_id)
    live = status.live if status is not None else None
    labelled = alert.labels.get("model_version")
    version = labelled or (live.model_version if live else None)
    rule = policy_for(model_id).alerts.get(name)
    outcome: ev.AlertOutcome = "resolved"
    if alert.status == "firing":
        if rule is None:
            outcome = "unmapped"
        elif version is None:
            outcome = "unknown_model"
        elif labelled is None and _just_rolled_back(status, now):
            # Its condition may have held on the version just rolled back (a rule's `for:`
            # outlasts a rollback in seconds): blamed on the restored one, it would lock a
            # good rollback. Recorded; a model_version label makes it unambiguous.
            outcome = "ambiguous_version"
        else:
            outcome = "breach"
    fact = ev.Alert(
        event_id=alert_id(alert.fingerprint, alert.startsAt, alert.status, outcome),
        ts=now,
        model_id=model_id,
        model_version=version,
        status=alert.status,
        alertname=name,
        fingerprint=alert.fingerprint,
        starts_at=alert.startsAt,
        ends_at=alert.endsAt,
        labels=alert.labels,
        annotations=alert.annotations,
        generator_url=alert.generatorURL,
        receiver=receiver,
        outcome=outcome,
        tier=rule.tier if rule else None,
        breach_id=breach_id(alert.fingerprint, alert.startsAt) if outcome == "breach" else None,
    )
    if outcome != "breach" or rule is None or version is None or fact.breach_id is None:
        return Received(fact)
    system = alert.labels.get("system_version") or (
        live.system_version if live and live.model_version == version else None
    )
    start = min(alert.startsAt, now)
    evidence: dict[str, float | int | str] = {
        "alertname": name,
        "fingerprint": alert.fingerprint,
        "alert_event_id": fact.event_id,
    }
    for key in ("severity", "summary", "description"):
        text = alert.labels.get(key) or alert.annotations.get(key)
        if text:
            evidence[key] = text[:_EVIDENCE_CHARS]
    if alert.generatorURL:
        evidence["generator_url"] = alert.generatorURL[:_EVIDENCE_CHARS]
    breach = ev.Breach(
        event_id=fact.breach_id,
        ts=now,
        model_id=model_id,
        model_version=version,
        system_version=system,
        detector=f"alert:{name}",
        kind=ALERT_KIND,
        signal=rule.signal or name,
        statistic="firing",
        value=1.0,
        threshold=0.0,
        window_start=start,
        window_end=now,
        n=0,
        tier=rule.tier,
        # The alert's own `for:` is how it was sustained; it fired once, which is enough.
        sustain=ev.Sustain(k=1, n=1, hits=1) if rule.tier == "rapid" else None,
        evidence=evidence,
    )
    return Received(fact, breach)
