"""Issue 15, scale-out: two executor processes in one consumer group share the commands and
one inbox database (PostgreSQL); one is SIGKILLed in the middle of applying a command, the
other takes its partitions over and finishes its work, and every command is still applied
once, with one final ack (the checks of test_crash.py, over two processes instead of one).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from rollguard.bus import provision_topics
from rollguard.settings import RollguardSettings
from rollguard.signing import ensure_keys
from tests.conftest import HEAVY, TopicReader, group_split, held_partitions, scaled
from tests.executor.test_crash import (
    ROLLGUARD,
    Lane,
    check_lane,
    final_acks_seen,
    lane_commands,
    publish_commands,
)

pytestmark = [pytest.mark.broker, HEAVY, pytest.mark.timeout(scaled(300))]

PARTITIONS = 4


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_executors_one_killed_mid_command_apply_each_command_once(
    settings: RollguardSettings, tmp_path: Path, database_url: str
) -> None:
    s = settings.model_copy(update={"partitions": PARTITIONS, "executor_db_url": database_url})
    await provision_topics(s)
    ensure_keys(s)
    effects = tmp_path / "target"
    (effects / "keys").mkdir(parents=True)
    lane = Lane("after_effect", s, effects)
    lane.commands = lane_commands(s.resolved_signing_key_file, 24)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs: list[asyncio.subprocess.Process] = []

    def env(name: str, crash_after: int | None) -> dict[str, str]:
        return {
            **lane.env(crash_after),
            "ROLLGUARD_PARTITIONS": str(PARTITIONS),
            "ROLLGUARD_EXECUTOR_DB_URL": database_url,
            "ROLLGUARD_EXECUTOR_EXECUTOR_ID": f"exec-{name}",
        }

    try:
        # a kills itself (SIGKILL) between the effect and its record, its 3rd time there.
        for name, log, crash in zip("ab", logs, (3, None), strict=True):
            with log.open("wb") as out:
                procs.append(
                    await asyncio.create_subprocess_exec(
                        str(ROLLGUARD),
                        "run",
                        "executor",
                        env=env(name, crash),
                        stdout=out,
                        stderr=out,
                        start_new_session=True,
                    )
                )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + scaled(90)
        while not group_split(logs, PARTITIONS):
            assert loop.time() < deadline, "both executors never held partitions:\n" + "\n".join(
                log.read_text(errors="replace")[-2000:] for log in logs
            )
            await asyncio.sleep(0.3)
        await publish_commands(s, lane.commands)
        code = await asyncio.wait_for(procs[0].wait(), scaled(90))
        assert code == -signal.SIGKILL, f"a exited {code}, see {logs[0]}"
        lane.kills = 1
        reader = TopicReader(s)
        wanted = {c.command_id for c in lane.commands}
        deadline = loop.time() + scaled(90)
        while not wanted <= await final_acks_seen(lane, reader):
            assert procs[1].returncode is None, f"b died, see {logs[1]}"
            assert loop.time() < deadline, (
                "b never finished a's commands:\n" + logs[1].read_text()[-3000:]
            )
            await asyncio.sleep(0.5)
        took_over = held_partitions(logs[1].read_text(errors="replace"))
    finally:
        for p in procs:
            if p.returncode is None:
                os.killpg(p.pid, signal.SIGTERM)
                await p.wait()
    assert took_over == list(range(PARTITIONS)), "b holds every partition once a is gone"
    figures = await check_lane(lane)
    assert figures["commands"] == 24
