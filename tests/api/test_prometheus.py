"""The real Prometheus server (Debian's ``prometheus`` package) scrapes a running `rollguard
up`, with rollguard's own alert rules loaded (deploy/prometheus/rollguard-alerts.yml): a PromQL
query sees the rollback counted, and every rule loads and evaluates against real series."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from tests.api.conftest import Up
from tests.conftest import HEAVY, free_port, scaled

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.broker,
    HEAVY,
    pytest.mark.timeout(scaled(300)),
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="no prometheus: make test installs Debian's (apt-get install prometheus)",
    ),
]


def test_prometheus_scrapes_up_and_counts_the_rollback(up: Up, tmp_path: Path) -> None:
    target = urlparse(up.url).netloc
    rules = tmp_path / "rollguard-alerts.yml"
    shutil.copy(ROOT / "deploy" / "prometheus" / "rollguard-alerts.yml", rules)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "rollguard", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    prom = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def query(promql: str) -> list[dict[str, object]]:
        try:
            answer = api.get("/api/v1/query", params={"query": promql})
        except httpx.HTTPError:
            return []
        if answer.status_code != 200:  # 503 "Service Unavailable" while Prometheus starts
            return []
        doc = answer.json()
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])

    try:
        up.wait("prometheus scraping up", lambda: query('up{job="rollguard"} == 1'), 60)
        token = up.token("alice", "sre")
        up.deploy("fraud", "s1", "v1", "known_good")
        up.deploy("fraud", "s2", "v2", "live")
        # the decider reads deployments and requests on separate partitions and agents: ask
        # once it has both deployments (else: no known-good target other than the live one)
        board = httpx.Client(base_url=up.url, timeout=10)

        def target() -> bool:
            got = board.get("/api/models/fraud")
            status = got.json()["status"] if got.status_code == 200 else {}
            live, target = status.get("live") or {}, status.get("rollback_target") or {}
            return (live.get("system_version"), target.get("system_version")) == ("s2", "s1")

        up.wait("the decider knowing s2 live and s1 as its target", target, 60)
        done = up.cli(
            "rollback", "fraud", "--as", "sre", "--wait", "applied", "--timeout", "60",
            ROLLGUARD_TOKEN=token,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

        counted = up.wait(
            "the rollback counted in Prometheus",
            lambda: query('sum by (level) (rollguard_commands_total{job="rollguard"})'),
            60,
        )
        (series,) = counted  # type: ignore[misc]
        assert series["metric"] == {"level": "1"}  # type: ignore[index]
        assert float(series["value"][1]) == 1  # type: ignore[index]
        ledgered = query('sum(rollguard_events_consumed_total{service="ledger"})')
        assert ledgered and float(ledgered[0]["value"][1]) >= 4  # type: ignore[index]
        decided = up.wait(  # the decider (faust) counts what it reads too: the request
            "the decider's read counted",
            lambda: query('rollguard_events_consumed_total{service="decider",topic=~".*requests"}'),
            30,
        )
        assert [float(s["value"][1]) for s in decided] == [1]  # type: ignore[index]
        applied = up.wait(  # scraped after the executor counted it (the CLI saw it first)
            "the applied ack counted",
            lambda: query('rollguard_acks_total{status="applied"}'),
            30,
        )
        assert [float(s["value"][1]) for s in applied] == [1]  # type: ignore[index]
        # The decider times the rollback once it reads the applied ack (the CLI saw it first).
        up.wait(
            "the rollback timed",
            lambda: query("rollguard_time_to_rollback_seconds_count > 0"),
            30,
        )
        seconds = query("histogram_quantile(0.5, rollguard_time_to_rollback_seconds_bucket)")
        assert seconds and float(seconds[0]["value"][1]) > 0  # type: ignore[index]
        verified = up.wait(
            "the ledger's verification scraped",
            lambda: query("rollguard_ledger_verify_ok == 1"),
            90,
        )
        assert verified

        # Every shipped rule loaded and evaluated without error against these series.
        groups = api.get("/api/v1/rules").json()["data"]["groups"]
        loaded = [r for g in groups for r in g["rules"]]
        assert len(loaded) == sum(
            len(g["rules"]) for g in yaml.safe_load(rules.read_text())["groups"]
        )
        broken = [(r["name"], r.get("lastError")) for r in loaded if r.get("health") == "err"]
        assert not broken, broken
        firing = {r["name"] for r in loaded if r.get("state") == "firing"}
        assert "RollguardLedgerBroken" not in firing
        deadline = time.monotonic() + scaled(10)
        while time.monotonic() < deadline and any(r.get("health") == "unknown" for r in loaded):
            time.sleep(1)
            loaded = [
                r for g in api.get("/api/v1/rules").json()["data"]["groups"] for r in g["rules"]
            ]
        assert all(r.get("health") == "ok" for r in loaded), [
            (r["name"], r.get("health")) for r in loaded
        ]
    finally:
        prom.terminate()
        prom.wait(timeout=30)
