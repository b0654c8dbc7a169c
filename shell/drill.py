"""`rollguard drill`: each scenario injected into its drill model against a running
installation, the chain watched, the figures measured (rollguard.drills).

Per scenario: the good version recorded known good (and its baseline imported where the
scenario needs one, both signed with the deployer key, as CI does), served for a warm-up
through the SDK (rollguard.sdk.Monitor following the live pointer, as a model server does),
then the bad version recorded live: the SDK follows it, the synthetic model serves the fault,
and the drill waits for the breach, the decision, the applied ack and the verified ack of that
model. The executor's pointer move brings the good version back, which the SDK follows too:
the drill leaves the model as it found it. Each run is a ``DrillRun`` on the drills topic.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from aiokafka import TopicPartition

from rollguard import baselines as bl
from rollguard import topics
from rollguard.bus import make_consumer, publish_one
from rollguard.drills import GOOD, Behaviour, Scenario
from rollguard.events import (
    Breach,
    CommandAck,
    Components,
    Decision,
    DrillRun,
    Event,
    SystemManifest,
    new_id,
    utcnow,
)
from rollguard.sdk import Monitor
from rollguard.settings import RollguardSettings
from rollguard.signing import Signer, signer_of

#: Requests a second each drill model serves, and in ticks of this long.
RATE_RPS = 200
TICK_S = 0.05
HEALTH_EVERY_S = 0.5


@dataclass
class Watch:
    """What happened to one drill model, as read off the control topics."""

    model_id: str
    bad_version: str
    breach: Breach | None = None
    decision: Decision | None = None
    applied: CommandAck | None = None
    verified: CommandAck | None = None
    final: CommandAck | None = None  # failed / rejected
    holds: list[Decision] = field(default_factory=list)

    def see(self, event: Event) -> None:
        if getattr(event, "model_id", None) != self.model_id:
            return
        if isinstance(event, Breach) and event.model_version == self.bad_version:
            self.breach = self.breach or event
        elif isinstance(event, Decision):
            if event.action == "rollback" and self.decision is None:
                self.decision = event
            elif event.action != "rollback":
                self.holds.append(event)
        elif isinstance(event, CommandAck) and self.decision is not None:
            if event.command_id != self.decision.command_id or event.component:
                return
            if event.status == "applied":
                self.applied = self.applied or event
            elif event.status == "verified":
                self.verified = self.verified or event
            elif event.status in ("failed", "rejected"):
                self.final = self.final or event


@dataclass
class Result:
    scenario: str
    model_id: str
    passed: bool
    reason: str
    figures: dict[str, float]
    decision_id: str | None = None
    command_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "model_id": self.model_id,
            "passed": self.passed,
            "reason": self.reason,
            "figures": self.figures,
            "decision_id": self.decision_id,
            "command_id": self.command_id,
        }


class SyntheticModel:
    """A model version's traffic: requests, latencies, errors, predictions, health checks."""

    def __init__(self, monitor: Monitor, behaviours: dict[str, Behaviour], seed: int) -> None:
        self.monitor = monitor
        self.behaviours = behaviours
        self.rng = np.random.default_rng(seed)
        self.served: dict[str, int] = {}
        #: Versions whose health checks fail whatever their behaviour (a target not ready).
        self.unhealthy: set[str] = set()

    def serve(self, n: int) -> None:
        version = self.monitor.model_version
        if version is None:
            return
        b = self.behaviours.get(version, GOOD)
        failed = self.rng.random(n) < b.error_rate
        latency = b.latency_ms * np.exp(self.rng.normal(0, 0.25, n))
        x = self.rng.normal(0, 1, n)
        predictions = 0.5 * x + self.rng.normal(0, 0.5, n) + b.prediction_shift
        nulls = self.rng.random(n) < b.null_rate
        for i in range(n):
            rid = new_id()
            feature = None if nulls[i] else float(x[i])
            self.monitor.record(
                rid,
                float(latency[i]),
                float(predictions[i]),
                features={"x": feature},
                error="drill_fault" if failed[i] else None,
            )
        self.served[version] = self.served.get(version, 0) + n

    def health(self) -> None:
        version = self.monitor.model_version
        if version is not None:
            ok = self.behaviours.get(version, GOOD).healthy and version not in self.unhealthy
            self.monitor.health(ok, "drill" if ok else "drill fault: unhealthy")


