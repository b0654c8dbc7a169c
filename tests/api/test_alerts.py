"""Alertmanager as a trigger, with the real parts: Debian's Prometheus evaluates a rule on a
metric this test exposes, Debian's Alertmanager posts the alert to a running `rollguard up`
with the receiver's secret, and the model is rolled back; the repeats Alertmanager sends make
no second decision, the resolved alert is recorded in the incident, and a wrong secret is
refused before the body is read. (Forged Alert and alert-Breach events on the topics:
tests/shell/test_forgery.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from tests.api.conftest import ROOT, Up, start_up, stop_up
from tests.conftest import HEAVY, free_port, scaled

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")

pytestmark = [
    pytest.mark.broker,
    HEAVY,
    pytest.mark.timeout(scaled(300)),
    pytest.mark.skipif(
        PROMETHEUS is None or ALERTMANAGER is None,
        reason="no prometheus or alertmanager: make test installs Debian's "
        "(apt-get install prometheus prometheus-alertmanager)",
    ),
]

MAPPED = "ModelErrorBudgetBurn"
UNMAPPED = "ModelSomewhatNoisy"


@pytest.fixture
def alerting_up(tmp_path: Path) -> Iterator[Up]:
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(ROOT / "policies" / "default.yaml", policies / "default.yaml")
    (policies / "alerts.yaml").write_text(
        yaml.safe_dump({"version": 1, "defaults": {"alerts": {MAPPED: {"tier": "immediate"}}}})
    )
    running = start_up(tmp_path / "state", ROLLGUARD_POLICY_PATH=str(policies))
    try:
        yield running
    finally:
        stop_up(running)


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def _entries(up: Up) -> list[dict[str, object]]:
    shown = up.cli("ledger", "show", "--model-id", "fraud", "--json")
    assert shown.returncode == 0, shown.stderr
    return [json.loads(line) for line in shown.stdout.splitlines() if line.startswith("{")]


def _of(entries: list[dict[str, object]], event_type: str) -> list[dict[str, object]]:
    return [e for e in entries if e.get("event_type") == event_type]


def test_a_prometheus_alert_through_alertmanager_rolls_the_model_back(
    alerting_up: Up, tmp_path: Path
) -> None:
    up = alerting_up
    secret_file = up.state / "alertmanager.token"
    assert secret_file.stat().st_mode & 0o077 == 0  # up made it, private
    secret = secret_file.read_text().strip()
    assert secret not in up.log.read_text()  # never logged
    api = httpx.Client(base_url=up.url, timeout=10)
    up.deploy("fraud", "s1", "v1", "known_good")
    up.deploy("fraud", "s2", "v2", "live")
    up.wait(
        "the API knowing fraud's live s2",
        lambda: (
            api.get("/api/models/fraud").status_code == 200
            and api.get("/api/models/fraud").json()["status"]["live"]["system_version"] == "s2"
        ),
    )

    # A metric of the model server's, as Prometheus scrapes it.
    registry = CollectorRegistry()
    errors = Gauge("model_error_ratio", "Errors per request", ["model_id"], registry=registry)
    errors.labels("fraud").set(0.0)
    metrics_port = free_port()
    server, _ = start_http_server(metrics_port, addr="127.0.0.1", registry=registry)

    am_port, prom_port = free_port(), free_port()
    api_port = urlparse(up.url).port
    (tmp_path / "alertmanager.yml").write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "rollguard",
                    "group_by": ["model_id"],
                    "group_wait": "1s",
                    "group_interval": "1s",
                    "repeat_interval": "2s",
                },
                "receivers": [
                    {
                        "name": "rollguard",
                        "webhook_configs": [
                            {
                                "url": f"http://127.0.0.1:{api_port}/api/alerts/alertmanager",
                                "send_resolved": True,
                                "http_config": {
                                    "authorization": {
                                        "type": "Bearer",
                                        "credentials_file": str(secret_file),
                                    }
                                },
                            }
                        ],
                    }
                ],
            }
        )
    )
    rule = {"expr": "model_error_ratio > 0.5", "labels": {"severity": "page"}}
    (tmp_path / "rules.yml").write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "models",
                        "interval": "1s",
                        "rules": [
                            {"alert": MAPPED, **rule},
                            {"alert": UNMAPPED, "expr": "model_error_ratio > 0.1"},
                        ],
                    }
                ]
            }
        )
    )
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(tmp_path / "rules.yml")],
                "alerting": {
                    "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
                },
                "scrape_configs": [
                    {
                        "job_name": "model-server",
                        "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                    }
                ],
            }
        )
    )
    manager = _spawn(
        [
            str(ALERTMANAGER),
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ],
        tmp_path / "alertmanager.log",
    )
    prom = _spawn(
        [
            str(PROMETHEUS),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--rules.alert.resend-delay=1s",
        ],
        tmp_path / "prometheus.log",
    )
    prometheus = httpx.Client(base_url=f"http://127.0.0.1:{prom_port}", timeout=10)

    def scraped() -> bool:
        try:
            answer = prometheus.get("/api/v1/query", params={"query": "model_error_ratio"})
        except httpx.HTTPError:
            return False
        if answer.status_code != 200:  # 503 "Service Unavailable" while Prometheus starts
            return False
        return bool(answer.json().get("data", {}).get("result"))

    try:
        up.wait("prometheus scraping the model server", scraped, 60)
        errors.labels("fraud").set(0.9)  # the bad version burns its error budget
        up.wait(
            "the rollback applied: fraud live on s1 again",
            lambda: api.get("/api/models/fraud").json()["status"]["live"]["system_version"] == "s1",
            90,
        )
        # Alertmanager goes on posting the group (repeat_interval 2s, the group changing):
        # nothing more is decided.
        time.sleep(scaled(6))
        entries = _entries(up)
        breaches = _of(entries, "Breach")
        assert [b["payload"]["kind"] for b in breaches] == ["alertmanager"]  # type: ignore[index]
        breach = breaches[0]["payload"]
        assert breach["detector"] == f"alert:{MAPPED}"  # type: ignore[index]
        assert breach["tier"] == "immediate" and breach["model_version"] == "v2"  # type: ignore[index]
        assert breaches[0]["provenance"]["role"] == "api"  # type: ignore[index]
        assert breaches[0]["provenance"]["trusted"] is True  # type: ignore[index]
        rollbacks = [
            d
            for d in _of(entries, "Decision")
            if d["payload"]["action"] == "rollback"  # type: ignore[index]
        ]
        assert len(rollbacks) == 1, rollbacks
        assert rollbacks[0]["payload"]["breach_ids"] == [breach["event_id"]]  # type: ignore[index]
        firing = {
            (a["payload"]["alertname"], a["payload"]["outcome"])  # type: ignore[index]
            for a in _of(entries, "Alert")
            if a["payload"]["status"] == "firing"  # type: ignore[index]
        }
        assert firing == {(MAPPED, "breach"), (UNMAPPED, "unmapped")}
        assert len(_of(entries, "Alert")) == 2  # each alert recorded once, however often posted
        received = up.logged("alert_received")
        assert len(received) == 2

        errors.labels("fraud").set(0.0)  # over: both alerts resolve
        up.wait(
            "the resolved alerts recorded",
            lambda: (
                len(
                    [a for a in _of(_entries(up), "Alert") if a["payload"]["status"] == "resolved"]  # type: ignore[index]
                )
                == 2
            ),
            60,
        )
        incident = api.get(f"/api/incidents/{rollbacks[0]['event_id']}").json()
        kinds = [(t["event_type"], t["summary"]) for t in incident["timeline"]]
        alerts_in_it = [s for t, s in kinds if t == "Alert"]
        assert len(alerts_in_it) == 2, kinds  # the mapped alert, firing then resolved
        assert "firing" in alerts_in_it[0] and "resolved" in alerts_in_it[1]
        assert all(UNMAPPED not in s for s in alerts_in_it)

        scrape = api.get("/metrics").text
        assert 'rollguard_alerts_received_total{outcome="breach",status="firing"} 1.0' in scrape, (
            scrape
        )
        assert 'rollguard_alerts_received_total{outcome="repeat",status="firing"}' in scrape

        # Nobody else may post: no secret, a wrong one, a role token.
        body = {"version": "4", "status": "firing", "alerts": []}
        assert api.post("/api/alerts/alertmanager", json=body).status_code == 401
        # the secret first: no body is read, parsed or judged for who has none
        assert api.post("/api/alerts/alertmanager", content=b"{not json").status_code == 401
        wrong = {"Authorization": "Bearer " + "x" * 43}
        assert api.post("/api/alerts/alertmanager", json=body, headers=wrong).status_code == 401
        right = {"Authorization": f"Bearer {secret}"}
        not_v4 = {**body, "version": "3"}
        assert api.post("/api/alerts/alertmanager", json=not_v4, headers=right).status_code == 422
        assert secret not in up.log.read_text()
    finally:
        for proc in (prom, manager):
            proc.terminate()
            proc.wait(timeout=30)
        server.shutdown()
