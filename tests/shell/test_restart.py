"""Issue 11: `rollguard up` killed with SIGKILL at any step of an incident and started again on
the same state directory completes the incident exactly once and loses nothing.

Driven as an operator meets it: `up --with-router` serving synthetic traffic, bad versions
deployed with `rollguard deploy record`, the whole process group SIGKILLed when the ledger
shows the chosen step (plus a random delay), `up` started again. The ledger is read straight
from its SQLite file, the broker's topics with a consumer of our own.

``ROLLGUARD_TEST_UP_KILLS`` sets the number of kills (default: one per step, 6); the figure
quoted in the docs comes from ``ROLLGUARD_TEST_UP_KILLS=24``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from rollguard import topics
from rollguard.bus import read_topic
from rollguard.events import LatencyEvent
from rollguard.settings import RollguardSettings
from tests.conftest import HEAVY, scaled
from tests.shell.test_lifecycle import ROOT, Running, _cli, _gone, _launch, _read, _until

MODEL = "demo-model"  # the router's default model
STEPS = ("breach", "decision", "command", "received", "applied", "verifying")
KILLS = int(os.environ.get("ROLLGUARD_TEST_UP_KILLS", len(STEPS)))

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc to find the broker's processes"
)


@dataclass
class Entry:
    seq: int
    topic: str
    event_type: str
    event_id: str
    payload: dict[str, Any]
    recorded_at: str = ""

    def recorded_at_utc(self) -> datetime:
        return datetime.fromisoformat(self.recorded_at).replace(tzinfo=UTC)


class Ledger:
    """The ledger's SQLite file as the running ledger writes it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[Entry]:
        if not self.path.exists():
            return []
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10) as db:
            try:
                rows = db.execute(
                    "SELECT seq, topic, event_type, event_id, payload, recorded_at"
                    " FROM ledger_entries ORDER BY seq"
                ).fetchall()
            except sqlite3.OperationalError:  # not created yet
                return []
        return [Entry(r[0], r[1], r[2], r[3], orjson.loads(r[4]), r[5]) for r in rows]


ALERT_NAME = "DrillAlert"


def _policy(directory: Path) -> Path:
    directory.mkdir()
    (directory / "00-default.yaml").write_bytes((ROOT / "policies" / "default.yaml").read_bytes())
    rollback = {"verification_s": 2.0, "cooldown_s": 1.0}
    # The reference router's synthetic feature f0 trips feature_quality's out-of-range rate
    # (6-9 % against 5 %) on the good version with the baseline captured from its first
    # seconds after each start, failing verification: a detection matter (noted for issue
    # 14), not what this drill measures.
    detectors = {"feature_quality": {"enabled": False}}
    # An Alertmanager alert the forgery drill posts (tests/shell/test_forgery.py): a delayed
    # breach, a page, no rollback.
    alerts = {ALERT_NAME: {"tier": "delayed"}}
    (directory / "99-drill.yaml").write_text(
        yaml.safe_dump(
            {"models": {MODEL: {"rollback": rollback, "detectors": detectors, "alerts": alerts}}}
        )
    )
    return directory


def _deploy(state: Path, system: str, model: str, status: str) -> None:
    done = _cli(
        state,
        *("deploy", "record", "--model-id", MODEL, "--system-version", system),
        *("--model", model, "--feature-pipeline", "fp", "--config", "c", "--infra", "i"),
        *("--status", status),
    )
    assert done.returncode == 0, done.stderr


def _step_reached(entries: list[Entry], system: str, step: str) -> tuple[bool, str | None]:
    """Whether the incident of bad system version ``system`` has reached ``step``; and its
    command id once there is one."""
    command = next(
        (
            e.payload["command_id"]
            for e in entries
            if e.event_type == "RollbackCommand"
            and e.payload["from_manifest"]["system_version"] == system
        ),
        None,
    )
    acks = {
        e.payload["status"]
        for e in entries
        if e.event_type == "CommandAck"
        and e.payload["command_id"] == command
        and e.payload.get("component") is None
    }
    reached = {
        "breach": any(
            e.event_type == "Breach" and e.payload.get("system_version") == system for e in entries
        ),
        "decision": any(
            e.event_type == "Decision"
            and e.payload["action"] == "rollback"
            and e.payload.get("system_version") == system
            for e in entries
        ),
        "command": command is not None,
        "received": "received" in acks,
        "applied": "applied" in acks,
        "verifying": "applied" in acks,
        "verified": "verified" in acks,
    }
    return reached[step], command


