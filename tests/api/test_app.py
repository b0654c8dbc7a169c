"""The control API of a running `rollguard up`, over real HTTP on loopback: what an operator
reads and does through it, and that it answers with the decider's word, refusals included."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.api.conftest import Up
from tests.conftest import HEAVY, scaled

pytestmark = [pytest.mark.broker, HEAVY, pytest.mark.timeout(scaled(300))]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if m and m.group(1) == name:
            got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
            if got == want:
                return float(m.group(3))
    return 0.0


def test_an_operator_rolls_back_through_the_api_and_reads_the_incident(up: Up) -> None:
    api = httpx.Client(base_url=up.url, timeout=scaled(60))
    sre = up.token("alice", "sre")
    up.deploy("fraud", "s1", "v1", "known_good")
    up.deploy("fraud", "s2", "v2", "live")

    def target_known() -> object:
        models = api.get("/api/models").json()
        return [m for m in models if m["status"]["rollback_target"]]

    (model,) = up.wait("fraud with a rollback target on the board", target_known)  # type: ignore[misc]
    assert model["model_id"] == "fraud" and model["health"] == "ok" and model["mode"] == "enforce"
    assert model["status"]["live"]["system_version"] == "s2"

    body = {"role": "sre", "reason": "bad v2, from the API", "wait": "applied"}
    # Refused before anything is sent: no token, a token nobody holds, another role's.
    no_token = api.post("/api/models/fraud/rollback", json=body)
    assert no_token.status_code == 401 and "no role token" in no_token.json()["detail"]
    stranger = api.post(
        "/api/models/fraud/rollback", json=body, headers={"Authorization": "Bearer not-a-token"}
    )
    assert stranger.status_code == 401 and "not a token of" in stranger.json()["detail"]
    wrong_role = api.post(
        "/api/models/fraud/rollback",
        json={**body, "role": "ml_lead"},
        headers={"Authorization": f"Bearer {sre}"},
    )
    assert wrong_role.status_code == 403
    assert "alice's, whose role is sre" in wrong_role.json()["detail"]

    done = api.post(
        "/api/models/fraud/rollback", json=body, headers={"Authorization": f"Bearer {sre}"}
    )
    assert done.status_code == 200, done.text
    answer = done.json()
    assert answer["outcome"] in ("applied", "verified"), answer
    assert answer["decision"]["action"] == "rollback"
    assert answer["decision"]["target_system_version"] == "s1"
    assert [a["status"] for a in answer["acks"]][-1] in ("applied", "verified")
    assert any("manual_request" in line for line in answer["lines"])
    incident_id = answer["decision"]["event_id"]

    # The board follows: s1 live, nothing left to go back to.
    def restored() -> object:
        st = api.get("/api/models/fraud").json()["status"]
        return st["live"]["system_version"] == "s1" and st["in_flight"] is None

    up.wait("s1 live on the board", restored)

    # A second rollback has nowhere to go: the decider refuses, and the API says why (409).
    again = api.post(
        "/api/models/fraud/rollback",
        json={"role": "sre", "reason": "again"},
        headers={"Authorization": f"Bearer {sre}"},
    )
    assert again.status_code == 409, again.text
    refused = again.json()
    assert refused["outcome"] == "refused"
    assert [r["code"] for r in refused["decision"]["reasons"]] == ["no_known_good_target"]
    assert any("no_known_good_target:" in line for line in refused["lines"])

    # The incident, as the ledger recorded it, by the id the answer gave.
    def listed() -> object:
        found = api.get("/api/incidents", params={"model_id": "fraud"}).json()
        return [i for i in found if i["id"] == incident_id and i["state"] != "decided"]

    (summary,) = up.wait("the incident in the ledger", listed)  # type: ignore[misc]
    assert summary["command_id"] == answer["decision"]["command_id"]
    assert summary["state"] in ("applied", "verified")
    detail = api.get(f"/api/incidents/{incident_id}").json()
    kinds = [e["event_type"] for e in detail["timeline"]]
    assert "Decision" in kinds and "RollbackCommand" in kinds and "CommandAck" in kinds
    assert any(e["summary"].startswith("ack applied") for e in detail["timeline"])
    assert detail["figures"]["mttr_s"] > 0
    # The same id works in the CLI, and names the same incident.
    shown = up.cli("incident", "show", incident_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["command_ids"] == detail["command_ids"]
    assert api.get("/api/incidents/nope").status_code == 404
    held = api.get("/api/incidents", params={"state": "held"}).json()
    assert [i["reasons"] for i in held] == [["no_known_good_target"]]

    integrity = api.get("/api/ledger/integrity").json()
    assert integrity["ok"] is True and integrity["entries"] > 0

    ready = api.get("/readyz").json()
    assert set(ready["services"]) == {
        "api",
        "decider",
        "detector",
        "executor",
        "ledger",
        "notifier",
        "broker",
    }
    text = api.get("/metrics").text
    assert metric(text, "rollguard_commands_total", level="1") == 1
    assert (
        metric(text, "rollguard_decisions_total", action="rollback", reason="manual_request") == 1
    )
    assert (
        metric(text, "rollguard_decisions_total", action="hold", reason="no_known_good_target") == 1
    )
    assert metric(text, "rollguard_acks_total", status="applied") == 1
    assert metric(text, "rollguard_time_to_rollback_seconds_count") == 1


def test_an_approval_through_the_api_launches_the_rollback_it_waited_for(up: Up) -> None:
    api = httpx.Client(base_url=up.url, timeout=scaled(60))
    sre = up.token("alice", "sre")
    lead = up.token("dana", "data_engineering_lead")
    up.deploy("churn", "s1", "v1", "known_good")
    up.deploy("churn", "s2", "v2", "live")
    up.wait(
        "churn with a target",
        lambda: [m for m in api.get("/api/models").json() if m["status"]["rollback_target"]],
    )
    asked = api.post(
        "/api/models/churn/rollback",
        json={"role": "sre", "reason": "whole system", "level": 3},
        headers={"Authorization": f"Bearer {sre}"},
    )
    assert asked.status_code == 202, asked.text  # awaiting approval
    pending_id = asked.json()["decision"]["event_id"]
    assert asked.json()["outcome"] == "awaiting_approval"

    (pending,) = up.wait(  # type: ignore[misc]
        "the decision awaiting approval", lambda: api.get("/api/approvals").json()
    )
    assert pending["decision_id"] == pending_id and pending["model_id"] == "churn"
    assert pending["required_roles"] == ["data_engineering_lead"]

    # The approver's role is the decider's to check, not the caller's word: an sre token
    # claiming the lead's role is refused before anything is sent.
    claimed = api.post(
        f"/api/approvals/{pending_id}",
        json={"role": "data_engineering_lead"},
        headers={"Authorization": f"Bearer {sre}"},
    )
    assert claimed.status_code == 403
    approved = api.post(
        f"/api/approvals/{pending_id}",
        json={"role": "data_engineering_lead", "comment": "go", "wait": "applied"},
        headers={"Authorization": f"Bearer {lead}"},
    )
    assert approved.status_code == 200, approved.text
    doc = approved.json()
    assert doc["outcome"] in ("applied", "verified")
    assert doc["decision"]["action"] == "rollback" and doc["decision"]["level"] == 3
    assert up.wait("no approval left", lambda: api.get("/api/approvals").json() == [] or None)


def test_pausing_a_model_and_switching_its_mode_through_the_api(up: Up) -> None:
    api = httpx.Client(base_url=up.url, timeout=scaled(60))
    sre = {"Authorization": f"Bearer {up.token('alice', 'sre')}"}
    auditor = {"Authorization": f"Bearer {up.token('ann', 'auditor')}"}
    up.deploy("fraud", "s1", "v1", "known_good")
    up.deploy("fraud", "s2", "v2", "live")
    up.wait("fraud on the board", lambda: api.get("/api/models/fraud").status_code == 200)

    paused = api.post(
        "/api/models/fraud/pause", json={"role": "sre", "reason": "feature store migration"},
        headers=sre,
    )  # fmt: skip
    assert paused.status_code == 200, paused.text
    assert [r["code"] for r in paused.json()["decision"]["reasons"]] == ["paused"]

    def shown() -> object:
        m = api.get("/api/models/fraud").json()
        return m if m["health"] == "paused" else None

    model = up.wait("fraud paused on the board", shown)
    assert model["status"]["paused"]["by"] == "alice"  # type: ignore[index]
    assert model["status"]["paused"]["reason"] == "feature store migration"  # type: ignore[index]

    # An auditor may read everything and change nothing: the decider refuses (409), saying so.
    refused = api.post(
        "/api/models/fraud/mode", json={"role": "auditor", "mode": "observe", "reason": "x"},
        headers=auditor,
    )  # fmt: skip
    assert refused.status_code == 409, refused.text
    assert any("not_permitted:" in line for line in refused.json()["lines"])

    switched = api.post(
        "/api/models/fraud/mode", json={"role": "sre", "mode": "recommend", "reason": "trial"},
        headers=sre,
    )  # fmt: skip
    assert switched.status_code == 200, switched.text
    up.wait(
        "recommend on the board", lambda: api.get("/api/models/fraud").json()["mode"] == "recommend"
    )
    resumed = api.post(
        "/api/models/fraud/resume", json={"role": "sre", "reason": "migration done"}, headers=sre
    )
    assert resumed.status_code == 200, resumed.text
    up.wait("resumed", lambda: api.get("/api/models/fraud").json()["status"]["paused"] is None)
    # Who and why, in the ledger: the CLI's status says the mode, the incident list the holds.
    status = up.cli("status", "fraud")
    assert "mode recommend" in status.stdout, status.stdout
    held = api.get("/api/incidents", params={"model_id": "fraud"}).json()
    said = {code for i in held for code in i["reasons"]}
    assert {"paused", "mode_set", "resumed"} <= said, held
