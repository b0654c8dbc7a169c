"""`rollguard up --with-router` run as a user runs it, and what watches it from outside.

The command on a fresh state directory with JSON logs, the shipped policy plus an override that
lets incidents follow each other (no cooldown to wait out, a 5 s verification window, no
feature_quality detector: see ``POLICY_OVERRIDE``), and a webhook receiver as the notifier's
channel. From outside: its log, the ledgered topics (read from the beginning as they fill), the
CLI for deploys and the ledger, the state directory's databases, and the embedded broker's pid
(found in /proc: Linux only). Used by benchmarks/freeze.py and tests/shell/test_outage_up.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from rollguard import topics
from rollguard.bus import client_options
from rollguard.settings import RollguardSettings

ROOT = Path(__file__).resolve().parents[1]
MODEL = "demo-model"
#: The router's default versions: v1 good, v2 bad (services/router/settings.py).
GOOD, BAD = "v1", "v2"
#: Every service `up --with-router` runs.
SERVICES = 7

POLICY_OVERRIDE = f"""\
version: 1
models:
  {MODEL}:
    rollback:
      cooldown_s: 1
      verification_s: 5
    # The router's synthetic feature f0 trips feature_quality's out-of-range rate (6 % against
    # 5 %) on the good version, now and then, against the baseline captured from its first
    # seconds: the restored version then fails verification and the model is locked (seen
    # once, after a freeze, in tests/shell/test_outage_up.py). A detection matter, as the kill
    # drill found (tests/shell/test_restart.py), not what this measures.
    detectors:
      feature_quality:
        enabled: false
"""

#: What every incident tells the webhook.
TOLD = frozenset({"rollback_decided", "rollback_applied", "rollback_verified"})


def wall(ts: str) -> float:
    """An ISO timestamp (a log line's, an event's) as seconds since the epoch."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


async def until(check: Callable[[], Any], timeout_s: float, why: str) -> Any:
    """``check()`` once it is truthy; TimeoutError(why) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(why)
        await asyncio.sleep(0.05)


class Log:
    """The JSON lines `up` writes to stderr, read as they come; other lines kept apart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self.other: list[str] = []  # not JSON: a traceback, a library's own line
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                doc = None
            if isinstance(doc, dict):
                self.events.append(doc)
            elif line.strip():
                self.other.append(line.decode(errors="replace"))
        return self.events

    def named(self, name: str, since: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.read()[since:] if e.get("event") == name]


