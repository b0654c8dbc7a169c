"""What an Alertmanager notification becomes (rollguard.alerts), and who may sign it. The body
is Alertmanager's webhook format as documented for payload version 4; the end to end path
with the real Alertmanager is tests/api/test_alerts.py."""

from __future__ import annotations

from datetime import timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from rollguard import events as ev
from rollguard.alerts import WebhookPayload, receive
from rollguard.policy import AlertRule, ModelPolicy
from rollguard.signing import ALERT_KIND, Signer, Trust, key_id

NOW = ev.utcnow()
POLICY = ModelPolicy(
    alerts={"Burn": AlertRule(tier="immediate"), "Slow": AlertRule(tier="rapid", signal="ctr")}
)
LIVE = ev.SystemManifest(
    model_id="fraud",
    system_version="s2",
    model_version="v2",
    components=ev.Components(model="v2", feature_pipeline="f", config="c", infra="i"),
    status="live",
)


def _alert(name: str = "Burn", status: str = "firing", **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, "model_id": "fraud", **labels},
        "annotations": {"summary": "errors above 5 %"},
        "startsAt": (NOW - timedelta(minutes=1)).isoformat(),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=x",
        "fingerprint": f"fp-{name}",
    }


def _payload(*alerts: dict[str, Any]) -> WebhookPayload:
    return WebhookPayload.model_validate(
        {
            "version": "4",
            "groupKey": '{}:{model_id="fraud"}',
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "rollguard",
            "groupLabels": {"model_id": "fraud"},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": list(alerts),
        }
    )


def _receive(
    *alerts: dict[str, Any], live: ev.SystemManifest | None = LIVE, **status: Any
) -> list[Any]:
    known = ev.ModelStatus(model_id="fraud", live=live, **status) if live else None
    return receive(_payload(*alerts), lambda _: POLICY, lambda _: known, NOW)


def test_a_mapped_firing_alert_becomes_a_breach_of_its_tier_on_the_live_version() -> None:
    (got,) = _receive(_alert())
    assert got.alert.outcome == "breach" and got.alert.ends_at is None  # the zero time
    breach = got.breach
    assert breach.kind == ALERT_KIND and breach.tier == "immediate"
    assert (breach.model_version, breach.system_version) == ("v2", "s2")
    assert breach.detector == "alert:Burn" and breach.signal == "Burn"
    assert got.alert.breach_id == breach.event_id
    assert breach.evidence["summary"] == "errors above 5 %"


def test_a_rapid_alert_is_sustained_and_names_its_signal() -> None:
    (got,) = _receive(_alert("Slow"))
    assert got.breach.tier == "rapid" and got.breach.signal == "ctr"
    assert got.breach.sustain == ev.Sustain(k=1, n=1, hits=1)


def test_the_alerts_own_version_label_wins_over_the_live_one() -> None:
    (got,) = _receive(_alert(model_version="v1"))
    assert got.breach.model_version == "v1" and got.breach.system_version is None


def test_unmapped_unknown_resolved_and_foreign_alerts_make_no_breach() -> None:
    unmapped, resolved, foreign = _receive(
        _alert("Other"), _alert(status="resolved"), {**_alert(), "labels": {"alertname": "X"}}
    )
    assert (unmapped.alert.outcome, unmapped.breach) == ("unmapped", None)
    assert (resolved.alert.outcome, resolved.breach) == ("resolved", None)
    assert foreign.alert is None and foreign.skipped == "no model_id label"
    (unknown,) = _receive(_alert(), live=None)
    assert (unknown.alert.outcome, unknown.breach) == ("unknown_model", None)


def test_a_repeat_is_the_same_fact_and_the_same_breach() -> None:
    first, again = _receive(_alert()), _receive(_alert())
    assert first[0].alert.event_id == again[0].alert.event_id
    assert first[0].breach.event_id == again[0].breach.event_id
    (resolved,) = _receive(_alert(status="resolved"))
    assert resolved.alert.event_id != first[0].alert.event_id  # its end is another fact


def test_a_body_that_is_not_version_4_is_refused() -> None:
    with pytest.raises(ValidationError):
        WebhookPayload.model_validate({"version": "3", "status": "firing", "alerts": []})


def test_only_the_api_key_signs_an_alert_breach_and_never_a_detectors() -> None:
    keys = {role: Ed25519PrivateKey.generate() for role in ("api", "detector")}
    signers = {r: Signer(k, key_id(k.public_key()), r) for r, k in keys.items()}  # type: ignore[arg-type]
    trust = Trust({s.key_id: (s.role, s.private.public_key()) for s in signers.values()})
    (got,) = _receive(_alert())
    measured = got.breach.model_copy(update={"kind": "error_rate", "detector": "error_rate"})
    assert trust.check(signers["api"].sign(got.breach)).ok
    assert trust.check(signers["api"].sign(got.alert)).ok
    assert trust.check(signers["detector"].sign(got.breach)).reason == "wrong_role"
    assert trust.check(signers["detector"].sign(got.alert)).reason == "wrong_role"
    assert trust.check(signers["api"].sign(measured)).reason == "wrong_role"
    assert trust.check(signers["detector"].sign(measured)).ok


def test_an_unlabelled_alert_right_after_a_rollback_is_not_blamed_on_the_restored_version() -> None:
    # A rule's `for:` outlasts a rollback made in seconds: its alert may be about v2, gone.
    cooling = {"cooldown_until": NOW + timedelta(minutes=5)}
    (got,) = _receive(_alert(), **cooling)
    assert (got.alert.outcome, got.breach) == ("ambiguous_version", None)
    (labelled,) = _receive(_alert(model_version="v2"), **cooling)  # unambiguous
    assert labelled.alert.outcome == "breach" and labelled.breach.model_version == "v2"
    (later,) = _receive(_alert(), cooldown_until=NOW - timedelta(seconds=1))
    assert later.alert.outcome == "breach"
    # a different outcome is a different fact: acting later is not answered as a repeat
    assert got.alert.event_id != later.alert.event_id


def test_long_texts_are_cut_and_one_bad_alert_spoils_nothing_else() -> None:
    long = {**_alert(), "annotations": {"description": "x" * 5_000}}
    bad_version = _alert("Burn", model_version="v" * 300)
    kept, refused = _receive(long, {**bad_version, "fingerprint": "other"})
    assert kept.alert.outcome == "breach"
    assert len(kept.alert.annotations["description"]) == ev.MAX_LABEL
    assert refused.alert is None and refused.skipped.startswith("invalid: model_version")


def test_one_instant_written_with_two_offsets_is_one_alert() -> None:
    there = {
        **_alert(),
        "startsAt": (NOW - timedelta(minutes=1))
        .astimezone(timezone(timedelta(hours=5)))
        .isoformat(),
    }
    assert _receive(there)[0].alert.event_id == _receive(_alert())[0].alert.event_id
