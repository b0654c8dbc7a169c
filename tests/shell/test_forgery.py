"""Issue 13's forgery matrix: a client with network access to the broker and no trusted key
(confluent-kafka, librdkafka: not our client) forges every control event type against a running
`rollguard up --with-router` that has just handled a real incident.

For each type × {unsigned, bad signature, wrong-role key, unknown key, replay, expired (commands)}:
the forged event is refused by every service that consumes its topic (a dead letter, reason
``untrusted``; an executor's ``rejected`` ack for a command), kept in the ledger as untrusted
(provenance checked when read), left out of the real incident by ``incident show``, and has no
effect: no decision, command or applied ack beyond the real incident's, the router still serves
the restored version, the decider's status unchanged. A replay (the real event's bytes sent
again) has no effect either. The matrix is printed."""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rollguard import events as ev
from rollguard import topics
from rollguard.authority import person_signer
from rollguard.settings import RollguardSettings
from rollguard.signing import ALERT_KIND, Role, Signer, key_id, signer_of, signers, trust_of
from rollguard_services.ledger.provenance import provenance
from rollguard_shell.commands.ledger import recorded_trust
from tests.conftest import HEAVY, scaled
from tests.shell.test_lifecycle import _cli, _until
from tests.shell.test_restart import (
    ALERT_NAME,
    MODEL,
    Ledger,
    Up,
    _deploy,
    _on_topics,
    _policy,
)

confluent_kafka = pytest.importorskip("confluent_kafka", reason="the independent client")

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc to find the broker's processes"
)

#: Which services consume each control topic, and so must refuse a forgery on it.
CONSUMERS = {
    "breaches": {"decider", "notifier"},
    "alerts": set(),  # the ledger records them; the API made them of what Alertmanager posted
    "decisions": {"notifier"},
    "commands": {"executor"},
    "acks": {"decider", "notifier"},
    "deployments": {"decider", "detector", "router"},
    "baselines": {"detector"},
    "requests": {"decider"},
    "approvals": {"decider"},
    "invalidations": set(),  # downstream systems read it (rollguard.invalidations)
    "traffic": {"decider"},  # counted towards a rollback's verification
    "model-status": set(),  # the CLI reads it (deploy check refuses an untrusted status)
}
FORGERIES = ("unsigned", "bad_signature", "wrong_role", "unknown_key")


def _wrong_role(event: ev.Signed) -> Role:
    allowed = signers(event)
    return "detector" if "detector" not in allowed else "executor"


def _forged(event: ev.Signed, how: str, settings: RollguardSettings, outsider: Signer) -> ev.Signed:
    fresh = event.model_copy(update={"event_id": ev.new_id()})
    if isinstance(fresh, ev.RollbackCommand):  # not the real one's id: not a replay
        fresh = fresh.model_copy(update={"command_id": ev.new_id()})
    if how == "unsigned":
        return fresh.model_copy(update={"key_id": "", "signature": ""})
    if how == "bad_signature":  # a real signature, on other bytes
        return fresh.model_copy(update={"key_id": event.key_id, "signature": event.signature})
    if how == "wrong_role":  # a trusted key, stolen from a service not allowed this type
        return signer_of(settings, _wrong_role(event)).sign(fresh)
    return outsider.sign(fresh)  # unknown_key


def _samples(on_topics: dict[str, list[bytes]]) -> dict[str, tuple[str, ev.Signed]]:
    """One real event of each control type, as the services published it: (topic, event)."""
    found: dict[str, tuple[str, ev.Signed]] = {}
    for topic, values in on_topics.items():
        cls = topics.BY_NAME[topic].event
        for value in values:
            event = cls.model_validate_json(value)
            name = type(event).__name__
            if isinstance(event, ev.Breach) and event.kind == ALERT_KIND:
                name = "Breach:alertmanager"  # the API's, not a detector's
            if isinstance(event, ev.CommandAck):
                name = f"CommandAck:{event.status}"
                if event.status not in ("applied", "verified") or event.component:
                    continue
            # The deployment worth replaying: the bad version going live.
            bad_live = isinstance(event, ev.SystemManifest) and event.status == "live"
            if isinstance(event, ev.Signed) and (name not in found or bad_live):
                found[name] = (topic, event)
    return found


