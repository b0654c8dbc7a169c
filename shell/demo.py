"""`rollguard demo`: a bad deployment detected and rolled back end to end, shown live.

Everything goes through the broker: the router serves v1, then v2 (20 % errors) goes live,
the detector publishes a breach, the decider a decision and a signed command, the executor
moves the live pointer back and acknowledges, the router follows, the ledger records it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from aiokafka import TopicPartition
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from rollguard import topics
from rollguard.bus import make_consumer, make_producer
from rollguard.events import (
    Breach,
    CommandAck,
    Components,
    Decision,
    Event,
    OutputInvalidation,
    RollbackCommand,
    SystemManifest,
)
from rollguard.policy import resolve_policy
from rollguard.secrets import private_dir
from rollguard.service import Service
from rollguard.settings import RollguardSettings
from rollguard.signing import signer_of
from rollguard_services.api.settings import ApiSettings
from rollguard_services.ledger.audit import verify_configured
from rollguard_services.ledger.settings import LedgerSettings
from rollguard_services.ledger.store import LedgerStore
from rollguard_services.router.app import RouterService
from rollguard_services.router.settings import RouterSettings
from rollguard_shell.runner import (
    api_service,
    as_client,
    build_service,
    ensure_keys,
    kafka,
    run_services,
)

MODEL_ID = "demo-model"
GOOD, BAD = "v1", "v2"


@dataclass
class DemoReport:
    rollback_applied: bool = False
    bad_version: str = BAD
    restored_version: str | None = None
    mttd_s: float | None = None
    time_to_decision_s: float | None = None
    time_to_rollback_s: float | None = None
    rollback_verified: bool = False
    time_to_verified_s: float | None = None
    blast_radius_requests: int = 0
    ledger_entries: int = 0
    ledger_verified: bool = False
    rollback_level: int | None = None
    command_id: str | None = None
    router_switch_ms: float | None = None
    requests_served: dict[str, int] = field(default_factory=dict)
    served_by_restored_after_rollback: int = 0
    dead_letters: int = 0
    reason: str = ""
    #: Where the dashboard was served (gone once the demo ends, unless run with --keep).
    dashboard_url: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def headline(self) -> str:
        if not self.rollback_applied:
            return f"no rollback: {self.reason or 'unknown reason'}"
        return (
            f"rolled back {self.bad_version} → {self.restored_version} "
            f"(level {self.rollback_level}) {self.time_to_rollback_s:.2f} s after the bad deploy; "
            f"breach after {self.mttd_s:.2f} s; "
            + (
                f"verified after {self.time_to_verified_s:.2f} s; "
                if self.time_to_verified_s is not None
                else "not verified; "
            )
            + f"{self.blast_radius_requests} requests served by "
            f"{self.bad_version}; ledger {self.ledger_entries} entries, "
            f"{'verified' if self.ledger_verified else 'NOT verified'}"
        )


def manifest(version: str, system_version: str, status: str) -> SystemManifest:
    return SystemManifest(
        model_id=MODEL_ID,
        model_version=version,
        system_version=system_version,
        components=Components(
            model=version, feature_pipeline="fp-7", config="cfg-3", infra="k8s-1"
        ),
        status=status,
    )


class Observer:
    """Reads the control topics like any other consumer, to show and time what happens."""

    #: Every topic the ledger records, so "the ledger has as many entries as were seen" means
    #: it has these very events (watching fewer let an unwatched invalidation stand in for a
    #: verified ack not yet recorded).
    WATCHED = topics.LEDGERED

    def __init__(self, settings: RollguardSettings) -> None:
        self.settings = settings
        self.events: list[Event] = []
        self.timeline: list[tuple[float, str]] = []
        self._t0 = time.monotonic()

    def note(self, text: str) -> None:
        self.timeline.append((time.monotonic() - self._t0, text))

    def first(self, cls: type[Any], **match: Any) -> Any:
        for e in self.events:
            if isinstance(e, cls) and all(getattr(e, k) == v for k, v in match.items()):
                return e
        return None

    async def run(self) -> None:
        consumer = make_consumer(self.settings, group_id=None, control=True)
        try:
            await consumer.start()
            await consumer.topics()
            parts = [
                TopicPartition(self.settings.topic(t.name), p)
                for t in self.WATCHED
                for p in sorted(consumer.partitions_for_topic(self.settings.topic(t.name)) or ())
            ]
            consumer.assign(parts)
            await consumer.seek_to_beginning()
            by_topic = {self.settings.topic(t.name): t.event for t in self.WATCHED}
            while True:
                batches = await consumer.getmany(timeout_ms=100)
                for tp, records in batches.items():
                    for record in records:
                        with contextlib.suppress(ValueError):
                            event = by_topic[tp.topic].model_validate_json(record.value)
                            self.events.append(event)
                            self.note(describe(event))
        finally:
            await consumer.stop()


def describe(event: Event) -> str:
    if isinstance(event, SystemManifest):
        return f"deployment  {event.system_version} (model {event.model_version}) → {event.status}"
    if isinstance(event, Breach):
        return (
            f"breach      {event.detector}: {event.statistic}={event.value:.3f} > "
            f"{event.threshold:g} over n={event.n} [{event.tier}] on {event.model_version}"
        )
    if isinstance(event, Decision):
        codes = ", ".join(r.code for r in event.reasons)
        level = f" level {event.level}" if event.level else ""
        return f"decision    {event.action}{level} → {event.target_system_version or '-'} ({codes})"
    if isinstance(event, RollbackCommand):
        return (
            f"command     {event.command_id[:12]} signed by key {event.key_id}: "
            f"{event.from_manifest.system_version} → {event.to_manifest.system_version}"
        )
    if isinstance(event, CommandAck):
        return f"ack         {event.status} by {event.executor_id}: {event.detail}"
    if isinstance(event, OutputInvalidation):
        return (
            f"invalidated outputs of {', '.join(event.bad_versions)} from "
            f"{event.valid_from:%H:%M:%S} to {event.valid_to:%H:%M:%S}"
        )
    return type(event).__name__


def _render(observer: Observer, router: Any, phase: str) -> Group:
    table = Table(show_header=True, header_style="bold", expand=False)
    table.add_column("t (s)", justify="right")
    table.add_column("what happened")
    for t, text in observer.timeline[-18:]:
        table.add_row(f"{t:6.2f}", Text(text))  # Text: event details are not rich markup
    served = ", ".join(f"{v}: {n}" for v, n in sorted(router.served.items())) or "-"
    status = Text.assemble(
        ("phase: ", "bold"),
        phase,
        "   ",
        ("live: ", "bold"),
        str(router.live),
        "   ",
        ("served: ", "bold"),
        served,
    )
    return Group(status, table)


async def run_demo(
    base: RollguardSettings,
    *,
    console: Console,
    live_display: bool,
    rate_rps: float = 200.0,
    warmup_s: float = 3.0,
    timeout_s: float = 30.0,
    keep: Callable[[DemoReport], None] | None = None,
) -> DemoReport:
    """Run the demo and report it. With ``keep``, once the report is made it is handed to
    ``keep`` and everything stays up (the dashboard with the incident on it) until the
    caller is cancelled (Ctrl-C)."""
    demo_dir = base.state_dir / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)
    private_dir(demo_dir)  # its databases and broker log: every event of the run
    updates: dict[str, Any] = {
        "ledger_url": f"sqlite:///{demo_dir / 'ledger.db'}",
        "executor_db_url": f"sqlite:///{demo_dir / 'executor.db'}",
    }
    updates["policy_path"] = demo_policy(base, demo_dir / "policy")
    if not base.embedded:  # a real Kafka keeps old topics: give this run its own
        updates["topic_prefix"] = f"{base.topic_prefix}demo-{int(time.time())}."
    base = base.model_copy(update=updates)
    report = DemoReport()
    ensure_keys(base)

    async with kafka(base, demo_dir / "broker.log") as settings:
        router_service = RouterService(
            as_client("router", settings), RouterSettings(model_id=MODEL_ID, rate_rps=rate_rps)
        )
        api = api_service(as_client("api", settings), ApiSettings())
        services: list[Service] = [
            router_service,
            api,
            *(
                build_service(n, settings)
                for n in ("detector", "decider", "executor", "ledger", "notifier")
            ),
        ]
        observer = Observer(as_client("demo", settings))
        router = router_service.router
        phase = "starting services"
        observer.note(
            f"broker ready at {settings.kafka_bootstrap}; topics provisioned; starting services"
        )

        async def display() -> None:
            if not live_display:  # not a terminal: one plain line per step, as it happens
                shown = 0
                try:
                    while True:
                        for t, text in observer.timeline[shown:]:
                            console.print(Text(f"{t:6.2f}s  {text}"), soft_wrap=True)
                        shown = len(observer.timeline)
                        await asyncio.sleep(0.1)
                finally:  # the last steps, seen just before the demo stops
                    for t, text in observer.timeline[shown:]:
                        console.print(Text(f"{t:6.2f}s  {text}"), soft_wrap=True)
            with Live(
                _render(observer, router, phase), console=console, refresh_per_second=8
            ) as lv:
                while True:
                    await asyncio.sleep(0.125)
                    lv.update(_render(observer, router, phase))

        producer = make_producer(as_client("deployer", settings), control=True)
        deploy_topic = settings.topic(topics.DEPLOYMENTS.name)
        background = [
            asyncio.create_task(run_services(services), name="services"),
            asyncio.create_task(observer.run(), name="observer"),
            asyncio.create_task(display(), name="display"),
        ]

        async def until(check: Any, timeout_s: float, why: str) -> None:
            deadline = time.monotonic() + timeout_s
            while not check():
                for task in background:
                    if task.done() and not task.cancelled() and task.exception():
                        raise DemoFailed(f"{task.get_name()} failed: {task.exception()!r}")
                if time.monotonic() > deadline:
                    raise DemoFailed(why)
                await asyncio.sleep(0.05)

        def applied() -> CommandAck | None:
            ack: CommandAck | None = observer.first(CommandAck, status="applied")
            return ack

        try:
            try:
                await producer.start()
                await until(
                    lambda: all(s.ready.is_set() for s in services), 60, "services not ready"
                )
                observer.note(
                    "services ready: router, detector, decider (faust), executor, ledger, notifier;"
                    f" dashboard at {api.url}"
                )
                report.dashboard_url = api.url or ""

                phase = f"serving {GOOD} (known good)"
                deployer = signer_of(settings, "deployer")  # what CI signs its deploys with
                good = deployer.sign(manifest(GOOD, "sys-1", "known_good"))
                await producer.send_and_wait(deploy_topic, good.encode(), key=good.key)
                await until(lambda: router.live == GOOD, 15, "router never served v1")
                await asyncio.sleep(warmup_s)

                phase = f"deploying {BAD}"
                bad = deployer.sign(manifest(BAD, "sys-2", "live"))
                await producer.send_and_wait(deploy_topic, bad.encode(), key=bad.key)
                deployed = bad.ts
                phase = f"{BAD} live: waiting for detection and rollback"
                await until(lambda: applied() is not None, timeout_s, "no rollback was applied")
                await until(
                    lambda: router.live == GOOD and router.switches[-1].first_served_at is not None,
                    10,
                    "router did not switch back",
                )
                served_before = router.served[GOOD]
                phase = f"rolled back to {GOOD}: confirming"
                await asyncio.sleep(1.0)
                report.served_by_restored_after_rollback = router.served[GOOD] - served_before

                breach = observer.first(Breach, model_version=BAD)
                decision = observer.first(Decision, action="rollback")
                ack = applied()
                assert ack is not None
                report.rollback_applied = True
                report.restored_version = router.live
                report.command_id = ack.command_id
                report.rollback_level = decision.level if decision else None
                report.mttd_s = _secs(breach.ts, deployed) if breach else None
                report.time_to_decision_s = _secs(decision.ts, deployed) if decision else None
                report.time_to_rollback_s = _secs(ack.ts, deployed)
                report.blast_radius_requests = router.served[BAD]
                report.router_switch_ms = router.switches[-1].switch_ms

                phase = f"{GOOD} restored: verifying it stays within thresholds"
                await until(
                    lambda: observer.first(CommandAck, status="verified") is not None,
                    DEMO_VERIFICATION_S + 10,
                    "the rollback was not verified",
                )
                verified: CommandAck = observer.first(CommandAck, status="verified")
                report.rollback_verified = True
                report.time_to_verified_s = _secs(verified.ts, deployed)
                # Traffic flowed through the whole verification window: the restored version was
                # verified on what it served, not on silence. Now the demo winds down.
                router_service.rate_rps = 0

                phase = "waiting for the ledger to catch up"

                # One connection for the whole wait: opening a store creates its schema and triggers.
                store = LedgerStore(settings.resolved_ledger_url)
                try:

                    def recorded() -> bool:
                        if store.count() < len(observer.events):
                            return False
                        acks = store.iter_entries(MODEL_ID, event_types=("CommandAck",))
                        return any(e.event_id == verified.event_id for e in acks)

                    await until(recorded, 15, "ledger did not record every control event")
                finally:
                    store.close()
            except DemoFailed as exc:
                report.reason = str(exc)
            if keep is not None:
                _verify(settings, report)
                keep(report)
                await asyncio.Event().wait()  # until Ctrl-C cancels the demo
        finally:
            report.requests_served = dict(router.served)
            report.dead_letters = sum(
                getattr(s, "counts", {}).get("dead_letters", 0) for s in services
            )
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await producer.stop()

    _verify(settings, report)  # the chain and every signed checkpoint (one written as it stopped)
    return report


def _verify(settings: RollguardSettings, report: DemoReport) -> None:
    verdict, _ = verify_configured(settings, LedgerSettings())
    report.ledger_entries = verdict.entries
    report.ledger_verified = verdict.ok
    if not verdict.ok and not report.reason:
        report.reason = f"ledger does not verify at seq {verdict.first_bad_seq}: {verdict.reason}"


#: The demo waits this long after the rollback for the decider's verification.
DEMO_VERIFICATION_S = 2.0


def demo_policy(base: RollguardSettings, directory: Path) -> Path:
    """The policy in force, plus a short verification window for the demo model, so the demo
    shows the rollback verified without waiting the default two minutes."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, source in enumerate(resolve_policy(base.policy_path).sources):
        shutil.copyfile(source, directory / f"{i:02d}-{Path(source).name}")
    override = {"models": {MODEL_ID: {"rollback": {"verification_s": DEMO_VERIFICATION_S}}}}
    (directory / "99-demo.yaml").write_text(yaml.safe_dump(override))
    return directory


class DemoFailed(Exception):
    pass


def _secs(a: datetime, b: datetime) -> float:
    return round((a - b).total_seconds(), 3)
