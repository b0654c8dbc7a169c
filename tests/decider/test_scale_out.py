"""Issue 15, scale-out: two decider processes in one faust group share the models, one is
SIGKILLed in the middle of a breach storm, and every model still gets exactly one rollback.

The deciders are the real entrypoint (`rollguard run decider`, a process each) on topics of
four partitions; the deployments and the breaches are what the deployer and the detector
publish (signed with their keys). The storm is sent twice, as a detector that keeps
breaching every window would: a second breach of a model already rolling back must not make a
second command, on the worker that decided it first or on the one that took its models over.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from rollguard import topics
from rollguard.bus import make_producer, provision_topics
from rollguard.events import Event, RollbackCommand, Signed
from rollguard.settings import RollguardSettings
from rollguard.signing import ensure_keys, signer_of, trust_of, verify_command
from tests.conftest import HEAVY, TopicReader, group_split, scaled, service_env
from tests.decider.test_app import good_and_bad
from tests.factories import breach

pytestmark = [pytest.mark.broker, HEAVY, pytest.mark.timeout(scaled(300))]

ROLLGUARD = Path(sys.executable).with_name("rollguard")
MODELS = 40
PARTITIONS = 4


async def commands_by_model(reader: TopicReader) -> dict[str, set[str]]:
    records = await reader.read(topics.COMMANDS.name, until=lambda r: False, timeout_s=0.5)
    out: defaultdict[str, set[str]] = defaultdict(set)
    for r in records:
        cmd = RollbackCommand.model_validate_json(r.value)
        out[cmd.model_id].add(cmd.command_id)
    return out


async def wait_for(
    condition: Callable[[], object], what: str, timeout_s: float, procs: list[Path]
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(timeout_s)
    while not await condition():  # type: ignore[misc]
        if loop.time() > deadline:
            said = "\n".join(p.read_text(errors="replace")[-3000:] for p in procs)
            raise AssertionError(f"{what} within {timeout_s}s\n{said}")
        await asyncio.sleep(0.3)


async def test_two_deciders_one_killed_in_a_storm_roll_each_model_back_once(
    settings: RollguardSettings, tmp_path: Path
) -> None:
    s = settings.model_copy(update={"partitions": PARTITIONS})
    await provision_topics(s)
    ensure_keys(s)
    models = [f"m{i:02d}" for i in range(MODELS)]
    producer = make_producer(s, control=True)
    await producer.start()

    async def send(topic: str, event: Event) -> None:
        if isinstance(event, Signed):
            role = "deployer" if topic == topics.DEPLOYMENTS.name else "detector"
            event = signer_of(s, role).sign(event)
        await producer.send_and_wait(s.topic(topic), event.encode(), key=event.key)

    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs: list[asyncio.subprocess.Process] = []
    reader = TopicReader(s)
    try:
        for m in models:
            for man in good_and_bad(m):
                await send(topics.DEPLOYMENTS.name, man)
        for name, log in zip("ab", logs, strict=True):
            (tmp_path / name).mkdir()
            with log.open("wb") as out:
                procs.append(
                    await asyncio.create_subprocess_exec(
                        str(ROLLGUARD),
                        "run",
                        "decider",
                        env=service_env(s),
                        stdout=out,
                        stderr=out,
                        start_new_session=True,
                        cwd=tmp_path / name,  # faust's data directory, apart as on two hosts
                    )
                )

        # Both workers in the group, the partitions split between them (what each logs
        # once a rebalance completes).
        async def both_hold() -> bool:
            return group_split(logs, PARTITIONS)

        await wait_for(both_hold, "both deciders ready", 120, logs)
        storm = [breach("v2", model_id=m) for m in models]
        for b in storm[: MODELS // 2]:
            await send(topics.BREACHES.name, b)
        seen: dict[str, set[str]] = {}

        async def some_commands() -> bool:
            seen.update(await commands_by_model(reader))
            return len(seen) >= MODELS // 4

        await wait_for(some_commands, "a first quarter of the commands", 60, logs)
        os.killpg(procs[0].pid, signal.SIGKILL)  # worker a dies in the storm
        await procs[0].wait()
        for b in storm[MODELS // 2 :]:
            await send(topics.BREACHES.name, b)
        # ...and the detector breaches every model again, before and after the hand-over.
        for b in [breach("v2", model_id=m) for m in models]:
            await send(topics.BREACHES.name, b)

        async def all_commands() -> bool:
            seen.clear()
            seen.update(await commands_by_model(reader))
            return len(seen) == MODELS

        await wait_for(all_commands, "a command for every model", 120, logs)
        await asyncio.sleep(scaled(5))  # time for a second command, if one were coming
        final = await commands_by_model(reader)
    finally:
        for p in procs:
            if p.returncode is None:
                os.killpg(p.pid, signal.SIGTERM)
                await p.wait()
        await producer.stop()
    twice = {m: ids for m, ids in final.items() if len(ids) != 1}
    assert not twice, f"models rolled back more than once: {twice}"
    assert set(final) == set(models)
    records = await reader.read(topics.COMMANDS.name, until=lambda r: False, timeout_s=0.5)
    trust = trust_of(s)
    for r in records:
        cmd = RollbackCommand.model_validate_json(r.value)
        assert verify_command(cmd, trust, cmd.issued_at).ok