def _effects(
    state: Path, settings: RollguardSettings, besides: set[str] | None = None
) -> dict[str, int]:
    """What trusted keys signed so far, distinct events (a replay is the same event again):
    decisions, commands, applied acks, deployments; and what the router serves."""
    trust = trust_of(settings)
    names = ("decisions", "commands", "acks", "deployments")
    out: dict[str, set[str]] = {}
    for topic, values in _on_topics(state, names).items():
        for value in values:
            event = topics.BY_NAME[topic].event.model_validate_json(value)
            assert isinstance(event, ev.Signed)
            if (
                trust.check(event).ok
                and event.event_id not in (besides or set())  # the test's own
                and not (isinstance(event, ev.CommandAck) and event.status != "applied")
            ):
                out.setdefault(topic, set()).add(event.event_id)
    counts = {topic: len(ids) for topic, ids in out.items()}
    # The router says each move of its live pointer.
    moves = [
        doc
        for doc in map(_json, (state / "stderr.txt").read_text().splitlines())
        if doc.get("event") == "live_pointer"
    ]
    counts["router pointer moves"] = len(moves)
    return counts


def _post_alert(state: Path) -> str:
    """Post one firing alert of ALERT_NAME about MODEL to the running up's API, with the
    receiver's secret, as Alertmanager would; the id of the breach it became."""
    logged = map(_json, (state / "stderr.txt").read_text().splitlines())
    url = next(doc["url"] for doc in logged if doc.get("event") == "alertmanager_receiver")
    secret = (state / "alertmanager.token").read_text().strip()
    alert = {
        "status": "firing",
        "labels": {"alertname": ALERT_NAME, "model_id": MODEL, "severity": "page"},
        "annotations": {"summary": "drill"},
        "startsAt": ev.utcnow().isoformat(),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.invalid/graph",
        "fingerprint": ev.new_id()[:16],
    }
    body = {"version": "4", "status": "firing", "receiver": "rollguard", "alerts": [alert]}
    answer = httpx.post(
        url, json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=scaled(30)
    )
    assert answer.status_code == 200, answer.text
    (taken,) = answer.json()["alerts"]
    assert taken["outcome"] == "breach", taken
    return str(taken["breach_id"])