class Webhook:
    """The notifier's webhook channel points here; every alert received is kept."""

    def __init__(self) -> None:
        self.alerts: list[tuple[str, str]] = []  # (incident, kind)
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{port}/"

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.json()
        for alert in body.get("alerts", []):
            self.alerts.append((alert["labels"]["incident"], alert["annotations"]["event"]))
        return web.Response(status=200)

    def told(self, incident: str) -> set[str]:
        return {kind for ref, kind in self.alerts if ref == incident}

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Topics:
    """Every record of the ledgered topics, read from the beginning as they arrive."""

    def __init__(self, bootstrap: str) -> None:
        self.settings = RollguardSettings(kafka_bootstrap=bootstrap, log_format="json")
        self.records: list[tuple[str, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            **client_options(self.settings), enable_auto_commit=False, fetch_max_wait_ms=50
        )
        await consumer.start()
        await consumer.topics()
        parts = [
            TopicPartition(name, p)
            for name in (self.settings.topic(t.name) for t in topics.LEDGERED)
            for p in sorted(consumer.partitions_for_topic(name) or ())
        ]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        self._task = asyncio.create_task(self._follow(consumer))

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                try:
                    batches = await consumer.getmany(timeout_ms=200)
                except KafkaError:
                    await asyncio.sleep(0.5)  # the broker is frozen for this reader too
                    continue
                for tp, records in batches.items():
                    name = tp.topic.removeprefix(self.settings.topic_prefix)
                    for r in records:
                        with contextlib.suppress(orjson.JSONDecodeError):
                            self.records.append((name, orjson.loads(r.value)))
        finally:
            await consumer.stop()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def on(self, name: str) -> list[dict[str, Any]]:
        return [doc for topic, doc in self.records if topic == name]

    def commands_for(self, system_version: str) -> list[dict[str, Any]]:
        """The commands that roll ``system_version`` back (a second one if the first expired
        before an executor took it, as after a long freeze)."""
        return [
            c for c in self.on("commands") if c["from_manifest"]["system_version"] == system_version
        ]

    def acks(self, command_id: str, status: str) -> list[dict[str, Any]]:
        """A command's final acks of ``status`` (and the decider's verification ones)."""
        return [
            a
            for a in self.on("acks")
            if a["command_id"] == command_id
            and a["status"] == status
            and a.get("component") in (None, "verification")
        ]


@dataclass
class Incident:
    """A bad version deployed, and when its rollback was applied and verified."""

    system_version: str
    deployed_ts: float = 0.0  # the manifest's own time
    command_id: str | None = None
    applied_ts: float | None = None
    verified_ts: float | None = None

    @property
    def to_applied_s(self) -> float | None:
        return None if self.applied_ts is None else round(self.applied_ts - self.deployed_ts, 2)


def _spawn(
    argv: list[str], cwd: Path, env: dict[str, str], err: IO[bytes]
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=err,
        start_new_session=True,  # as from a terminal: a process group of its own
    )


class LiveUp:
    """`rollguard up --with-router` on ``base/state``; ``factor`` scales every wait."""

    def __init__(
        self,
        base: Path,
        *,
        factor: float = 1.0,
        policy: str = POLICY_OVERRIDE,
        env: dict[str, str] | None = None,
    ) -> None:
        self.base = base
        self.policy = policy
        self.extra_env = env or {}
        self.state = base / "state"
        self.factor = factor
        self.webhook = Webhook()
        self._topics: Topics | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.log = Log(self.state / "stderr.jsonl")
        self.incidents: list[Incident] = []

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self._proc is not None, "not running"
        return self._proc

    @property
    def topics(self) -> Topics:
        assert self._topics is not None, "not running"
        return self._topics

    def scaled(self, seconds: float) -> float:
        return seconds * self.factor

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLGUARD_")}
        env.update(
            ROLLGUARD_STATE_DIR=str(self.state),
            ROLLGUARD_LOG_FORMAT="json",
            ROLLGUARD_POLICY_PATH=str(self.base / "policies"),
            ROLLGUARD_NOTIFIER_WEBHOOK_URL=self.webhook.url,
            ROLLGUARD_API_PORT="0",  # any free port: the API says which (api_url)
        )
        env.update(self.extra_env)
        return env

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LiveUp]:
        """Started, its six services up and its topics followed; stopped with SIGINT after."""
        policies = self.base / "policies"
        policies.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "policies" / "default.yaml", policies / "default.yaml")
        (policies / "zz-quick-incidents.yaml").write_text(self.policy)
        self.state.mkdir(parents=True, exist_ok=True)
        await self.webhook.start()
        with self.log.path.open("wb") as err:
            argv = [sys.executable, "-m", "rollguard_shell", "up", "--with-router"]
            self._proc = _spawn(argv, self.base, self.env(), err)
        try:
            await until(
                lambda: len(self.log.named("started")) >= SERVICES or self.proc.poll() is not None,
                self.scaled(90),
                "rollguard up did not start its services",
            )
            if self.proc.poll() is not None:
                raise RuntimeError(f"rollguard up exited {self.proc.returncode}: {self.log.other}")
            self._topics = Topics(self.bootstrap())
            await self._topics.start()
            yield self
        finally:
            if self._topics is not None:
                await self._topics.stop()
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGINT)
                try:
                    await asyncio.to_thread(self.proc.wait, self.scaled(30))
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    await asyncio.to_thread(self.proc.wait)
            await self.webhook.stop()

    def api_url(self) -> str:
        """Where its API and dashboard listen (its "listening" log line)."""
        return str(self.log.named("listening")[0]["url"])

    def bootstrap(self) -> str:
        return str(orjson.loads((self.state / "broker.json").read_bytes())["bootstrap"])

    def broker_pid(self) -> int:
        """The tansu process of this `up` (not its object store, whose bucket is 'tansu')."""
        listener = f"tcp://{self.bootstrap()}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if Path(argv[0].decode()).name.startswith("tansu") and listener in argv:
                return int(entry.name)
        raise RuntimeError(f"no tansu process listens on {listener.decode()}")

    async def cli(self, *args: str) -> str:
        """A `rollguard` command with the same state directory; its stdout."""
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "rollguard_shell", *args),
            cwd=self.base,
            env=self.env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), self.scaled(120))
        if proc.returncode != 0:
            raise RuntimeError(f"rollguard {' '.join(args)} exited {proc.returncode}: {err!r}")
        return out.decode()

    async def deploy(self, system_version: str, model_version: str, status: str) -> float:
        """`rollguard deploy record`; the manifest's own time, once it is on the topic."""
        await self.cli(
            *("deploy", "record", "--model-id", MODEL, "--system-version", system_version),
            *("--model", model_version, "--feature-pipeline", "fp", "--config", "c"),
            *("--infra", "i", "--status", status),
        )

        def on_topic() -> dict[str, Any] | None:
            return next(
                (
                    m
                    for m in self.topics.on("deployments")
                    if m["system_version"] == system_version and m["status"] == status
                ),
                None,
            )

        manifest = await until(on_topic, self.scaled(30), f"{system_version} not on the topic")
        return wall(manifest["ts"])

    async def known_good(self) -> None:
        """v1 recorded known good, and served."""
        await self.deploy("sys-1", GOOD, "known_good")
        await until(
            lambda: any(e.get("model_version") == GOOD for e in self.log.named("switched")),
            self.scaled(30),
            "the router never served v1",
        )

    async def start_incident(self, label: str) -> Incident:
        """The bad version deployed live as ``sys-bad-<label>``."""
        incident = Incident(f"sys-bad-{label}")
        incident.deployed_ts = await self.deploy(incident.system_version, BAD, "live")
        self.incidents.append(incident)
        return incident

    async def finish(self, incident: Incident, timeout_s: float) -> Incident:
        """Wait until a rollback of the incident's version is applied, and verified
        (TimeoutError if not)."""

        def applied() -> tuple[str, dict[str, Any]] | None:
            for command in self.topics.commands_for(incident.system_version):
                acks = self.topics.acks(command["command_id"], "applied")
                if acks:
                    return command["command_id"], acks[0]
            return None

        cid, ack = await until(
            applied, timeout_s, f"no rollback of {incident.system_version} was applied"
        )
        incident.command_id, incident.applied_ts = cid, wall(ack["ts"])
        verified = await until(
            lambda: self.topics.acks(cid, "verified"),
            timeout_s,
            f"the rollback of {incident.system_version} was never verified",
        )
        incident.verified_ts = wall(verified[0]["ts"])
        return incident

    async def nothing_owed_lost(self, incidents: list[Incident] | None = None) -> list[str]:
        """What was owed and is missing: per incident (default: every one so far) its applied
        command's acks (received, applied once, verified), invalidation and notifications;
        control events not in the ledger; acks, invalidations or notifications still waiting
        in an outbox."""
        faults: list[str] = []
        for incident in self.incidents if incidents is None else incidents:
            name, cid = incident.system_version, incident.command_id
            if cid is None:
                faults.append(f"{name}: no rollback applied")
                continue
            for status in ("received", "applied", "verified"):
                if not self.topics.acks(cid, status):
                    faults.append(f"{name}: no {status} ack")
            applied = {a["event_id"] for a in self.topics.acks(cid, "applied")}
            if len(applied) > 1:
                faults.append(f"{name}: applied {len(applied)} times")
            if not any(i["command_id"] == cid for i in self.topics.on("invalidations")):
                faults.append(f"{name}: no invalidation")
            with contextlib.suppress(TimeoutError):
                await until(lambda cid=cid: self.webhook.told(cid) >= TOLD, self.scaled(30), "")
            if not self.webhook.told(cid) >= TOLD:
                faults.append(f"{name}: notified {sorted(self.webhook.told(cid))}")
        faults += await self._ledger_has_everything()
        faults += self._outboxes_empty()
        return faults

    async def _ledger_has_everything(self) -> list[str]:
        on_topics = {(name, doc["event_id"]) for name, doc in list(self.topics.records)}
        missing: set[tuple[str, str]] = set()
        deadline = time.monotonic() + self.scaled(60)
        while time.monotonic() < deadline:
            stored = set()
            for line in (await self.cli("ledger", "export", "--format", "jsonl")).splitlines():
                entry = orjson.loads(line)
                stored.add((entry["topic"].removeprefix("rollguard."), entry["event_id"]))
            missing = on_topics - stored
            if not missing:
                return []
            await asyncio.sleep(1.0)
        return [f"{len(missing)} control events not in the ledger, e.g. {sorted(missing)[:3]}"]

    def _outboxes_empty(self) -> list[str]:
        faults = []
        with contextlib.closing(sqlite3.connect(self.state / "executor.db")) as db:
            for table in ("executor_outbox", "executor_invalidations"):
                [(n,)] = db.execute(f"select count(*) from {table} where sent_at is null")
                if n:
                    faults.append(f"executor: {n} unsent in {table}")
        with contextlib.closing(sqlite3.connect(self.state / "notifier.db")) as db:
            [(n,)] = db.execute("select count(*) from notifier_messages where status != 'sent'")
            if n:
                faults.append(f"notifier: {n} messages not sent")
        return faults

    def still_whole(self, since: int = 0, others_since: int = 0) -> list[str]:
        """`up` runs, every service started once and none stopped, nothing but JSON said."""
        if self.proc.poll() is not None:
            return [f"rollguard up exited {self.proc.returncode}"]
        faults = []
        if (started := len(self.log.named("started"))) != SERVICES:
            faults.append(f"{started} services said started (one started again)")
        if stopped := self.log.named("stopped", since):
            faults.append(f"stopped: {[e.get('logger_name') for e in stopped]}")
        if said := self.log.other[others_since:]:
            faults.append(f"{len(said)} lines not JSON, first: {said[0][:300]!r}")
        return faults
