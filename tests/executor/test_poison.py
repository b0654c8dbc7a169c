"""The executor and oversized invalid input: dead-lettered with the reason, and the command
after it applied (issue 11, part 2: a ~900 KB invalid command stopped the executor)."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

import pytest

from rollguard import topics
from rollguard.events import CommandAck, DeadLetter
from rollguard.settings import RollguardSettings
from rollguard.signing import load_signer
from rollguard_services.executor.app import Executor
from rollguard_services.executor.settings import ExecutorSettings
from tests.conftest import TopicReader, run_until
from tests.factories import command

pytestmark = pytest.mark.broker

HUGE = b'{"model_id": "m", "junk": "' + b"x" * 900_000 + b'"}'


async def test_an_oversized_invalid_command_is_dead_lettered_and_the_next_one_applied(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
) -> None:
    await publish(topics.COMMANDS.name, HUGE, key=b"m")
    cmd = load_signer(topics_ready.resolved_signing_key_file).sign(command())
    await publish(topics.COMMANDS.name, cmd)
    ex = Executor(topics_ready, ExecutorSettings(group_id="exec-poison", executor_id="exec-1"))
    await run_until(ex, lambda: ex.counts["applied"] == 1)

    (letter,) = [
        DeadLetter.model_validate_json(r.value)
        for r in await reader.read(topics.DEADLETTER.name, until=lambda r: len(r) >= 1)
    ]
    assert (letter.source_topic, letter.offset) == (topics_ready.topic(topics.COMMANDS.name), 0)
    assert (letter.consumer, letter.reason) == ("executor", "invalid")
    assert letter.raw_truncated and letter.raw_size == len(HUGE)
    assert letter.raw_sha256 == hashlib.sha256(HUGE).hexdigest()
    acks = [
        CommandAck.model_validate_json(r.value)
        for r in await reader.read(topics.ACKS.name, until=lambda r: len(r) >= 2)
    ]
    assert [(a.command_id, a.status) for a in acks] == [
        (cmd.command_id, "received"),
        (cmd.command_id, "applied"),
    ]