def _json(line: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


@HEAVY
@pytest.mark.timeout(scaled(420))
def test_every_forged_control_event_is_refused_kept_apart_and_without_effect(
    tmp_path: Path, figure: Callable[[str], None]
) -> None:
    state = tmp_path / "state"
    versions = {"v1": {"error_rate": 0.01}, "b1": {"error_rate": 0.3}}
    env = {
        "ROLLGUARD_POLICY_PATH": str(_policy(tmp_path / "policy")),
        "ROLLGUARD_ROUTER_VERSIONS": json.dumps(versions),
        "ROLLGUARD_ROUTER_RATE_RPS": "200",
    }
    # A real person: requests and approvals are signed by the key ada's token derives.
    made = _cli(state, "tokens", "create", "--name", "ada", "--role", "ml_lead")
    assert made.returncode == 0, made.stderr
    ada = person_signer(made.stdout.strip().splitlines()[-1])
    ledger = Ledger(state / "ledger.db")
    up = Up(state, env)
    up.start()
    try:
        _deploy(state, "s0", "v1", "known_good")
        _deploy(state, "s1", "b1", "live")
        _until(
            lambda: any(
                e.event_type == "CommandAck" and e.payload["status"] == "verified"
                for e in ledger.entries()
            ),
            "the real incident was never verified",
            timeout_s=120,
        )
        # A real baseline, as CI imports one (signed by the deployer key), of a model that
        # serves nothing here: the detector judges no traffic against it.
        table = tmp_path / "good.csv"
        table.write_text("prediction\n" + "".join(f"{i / 300:.4f}\n" for i in range(300)))
        imported = _cli(
            state, "baseline", "import", "--model-id", "quiet", "--model-version", "v1", str(table)
        )
        assert imported.returncode == 0, imported.stderr
        bootstrap = json.loads((state / "broker.json").read_text())["bootstrap"]
        settings = RollguardSettings(state_dir=state, kafka_bootstrap=bootstrap)
        # A real alert, posted to the API as Alertmanager posts one: the Alert and the
        # Breach the API signs (a delayed one: a page, no rollback).
        alert_breach = _post_alert(state)
        _until(
            lambda: any(
                e.event_type == "Decision" and alert_breach in e.payload.get("breach_ids", [])
                for e in ledger.entries()
            ),
            "the decider never answered the alert's breach",
        )
        samples = _samples(_on_topics(state, tuple(t for t in CONSUMERS if t != "requests")))
        # Requests and approvals: as the CLI makes them for ada (a role she does not hold,
        # and a decision that awaits nobody: each is answered with a hold).
        people = {
            "RollbackRequest": ("requests", ev.RollbackRequest(model_id=MODEL, role="ml_engineer")),
            "Approval": ("approvals", ev.Approval(model_id=MODEL, decision_id="d", role="ml_lead")),
        }
        for name, (topic, event) in people.items():
            samples[name] = (topic, ada.sign(event))
        decided = sum(e.event_type == "Decision" for e in ledger.entries())
        missing = {
            "Breach",
            "Breach:alertmanager",
            "Alert",
            "Decision",
            "RollbackCommand",
            "CommandAck:applied",
            "BaselineSnapshot",
            "TrafficReport",
        } - set(samples)
        assert not missing, f"no real {missing} to forge from"
        # The real request and approval are sent once, as the CLI would, and answered (a
        # hold: the token is nobody's); what follows must add nothing to that.
        first = confluent_kafka.Producer(
            {"bootstrap.servers": bootstrap, "acks": "all", "log_level": 0}
        )
        for name in ("RollbackRequest", "Approval"):
            topic, real = samples[name]
            first.produce(settings.topic(topic), value=real.encode(), key=MODEL.encode())
        assert first.flush(scaled(30)) == 0
        _until(
            lambda: sum(e.event_type == "Decision" for e in ledger.entries()) >= decided + 2,
            "the decider did not answer the request and the approval",
        )
        before = _effects(state, settings)
        incident_id = samples["Decision"][1].event_id

        outsider = Signer(Ed25519PrivateKey.generate(), "", "decider")
        outsider = Signer(outsider.private, key_id(outsider.private.public_key()), "decider")
        producer = confluent_kafka.Producer(
            {"bootstrap.servers": bootstrap, "acks": "all", "log_level": 0}
        )
        sent: dict[tuple[str, str], tuple[str, str]] = {}  # (type, how) → (topic, event id)

        def send(topic: str, value: bytes, key: str) -> None:
            producer.produce(settings.topic(topic), value=value, key=key.encode())

        for name, (topic, real) in samples.items():
            for how in FORGERIES:
                forged = _forged(real, how, settings, outsider)
                sent[(name, how)] = (topic, forged.event_id)
                send(topic, forged.encode(), MODEL)
            send(topic, real.encode(), MODEL)  # replay
            sent[(name, "replay")] = (topic, real.event_id)
        # A command the decider's key really signed, delivered after it expired.
        command = samples["RollbackCommand"][1]
        assert isinstance(command, ev.RollbackCommand)
        past = ev.utcnow() - timedelta(minutes=5)
        late = signer_of(settings, "decider").sign(
            command.model_copy(
                update={
                    "event_id": ev.new_id(),
                    "command_id": ev.new_id(),
                    "issued_at": past,
                    "expires_at": past + timedelta(seconds=60),
                }
            )
        )
        send("commands", late.encode(), MODEL)
        sent[("RollbackCommand", "expired")] = ("commands", late.event_id)
        # A person's request and approval, really signed by ada, made 20 minutes ago.
        for name, (topic, event) in people.items():
            old = ada.sign(event.model_copy(update={"ts": ev.utcnow() - timedelta(minutes=20)}))
            send(topic, old.encode(), MODEL)
            sent[(name, "expired")] = (topic, old.event_id)
        assert producer.flush(scaled(30)) == 0

        ledgered = {t.name for t in topics.LEDGERED}
        forged_ids = {
            eid for (_, how), (topic, eid) in sent.items() if how != "replay" and topic in ledgered
        }
        # Every request and approval anyone can read, off the topics and out of the ledger,
        # sent again as it was: none is taken a second time.
        readable = [
            *_on_topics(state, ("requests", "approvals")).items(),
            *(
                (e.topic.removeprefix(settings.topic_prefix), [orjson.dumps(e.payload)])
                for e in ledger.entries()
                if e.event_type in ("RollbackRequest", "Approval")
            ),
        ]
        resent = 0
        for topic, values in readable:
            for value in values:
                send(topic, value, MODEL)
                resent += 1
        assert resent >= 2 * len(people) * 2, resent  # topic and ledger, real and expired
        assert producer.flush(scaled(30)) == 0
        _until(
            lambda: forged_ids <= {e.event_id for e in ledger.entries()},
            "the ledger did not record every forgery",
        )
        time.sleep(scaled(5))  # room for any effect to show
        after = _effects(state, settings, besides={late.event_id})
        letters = [
            ev.DeadLetter.model_validate_json(v)
            for v in _on_topics(state, ("deadletter",))["deadletter"]
        ]
        acks = [ev.CommandAck.model_validate_json(v) for v in _on_topics(state, ("acks",))["acks"]]
        entries = ledger.entries()
        shown = _cli(state, "incident", "show", incident_id, "--json")
        status = _cli(state, "deploy", "check", MODEL)
        listed = _cli(state, "ledger", "show", "--json")  # what a person reads
    finally:
        up.stop()

    assert after == before, f"forgeries had effects: {before} → {after}"
    trust = recorded_trust(RollguardSettings(state_dir=state))
    by_event = {}
    for entry in entries:
        by_event.setdefault(entry.event_id, entry)
    refused_by: dict[str, set[str]] = {}
    for letter in letters:
        raw = base64.b64decode(letter.raw_b64)
        try:
            eid = orjson.loads(raw).get("event_id")
        except orjson.JSONDecodeError:
            continue
        if letter.reason == "untrusted":
            refused_by.setdefault(eid, set()).add(letter.consumer)
    rejected = {(a.command_id, a.detail.split(":")[0]) for a in acks if a.status == "rejected"}

    assert shown.returncode == 0, shown.stderr
    in_incident = {e["event_id"] for e in json.loads(shown.stdout)["entries"]}
    # Forgeries never join it. A replay is the real event again, and what the real keys
    # signed late (a person's input, a command the decider's key signed) is not a forgery:
    # refused as late, kept as signed, and, when it names the incident's decision, shown in
    # it (as it was, once the incident sampled here was the one the command belongs to).
    joined = [
        (name, how)
        for (name, how), (_, eid) in sent.items()
        if eid in in_incident and how in FORGERIES
    ]
    assert not joined, f"forgeries joined the real incident: {joined}"
    assert status.returncode in (0, 4), status.stderr  # the decider's own status, trusted

    assert listed.returncode == 0, listed.stderr
    shown_as: dict[str, bool] = {}
    for line in listed.stdout.splitlines():
        row = json.loads(line)
        shown_as.setdefault(row["event_id"], row["provenance"]["trusted"])
    rows, failures = [], []
    for (name, how), (topic, eid) in sorted(sent.items()):
        entry = by_event.get(eid)
        if how in FORGERIES:
            expected = CONSUMERS[topic] - ({"executor"} if topic == "commands" else set())
            refused = expected <= refused_by.get(eid, set())
            if topic == "commands":
                forged = ev.RollbackCommand.model_validate(entry.payload) if entry else None
                refused = forged is not None and any(c == forged.command_id for c, _ in rejected)
            untrusted = (
                entry is not None and not provenance(entry, trust).trusted
                if topic in {t.name for t in topics.LEDGERED}
                else None  # not a ledgered topic (model status, baselines)
            )
            # `ledger show` marks it too, as a person reads the ledger
            ok = refused and untrusted is not False and shown_as.get(eid) is not True
            said = "refused" if refused else "TAKEN"
            if not CONSUMERS[topic]:
                said = "no service reads"  # its readers check it (deploy check, invalidations)
            rows.append((name, how, said, untrusted))
        elif how == "expired" and topic == "commands":
            ok = (late.command_id, "expired") in rejected
            rows.append((name, how, "rejected: expired" if ok else "TAKEN", True))
        elif how == "expired":  # a person's input past its time
            ok = "decider" in refused_by.get(eid, set())
            rows.append((name, how, "refused: expired" if ok else "TAKEN", "signed, late"))
        else:  # replay: no effect (checked above for all of them together)
            ok = True
            rows.append((name, how, "no effect", "same event"))
        if not ok:
            failures.append((name, how))
    lines = ["forgery matrix (event type, forgery, consumers, ledgered as untrusted):"]
    for name, how, said, kept in rows:
        kept_as = {True: "untrusted", False: "TRUSTED?", None: "not ledgered"}.get(kept, kept)
        lines.append(f"  {name:<20} {how:<14} {said:<18} {kept_as}")
    refused_n = sum(
        1
        for r in rows
        if r[2] in ("refused", "rejected: expired", "refused: expired", "no service reads")
    )
    lines.append(
        f"  {refused_n} of {len(rows) - sum(1 for r in rows if r[1] == 'replay')} refused; "
        f"effects: 0 (decisions, commands, applied acks, deployments {dict(after)}); "
        f"{resent} requests and approvals read off the topics and the ledger and sent again: "
        "none taken"
    )
    figure("\n".join(lines))
    assert not failures, failures
