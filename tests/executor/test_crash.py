"""Crash safety, proven: the executor is SIGKILLed at each step, restarted, and still applies
every command exactly once, with its final ack, none lost.

Four lanes run side by side, one per crash point, each with its own topics, inbox and target.
A lane publishes its commands, then starts `rollguard run executor` (the real entrypoint, a
process of its own) again and again with ROLLGUARD_EXECUTOR_CRASH_AT set, so the process
kills itself with SIGKILL the n-th time it reaches that step; after the last kill a clean run
finishes what is left. The target is a real executable (effect.sh) that logs every call and
honours idempotency keys, as well-behaved webhook targets do.

What the executor must guarantee, and this test asserts per lane:
- every command ends ``applied`` in the inbox and has exactly one distinct final ack;
- every component change it asked for is an effect at the target exactly once, and nothing
  is ever compensated;
- the live pointer and the invalidation are published with one distinct event id each;
- the target is called more than once for a step only when the kill fell between the
  effect and its record (``after_effect``): everywhere else the inbox prevents a second call;
- every ack, pointer manifest and invalidation verifies as signed by the executor key, and an
  ack or invalidation sent again after a kill is the same message, byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rollguard import topics
from rollguard.bus import make_producer, provision_topics
from rollguard.events import CommandAck, OutputInvalidation, RollbackCommand, SystemManifest
from rollguard.settings import RollguardSettings
from rollguard.signing import ensure_keys, load_signer, signer_of, trust_of
from rollguard_services.executor.inbox import Inbox
from tests.conftest import HEAVY, TopicReader, scaled
from tests.factories import command, manifest

pytestmark = [pytest.mark.broker, pytest.mark.timeout(scaled(400))]

EFFECT_SCRIPT = Path(__file__).with_name("effect.sh")
ROLLGUARD = Path(sys.executable).with_name("rollguard")
#: Kills per crash point (4 points: 28 kills in all; ROLLGUARD_TEST_CRASH_KILLS=13 gives the 52
#: of earlier runs). Each kill is a process start, ~4 s of CPU: 13 ran past the test's timeout
#: on a 2-core machine with both cores taken by another process.
KILLS_PER_POINT = int(os.environ.get("ROLLGUARD_TEST_CRASH_KILLS", "7"))
COMMANDS_PER_LANE = 24
#: STALLS: once in our runs (1 start in about 60) a restarted process on the embedded broker
#: hung for over 90 s between "running" and the executor's "started" log, i.e. while the
#: Kafka clients start, before any command is touched. Not understood yet; such a run is
#: killed and restarted as a supervisor would, and counted apart from the kills at steps.
RUN_TIMEOUT_S = scaled(30)
#: Which occurrence of its step kills a process. A redelivered command passes again through
#: after_effect (its unrecorded effect is set again), after_ack (its owed ack is re-sent at
#: start) and before_commit, so those kill at the second occurrence or later: a run always
#: gets past the command the previous run died on.
OCCURRENCES = {
    "after_receive": (1, 2, 3),
    "after_effect": (2, 3, 4),
    "after_ack": (2, 3),
    "before_commit": (2, 3),
}


@dataclass
class Lane:
    point: str
    settings: RollguardSettings
    effects: Path
    commands: list[RollbackCommand] = field(default_factory=list)
    kills: int = 0
    clean_runs: int = 0
    stalls: int = 0
    runs_log: list[str] = field(default_factory=list)

    def env(self, crash_after: int | None) -> dict[str, str]:
        s = self.settings
        env = {
            **os.environ,
            "ROLLGUARD_KAFKA_BOOTSTRAP": str(s.kafka_bootstrap),
            "ROLLGUARD_TOPIC_PREFIX": s.topic_prefix,
            "ROLLGUARD_STATE_DIR": str(s.state_dir),
            "ROLLGUARD_ENABLE_IDEMPOTENCE": str(s.enable_idempotence).lower(),
            "ROLLGUARD_SESSION_TIMEOUT_MS": "2000",
            "ROLLGUARD_HEARTBEAT_INTERVAL_MS": "300",
            "ROLLGUARD_REBALANCE_TIMEOUT_MS": "1000",
            "ROLLGUARD_LOG_FORMAT": "json",
            "ROLLGUARD_EXECUTOR_GROUP_ID": "crash-test",
            "ROLLGUARD_EXECUTOR_EXECUTOR_ID": f"exec-{self.point}",
            "ROLLGUARD_EXECUTOR_APPLIER": "command",
            "ROLLGUARD_EXECUTOR_COMMAND__ARGV": json.dumps([str(EFFECT_SCRIPT)]),
            "EFFECTS_DIR": str(self.effects),
        }
        if crash_after is not None:
            env["ROLLGUARD_EXECUTOR_CRASH_AT"] = self.point
            env["ROLLGUARD_EXECUTOR_CRASH_AFTER"] = str(crash_after)
        return env


def lane_commands(signer_path: Path, n: int) -> list[RollbackCommand]:
    """Level-1 and level-2 commands over six models (so over every partition)."""
    signer = load_signer(signer_path)
    out = []
    for i in range(n):
        model_id = f"m{i % 6}"
        if i % 2:
            bad = manifest(f"v{i}b", model_id=model_id, feature_pipeline=f"fp-{i}b", infra="i-b")
            good = manifest(f"v{i}a", model_id=model_id, feature_pipeline=f"fp-{i}a")
            level = 2
        else:
            bad = manifest(f"v{i}b", model_id=model_id)
            good = manifest(f"v{i}a", model_id=model_id)
            level = 1
        good = good.model_copy(update={"status": "known_good"})
        cmd = command(
            model_id=model_id,
            model_version=bad.model_version,
            from_manifest=bad,
            to_manifest=good,
            level=level,
        )
        cmd = cmd.model_copy(
            update={"expires_at": cmd.issued_at.replace(year=cmd.issued_at.year + 1)}
        )
        out.append(signer.sign(cmd))
    return out


async def publish_commands(settings: RollguardSettings, commands: list[RollbackCommand]) -> None:
    """Put ``commands`` on the commands topic, as the decider does (keyed by model)."""
    producer = make_producer(settings, control=True)
    await producer.start()
    try:
        for cmd in commands:
            await producer.send_and_wait(
                settings.topic(topics.COMMANDS.name), cmd.encode(), key=cmd.key
            )
    finally:
        await producer.stop()


def changes(cmd: RollbackCommand) -> set[str]:
    """The idempotency keys of the component changes ``cmd`` asks of the target."""
    if cmd.level == 1:
        return {cmd.command_id}
    before, after = cmd.from_manifest.components, cmd.to_manifest.components
    return {
        f"{cmd.command_id}:{c}"
        for c in ("feature_pipeline", "config", "model", "infra")
        if getattr(before, c) != getattr(after, c)
    }


async def final_acks_seen(lane: Lane, reader: TopicReader) -> set[str]:
    records = await reader.read(topics.ACKS.name, until=lambda r: False, timeout_s=0.5)
    acks = [CommandAck.model_validate_json(r.value) for r in records]
    return {a.command_id for a in acks if a.component is None and a.status == "applied"}


async def run_lane(lane: Lane, rng: random.Random) -> None:
    reader = TopicReader(lane.settings)
    logs = lane.settings.state_dir / "runs"
    logs.mkdir(parents=True, exist_ok=True)
    wanted = {c.command_id for c in lane.commands}
    run = 0
    while lane.kills < KILLS_PER_POINT:
        run += 1
        n = rng.choice(OCCURRENCES[lane.point])
        with await asyncio.to_thread((logs / f"run{run}.log").open, "wb") as out:
            proc = await asyncio.create_subprocess_exec(
                str(ROLLGUARD), "run", "executor", env=lane.env(n), stdout=out, stderr=out
            )
            try:
                code = await asyncio.wait_for(proc.wait(), RUN_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                if wanted <= await final_acks_seen(lane, reader):
                    # Every command was done before the step came round n times: nothing
                    # left to kill it with, so the lane has no more crash runs to give.
                    lane.runs_log.append(f"run{run}: no crash (n={n}), all done")
                    break
                lane.stalls += 1  # see STALLS below
                lane.runs_log.append(f"run{run}: stalled, killed")
                continue
        assert code == -signal.SIGKILL, f"{lane.point} run {run} exited {code}, see {out.name}"
        lane.kills += 1
        lane.runs_log.append(f"run{run}: killed at {lane.point} #{n}")
    # Clean runs finish what the crashes left, then are stopped as an operator would.
    for attempt in range(3):
        with await asyncio.to_thread((logs / f"final{attempt}.log").open, "wb") as out:
            proc = await asyncio.create_subprocess_exec(
                str(ROLLGUARD), "run", "executor", env=lane.env(None), stdout=out, stderr=out
            )
            lane.clean_runs += 1
            try:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + RUN_TIMEOUT_S
                while not wanted <= await final_acks_seen(lane, reader):
                    assert proc.returncode is None, f"clean run died, see {out.name}"
                    if loop.time() > deadline:
                        break
                    await asyncio.sleep(0.5)
                else:
                    return
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                await proc.wait()
        lane.stalls += 1
    raise AssertionError(f"{lane.point}: commands left unfinished after 3 clean runs")


Published = CommandAck | OutputInvalidation | SystemManifest


def signed_by_executor(settings: RollguardSettings, published: Sequence[Published]) -> None:
    trust, key = trust_of(settings), signer_of(settings, "executor").key_id
    refused = [(e.event_id, trust.check(e)) for e in published if not trust.check(e).ok]
    assert refused == [] and {e.key_id for e in published} == {key}


def one_message_per_event_id(records: list[Any], events: Sequence[Published]) -> bool:
    """Whether every event id was sent as one message value only (however often sent)."""
    values: dict[str, set[bytes]] = {}
    for record, event in zip(records, events, strict=True):
        values.setdefault(event.event_id, set()).add(record.value)
    return all(len(v) == 1 for v in values.values())


async def check_lane(lane: Lane) -> dict[str, int]:
    reader = TopicReader(lane.settings)
    by_id = {c.command_id: c for c in lane.commands}

    inbox = Inbox(lane.settings.resolved_executor_db_url)
    try:
        for cid in by_id:
            row = inbox.get(cid)
            assert row is not None and row.status == "applied", (lane.point, cid, row)
            assert not any(k.compensation for k in inbox.steps(cid)), "nothing is compensated"
        assert inbox.unsent() == [] and inbox.unsent_invalidations() == []
    finally:
        inbox.close()

    ack_records = await reader.read(topics.ACKS.name, until=lambda r: False, timeout_s=1)
    acks = [CommandAck.model_validate_json(r.value) for r in ack_records]
    signed_by_executor(lane.settings, acks)
    assert one_message_per_event_id(ack_records, acks), "an ack re-sent is the one owed"
    finals: dict[str, set[str]] = {}
    for ack in acks:
        assert ack.status != "failed" and not ack.compensation, ack
        if ack.component is None and ack.status != "received":
            finals.setdefault(ack.command_id, set()).add(ack.event_id)
    assert set(finals) == set(by_id), "every command has its final ack"
    assert all(len(ids) == 1 for ids in finals.values()), "one distinct final ack each"

    # The target: each asked-for change made exactly once; repeated calls only after a kill
    # between an effect and its record.
    effects = (lane.effects / "effects.log").read_text().split("\n")
    effect_keys = Counter(line.split(" ")[0] for line in effects if line)
    expected = set().union(*(changes(c) for c in lane.commands))
    assert set(effect_keys) == expected and max(effect_keys.values()) == 1
    calls = Counter((lane.effects / "calls.log").read_text().split())
    repeated = sum(calls.values()) - len(calls)
    if lane.point == "after_effect":
        assert repeated <= lane.kills
    else:
        assert repeated == 0, f"{lane.point}: the inbox let a step run twice"

    pointer = [
        SystemManifest.model_validate_json(r.value)
        for r in await reader.read(topics.DEPLOYMENTS.name, until=lambda r: False, timeout_s=1)
    ]
    assert len({m.event_id for m in pointer}) == 2 * len(by_id)
    signed_by_executor(lane.settings, pointer)
    inv_records = await reader.read(topics.INVALIDATIONS.name, until=lambda r: False, timeout_s=1)
    invalidations = [OutputInvalidation.model_validate_json(r.value) for r in inv_records]
    signed_by_executor(lane.settings, invalidations)
    assert one_message_per_event_id(inv_records, invalidations)
    assert {i.command_id for i in invalidations} == set(by_id)
    assert len({i.event_id for i in invalidations}) == len(by_id)
    return {
        "kills": lane.kills,
        "stalled_starts_restarted": lane.stalls,
        "commands": len(by_id),
        "target_calls_repeated": repeated,
        "ack_messages": len(acks),
        "final_ack_duplicates": sum(
            1 for a in acks if a.component is None and a.status == "applied"
        )
        - len(by_id),
        "pointer_messages": len(pointer),
        "invalidation_messages": len(invalidations),
    }


@HEAVY
async def test_sigkill_at_every_step_still_applies_each_command_once(
    settings: RollguardSettings, tmp_path: Path, figure: Callable[[str], None]
) -> None:
    rng = random.Random(20240605)
    lanes = []
    for point in OCCURRENCES:
        s = settings.model_copy(
            update={
                "topic_prefix": f"{settings.topic_prefix}{point}.",
                "state_dir": tmp_path / point / "state",
            }
        )
        await provision_topics(s)
        ensure_keys(s)  # the decider's key signs the commands, the executor's its output
        effects = tmp_path / point / "target"
        (effects / "keys").mkdir(parents=True)
        lane = Lane(point, s, effects)
        lane.commands = lane_commands(s.resolved_signing_key_file, COMMANDS_PER_LANE)
        await publish_commands(s, lane.commands)
        lanes.append(lane)

    await asyncio.gather(*(run_lane(lane, random.Random(rng.random())) for lane in lanes))
    report = {lane.point: await check_lane(lane) for lane in lanes}

    total = sum(r["kills"] for r in report.values())
    figure(f"crash test: {total} SIGKILLs, {json.dumps(report, indent=1)}")
    assert total >= 4 * KILLS_PER_POINT, {lane.point: lane.runs_log for lane in lanes}