class Up:
    """`rollguard up --with-router` on one state directory, killed and started again."""

    def __init__(self, state: Path, env: dict[str, str]) -> None:
        self.state, self.env = state, env
        self.run: Running | None = None
        self.starts: list[float] = []

    def start(self) -> None:
        began = time.monotonic()
        self.run = run = _launch(["up", "--with-router"], self.state, self.env)
        pid = run.proc.pid
        # the record a killed up left behind names another pid: wait for this one's
        _until(lambda: f'"pid":{pid}' in _read(self.state / "broker.json"), "up never recorded")
        self.starts.append(time.monotonic() - began)

    def kill(self) -> None:
        assert self.run is not None
        broker = self.run.broker()
        os.killpg(self.run.proc.pid, signal.SIGKILL)
        self.run.proc.wait()
        assert broker is not None and _gone(broker), "the broker outlived up"
        assert not _storage_processes(self.state), "the broker's storage outlived up"

    def stop(self) -> int:
        assert self.run is not None
        self.run.stop(signal.SIGTERM)
        return self.run.proc.returncode


def _storage_processes(state: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "rollguard.objectstore" in cmdline and str(state) in cmdline:
                found.append(int(entry.name))
    return found


def _skewed(state: Path, model: str, system: str) -> None:
    """Issue 11: a single schema-valid LatencyEvent dated an hour ahead opened a window in the
    future that every later event of its version folded into (0 breaches). One dated +1 h and
    one in 2200, from a producer of our own, as a client with a wrong clock would send them."""
    bootstrap = json.loads((state / "broker.json").read_text())["bootstrap"]
    now = datetime.now(UTC)
    values = [
        LatencyEvent(
            ts=ts,
            model_id=MODEL,
            model_version=model,
            system_version=system,
            request_id=f"skewed-{i}",
            latency_ms=20.0,
            status="error",
        ).encode()
        for i, ts in enumerate((now + timedelta(hours=1), datetime(2200, 1, 1, tzinfo=UTC)))
    ]

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for value in values:
                await producer.send_and_wait("rollguard.latency", value, key=MODEL.encode())
        finally:
            await producer.stop()

    asyncio.run(send())


def _story(entries: list[Entry], up: Up) -> str:
    """What the ledger and up's warnings say, for a drill that stalled: why, not only that."""
    lines = []
    for e in entries:
        p = e.payload
        if e.event_type == "Breach":
            what = f"{p.get('detector')} {p.get('model_version')} {p.get('system_version')}"
        elif e.event_type == "Decision":
            codes = ",".join(r["code"] for r in p["reasons"])
            what = f"{p['action']} {p.get('system_version')} [{codes}]"
        elif e.event_type == "CommandAck":
            what = f"{p['command_id'][:8]} {p['status']} {p.get('component') or ''}"
        elif e.event_type == "RollbackCommand":
            what = f"{p['command_id'][:8]} from {p['from_manifest']['system_version']}"
        else:
            what = ""
        lines.append(f"  {e.seq:>5} {e.event_type:<16} {what}")
    said = [
        line
        for line in (up.run.said().splitlines() if up.run else [])
        if any(word in line.lower() for word in ("warning", "error", "traceback"))
    ]
    return "\n".join(["ledger:", *lines[-60:], "up warned:", *said[-40:]])


def _read_raw(state: Path, *names: str) -> list[bytes]:
    return [v for values in _on_topics(state, names).values() for v in values]


def _on_topics(state: Path, names: tuple[str, ...] = ()) -> dict[str, list[bytes]]:
    """Every record of every ledgered topic (or of ``names``), read from the running up's
    broker."""
    bootstrap = json.loads((state / "broker.json").read_text())["bootstrap"]
    settings = RollguardSettings(kafka_bootstrap=bootstrap, enable_idempotence=False)

    async def read() -> dict[str, list[bytes]]:
        out = {}
        for name in names or [t.name for t in topics.LEDGERED]:
            out[name] = [r.value for r in await read_topic(settings, name)]
        return out

    return asyncio.run(read())


@HEAVY
@pytest.mark.timeout(scaled(60 + 40 * (KILLS + 1)))
def test_up_killed_at_every_step_of_incidents_completes_each_once(
    tmp_path: Path, figure: Callable[[str], None]
) -> None:
    state = tmp_path / "state"
    bad = [f"b{i}" for i in range(1, KILLS + 2)]
    versions = {"v1": {"error_rate": 0.01}, **{b: {"error_rate": 0.3} for b in bad}}
    env = {
        "ROLLGUARD_POLICY_PATH": str(_policy(tmp_path / "policy")),
        "ROLLGUARD_ROUTER_VERSIONS": json.dumps(versions),
        "ROLLGUARD_ROUTER_RATE_RPS": "300",
    }
    ledger = Ledger(state / "ledger.db")
    rng = random.Random(int(os.environ.get("ROLLGUARD_TEST_SEED", "11")))
    up = Up(state, env)
    up.start()
    _deploy(state, "s0", "v1", "known_good")
    report: list[str] = []
    timings: dict[str, list[float]] = {}
    try:
        # Incident 0 is not interrupted: the time an incident takes. Then one kill each.
        for i, model in enumerate(bad):
            system = f"s{i + 1}"
            step = None if i == 0 else STEPS[(i - 1) % len(STEPS)]
            deployed = time.monotonic()
            _deploy(state, system, model, "live")
            if i == 0:
                _skewed(state, model, system)
            killed_after = None
            if step is not None:
                _until(
                    lambda: _step_reached(ledger.entries(), system, step)[0],  # noqa: B023
                    f"incident {system} never reached {step}",
                )
                if step == "verifying":
                    time.sleep(rng.uniform(0.3, 1.5))  # inside the 2 s window
                time.sleep(rng.uniform(0.0, 0.3))
                killed_after = time.monotonic() - deployed
                up.kill()
                up.start()
            try:
                _until(
                    lambda: _step_reached(ledger.entries(), system, "verified")[0],  # noqa: B023
                    f"incident {system} (killed after {step}) was never verified",
                    timeout_s=180,
                )
            except AssertionError as stalled:
                raise AssertionError(f"{stalled}\n{_story(ledger.entries(), up)}") from None
            took = time.monotonic() - deployed
            timings.setdefault(step or "none", []).append(took)
            entries = ledger.entries()
            commands = [
                e
                for e in entries
                if e.event_type == "RollbackCommand"
                and e.payload["from_manifest"]["system_version"] == system
            ]
            assert len(commands) == 1, f"{system}: {len(commands)} commands"
            verified = _cli(state, "ledger", "verify")
            assert verified.returncode == 0, verified.stdout + verified.stderr
            report.append(
                f"{system}: killed after {step or '-'} at {killed_after or 0:.2f}s, "
                f"verified {took:.1f}s after the deploy"
            )
        on_topics = _on_topics(state)
        dead = [orjson.loads(v) for v in _read_raw(state, topics.DEADLETTER.name)]
    finally:
        code = up.stop()
    assert code == 143
    entries = ledger.entries()
    # 0 ledger entries lost: every event on every ledgered topic is in the ledger, once.
    recorded = Counter((e.topic.removeprefix("rollguard."), e.event_id) for e in entries)
    for topic, values in on_topics.items():
        for value in values:
            event_id = orjson.loads(value).get("event_id")
            assert recorded[(topic, event_id)] == 1, f"{topic} {event_id} not in the ledger once"
    # 0 commands applied twice: one final applied ack per command; and no replay refused.
    applied = Counter(
        e.payload["command_id"]
        for e in entries
        if e.event_type == "CommandAck"
        and e.payload["status"] == "applied"
        and e.payload.get("component") is None
    )
    commands = {e.payload["command_id"] for e in entries if e.event_type == "RollbackCommand"}
    assert len(commands) == len(bad) and all(applied[c] == 1 for c in commands), applied
    rejected = [
        e.payload
        for e in entries
        if e.event_type == "CommandAck" and e.payload["status"] == "rejected"
    ]
    assert not rejected, rejected
    unacknowledged = [
        e.payload
        for e in entries
        if e.event_type == "Decision"
        and any(r["code"] == "command_unacknowledged" for r in e.payload["reasons"])
    ]
    assert not unacknowledged, unacknowledged  # every rollback's acks were seen
    # The two skewed events were refused with their reason, and did not blind the version:
    # its first breach came from the window its first event opened (event time, not wall).
    skewed = [d for d in dead if d["error"].startswith("clock_skew: ")]
    assert len(skewed) == 2, [d["error"] for d in dead]
    first = min(
        (
            e.payload
            for e in entries
            if e.event_type == "Breach" and e.payload.get("system_version") == "s1"
        ),
        key=lambda b: b["window_end"],
    )
    opened = datetime.fromisoformat(first["version_first_event_ts"])
    assert datetime.fromisoformat(first["window_start"]) <= opened + timedelta(seconds=3)
    starts = sorted(up.starts)
    summary = (
        f"{KILLS} kills: every incident verified once; restart of up p50 "
        f"{starts[len(starts) // 2]:.1f}s; deploy → verified by step: "
        + ", ".join(f"{k} {sorted(v)[len(v) // 2]:.1f}s" for k, v in timings.items())
    )
    figure("\n".join([*report, summary]))
