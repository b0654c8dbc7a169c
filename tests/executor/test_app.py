"""The executor through the broker: verify, apply once, acknowledge, then commit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from rollguard import topics
from rollguard.bus import make_producer
from rollguard.events import CommandAck, DeadLetter, SystemManifest, utcnow
from rollguard.settings import RollguardSettings
from rollguard.signing import Verdict, generate_keypair, load_signer, signer_of, trust_of
from rollguard_services.executor.app import Executor
from rollguard_services.executor.inbox import Inbox, InboxRow, Source
from rollguard_services.executor.settings import ExecutorSettings
from tests.conftest import TopicReader, run_until
from tests.factories import command

pytestmark = pytest.mark.broker


def executor(settings: RollguardSettings) -> Executor:
    return Executor(settings, ExecutorSettings(group_id="exec-test", executor_id="exec-1"))


async def acks_of(reader: TopicReader, n: int) -> list[CommandAck]:
    records = await reader.read(topics.ACKS.name, until=lambda r: len(r) >= n)
    return [CommandAck.model_validate_json(r.value) for r in records]


async def manifests(reader: TopicReader, n: int, timeout_s: float = 20) -> list[SystemManifest]:
    records = await reader.read(
        topics.DEPLOYMENTS.name, until=lambda r: len(r) >= n, timeout_s=timeout_s
    )
    return [SystemManifest.model_validate_json(r.value) for r in records]


async def test_signed_command_is_received_applied_and_moves_the_live_pointer(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
) -> None:
    cmd = load_signer(topics_ready.resolved_signing_key_file).sign(command())
    await publish(topics.COMMANDS.name, cmd)
    ex = executor(topics_ready)
    await run_until(ex, lambda: ex.counts["applied"] == 1)

    acks = await acks_of(reader, 2)
    assert [(a.status, a.command_id, a.executor_id) for a in acks] == [
        ("received", cmd.command_id, "exec-1"),
        ("applied", cmd.command_id, "exec-1"),
    ]
    assert acks[1].timings["apply_s"] >= 0
    live, bad = await manifests(reader, 2)
    assert (live.model_version, live.status) == ("v1", "live")
    assert (bad.model_version, bad.status) == ("v2", "rolled_back")
    assert cmd.command_id in live.note


@pytest.mark.parametrize("attack", ["forged", "expired", "unknown_key", "unsigned"])
async def test_bad_commands_are_rejected_with_the_reason_and_change_nothing(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
    tmp_path: object,
    attack: str,
) -> None:
    signer = load_signer(topics_ready.resolved_signing_key_file)
    if attack == "forged":
        cmd = signer.sign(command()).model_copy(update={"level": 2})
    elif attack == "expired":
        past = utcnow() - timedelta(minutes=5)
        cmd = signer.sign(command(issued_at=past, expires_at=past + timedelta(seconds=60)))
    elif attack == "unknown_key":
        other = topics_ready.state_dir / "other"
        generate_keypair(other / "k.pem", other / "trusted")
        cmd = load_signer(other / "k.pem").sign(command())
    else:
        cmd = command()
    await publish(topics.COMMANDS.name, cmd)
    ex = executor(topics_ready)
    await run_until(ex, lambda: ex.counts["rejected"] == 1)

    (ack,) = await acks_of(reader, 1)
    assert ack.status == "rejected"
    expected = {
        "forged": "bad_signature",
        "expired": "expired",
        "unknown_key": "unknown_key",
        "unsigned": "unsigned",
    }
    assert ack.detail.startswith(expected[attack])
    assert await manifests(reader, 1, timeout_s=1) == []


async def test_replayed_command_never_acts_twice(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
) -> None:
    cmd = load_signer(topics_ready.resolved_signing_key_file).sign(command())
    await publish(topics.COMMANDS.name, cmd)
    await publish(topics.COMMANDS.name, cmd)
    await publish(topics.COMMANDS.name, b"\x00garbage", key=b"m")
    ex = executor(topics_ready)
    await run_until(
        ex, lambda: ex.counts["replayed"] == 1 and ex.dead_letters.counts["malformed"] == 1
    )

    statuses = [a.status for a in await acks_of(reader, 3)]
    assert statuses == ["received", "applied", "rejected"]
    assert len(await manifests(reader, 3, timeout_s=1)) == 2  # one effect: live + rolled_back
    (letter,) = [
        DeadLetter.model_validate_json(r.value)
        for r in await reader.read(topics.DEADLETTER.name, until=lambda r: len(r) >= 1)
    ]
    assert (letter.consumer, letter.reason) == ("executor", "malformed")  # not JSON at all


async def test_crash_after_receive_resumes_with_the_effect_and_both_acks(
    topics_ready: RollguardSettings, keys: str, reader: TopicReader
) -> None:
    """A command the inbox holds as received (the executor died before acting) is applied once
    on redelivery, and the ack it still owed is sent."""
    cmd = load_signer(topics_ready.resolved_signing_key_file).sign(command())
    producer = make_producer(topics_ready, control=True)
    await producer.start()
    try:
        meta = await producer.send_and_wait(
            topics_ready.topic(topics.COMMANDS.name), cmd.encode(), key=cmd.key
        )
    finally:
        await producer.stop()
    ex = executor(topics_ready)
    inbox = Inbox(topics_ready.resolved_executor_db_url)
    owed = ex._ack(cmd, "received", "")
    inbox.receive(
        InboxRow(
            cmd.command_id,
            Source(meta.topic, meta.partition, meta.offset),
            cmd.model_id,
            "received",
            "",
        ),
        owed,
    )
    inbox.close()

    await run_until(ex, lambda: ex.counts["applied"] == 1)
    assert [a.status for a in await acks_of(reader, 2)] == ["received", "applied"]
    assert len(await manifests(reader, 3, timeout_s=1)) == 2
    # The owed ack was signed before it was stored, and is sent as stored, byte for byte.
    records = await reader.read(topics.ACKS.name, until=lambda r: len(r) >= 2)
    assert records[0].value == owed.encode()
    assert trust_of(topics_ready).check(owed) == Verdict(True)
    assert owed.key_id == signer_of(topics_ready, "executor").key_id
    after = Inbox(topics_ready.resolved_executor_db_url)
    try:
        row = after.get(cmd.command_id)
        assert row is not None and row.status == "applied"
        assert after.unsent() == []
    finally:
        after.close()