def _manifest(model_id: str, version: str, status: str, pipeline: str = "drill") -> SystemManifest:
    return SystemManifest(
        model_id=model_id,
        model_version=version,
        system_version=f"sys-{version}",
        components=Components(
            model=version, feature_pipeline=pipeline, config="drill", infra="drill"
        ),
        status=status,
        note="rollguard drill",
    )


def _good_baseline(model_id: str, version: str, seed: int) -> list[Any]:
    """The good version's prediction and feature distributions, as CI would import them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, 20_000)
    predictions = 0.5 * x + rng.normal(0, 0.5, 20_000)
    return [
        bl.numeric_snapshot(model_id, version, "prediction", predictions),
        bl.numeric_snapshot(model_id, version, "feature:x", x),
    ]


async def _watch(settings: RollguardSettings, watches: list[Watch], stop: asyncio.Event) -> None:
    names = (topics.BREACHES, topics.DECISIONS, topics.ACKS)
    by_topic = {settings.topic(t.name): t.event for t in names}
    consumer = make_consumer(settings, group_id=None, control=True)
    await consumer.start()
    try:
        await consumer.topics()
        parts = [
            TopicPartition(name, p)
            for name in by_topic
            for p in sorted(consumer.partitions_for_topic(name) or ())
        ]
        consumer.assign(parts)
        await consumer.seek_to_end()  # what happens from now on
        while not stop.is_set():
            for tp, records in (await consumer.getmany(timeout_ms=100)).items():
                for record in records:
                    with contextlib.suppress(ValueError):
                        event = by_topic[tp.topic].model_validate_json(record.value)
                        for w in watches:
                            w.see(event)
    finally:
        await consumer.stop()


def _verdict(w: Watch, verify: bool, scenario: Scenario) -> tuple[bool, str]:
    if w.breach is None:
        return False, f"no breach of {w.bad_version} (expected {' or '.join(scenario.caught_by)})"
    if scenario.expect == "escalation":
        if w.decision is not None:
            hint = (
                f" (does {scenario.model_id}'s policy set rollback.target_ready_within_s?)"
                if scenario.target_unhealthy
                else ""
            )
            return (
                False,
                f"rolled back (level {w.decision.level}) where a person was to decide{hint}",
            )
        codes = {r.code for d in w.holds for r in d.reasons}
        if scenario.escalation_reason not in codes:
            said = ", ".join(sorted(codes)) or "no decision at all"
            return False, f"no {scenario.escalation_reason} escalation ({said})"
        return True, ""
    if w.decision is None:
        said = "; ".join(
            f"{d.action}: {', '.join(r.code for r in d.reasons)}" for d in w.holds[-2:]
        )
        return False, f"no rollback decided ({said or 'no decision at all: is a decider running?'})"
    if w.final is not None:
        return False, f"the rollback {w.final.status}: {w.final.detail}"
    if w.applied is None:
        return False, "the rollback was never applied (is an executor running?)"
    if verify and w.verified is None:
        return False, "the rollback was applied but not verified in time"
    if w.decision.level != scenario.level:
        return False, f"rolled back at level {w.decision.level}, level {scenario.level} expected"
    if w.breach.detector not in scenario.caught_by:
        return True, f"caught by {w.breach.detector}, not {' or '.join(scenario.caught_by)}"
    return True, ""


def _figures(w: Watch, deployed: datetime, served_bad: int) -> dict[str, float]:
    def since(event: Event | None) -> float | None:
        return None if event is None else round((event.ts - deployed).total_seconds(), 3)

    out = {
        "mttd_s": since(w.breach),
        "time_to_decision_s": since(w.decision),
        "time_to_rollback_s": since(w.applied),
        "time_to_verified_s": since(w.verified),
        "blast_radius": float(served_bad),
    }
    return {k: v for k, v in out.items() if v is not None}


async def run_drills(
    settings: RollguardSettings,
    scenarios: list[Scenario],
    *,
    timeout_s: float,
    verify: bool,
    warmup_s: float = 2.0,
    say: Callable[[str], None] = lambda _: None,
) -> list[Result]:
    """Every scenario at once (each on its own drill model); their results."""
    deployer = signer_of(settings, "deployer")
    stop = asyncio.Event()
    runs = {s.name: new_id()[:8] for s in scenarios}
    watches = {s.name: Watch(s.model_id, f"bad-{runs[s.name]}") for s in scenarios}
    watching = asyncio.create_task(_watch(settings, list(watches.values()), stop))
    try:
        results = await asyncio.gather(
            *(
                _one(
                    settings,
                    deployer,
                    s,
                    runs[s.name],
                    watches[s.name],
                    timeout_s,
                    verify,
                    warmup_s,
                    say,
                )
                for s in scenarios
            )
        )
    finally:
        stop.set()
        await asyncio.gather(watching, return_exceptions=True)
    return list(results)


async def _one(
    settings: RollguardSettings,
    deployer: Signer,
    scenario: Scenario,
    run: str,
    watch: Watch,
    timeout_s: float,
    verify: bool,
    warmup_s: float,
    say: Callable[[str], None],
) -> Result:
    model_id, good, bad = scenario.model_id, f"good-{run}", f"bad-{run}"
    started = utcnow()

    async def publish(topic: str, event: Any) -> None:
        await publish_one(settings, topic, deployer.sign(event), event.key)

    await publish(topics.DEPLOYMENTS.name, _manifest(model_id, good, "known_good"))
    if scenario.baseline:
        for snapshot in _good_baseline(model_id, good, seed=hash(run) & 0xFFFF):
            await publish(topics.BASELINES.name, snapshot)
    monitor = Monitor(model_id, settings=settings)
    model = SyntheticModel(monitor, {good: GOOD, bad: scenario.bad}, seed=hash(run) & 0xFFFF)
    await monitor.start()
    serving = asyncio.create_task(_serve(model))
    try:
        await asyncio.wait_for(monitor.live.wait(), 30)
        say(f"{scenario.name}: {good} live on {model_id}, warming up {warmup_s:g} s")
        await asyncio.sleep(warmup_s)
        if scenario.target_unhealthy:  # the target's last word: unhealthy
            model.unhealthy.add(good)
            await asyncio.sleep(2 * HEALTH_EVERY_S)
        deployed = utcnow()
        pipeline = scenario.bad_pipeline or "drill"
        await publish(topics.DEPLOYMENTS.name, _manifest(model_id, bad, "live", pipeline))
        say(f"{scenario.name}: bad version {bad} deployed ({scenario.description})")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        steps: tuple[str, ...] = (
            "breach",
            "decision",
            "applied",
            *(("verified",) if verify else ()),
        )
        if scenario.expect == "escalation":
            steps = ("breach",)
        said: set[str] = set()
        while loop.time() < deadline:
            for step in steps:
                if step not in said and getattr(watch, step) is not None:
                    said.add(step)
                    say(
                        f"{scenario.name}: {step} after {(getattr(watch, step).ts - deployed).total_seconds():.2f} s"
                    )
            # escalated: a hold for the expected reason (an earlier hold, not_live_version for
            # a breach read before its deployment, is not the answer), or a wrong rollback
            escalated = scenario.expect == "escalation" and (
                watch.decision is not None
                or any(r.code == scenario.escalation_reason for d in watch.holds for r in d.reasons)
            )
            done = said == set(steps) and (scenario.expect != "escalation" or escalated)
            if watch.final is not None or done:
                break
            await asyncio.sleep(0.1)
        passed, reason = _verdict(watch, verify, scenario)
        figures = _figures(watch, deployed, model.served.get(bad, 0))
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await monitor.stop(flush_s=2.0)
    result = Result(
        scenario.name,
        model_id,
        passed,
        reason,
        figures,
        watch.decision.event_id if watch.decision else None,
        watch.decision.command_id if watch.decision else None,
    )
    await publish(
        topics.DRILLS.name,
        DrillRun(
            drill_id=run,
            scenario=scenario.name,
            model_id=model_id,
            bad_version=bad,
            good_version=good,
            passed=passed,
            reason=reason,
            started_at=started,
            ended_at=utcnow(),
            figures=figures,
            decision_id=result.decision_id,
            command_id=result.command_id,
        ),
    )
    say(f"{scenario.name}: {'PASSED' if passed else 'FAILED: ' + reason}")
    return result


async def _serve(model: SyntheticModel) -> None:
    loop = asyncio.get_running_loop()
    last, owed, health_at = loop.time(), 0.0, 0.0
    while True:
        await asyncio.sleep(TICK_S)
        now = loop.time()
        owed += (now - last) * RATE_RPS
        last = now
        n = int(owed)
        owed -= n
        model.serve(n)
        if now - health_at >= HEALTH_EVERY_S:
            health_at = now
            model.health()
