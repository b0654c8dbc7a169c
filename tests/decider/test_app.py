"""The faust decider through the broker: manifests and breaches in, decisions and commands out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from rollguard import topics
from rollguard.events import DeadLetter, Decision, RollbackCommand, utcnow
from rollguard.policy import PolicySet
from rollguard.settings import RollguardSettings
from rollguard.signing import load_signer, load_trusted_keys, verify_command
from services.decider.app import Decider
from tests.conftest import TopicReader, until
from tests.factories import breach, manifest

pytestmark = pytest.mark.broker


async def test_breach_of_live_version_becomes_a_signed_rollback_and_a_repeat_holds(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
) -> None:
    await publish(topics.DEPLOYMENTS.name, manifest("v1", status="known_good"))
    await publish(topics.DEPLOYMENTS.name, manifest("v2", status="live"))
    await publish(topics.DEPLOYMENTS.name, b"{broken", key=b"m")
    first, second = breach("v2"), breach("v2")
    decider = Decider(
        topics_ready, PolicySet(), load_signer(topics_ready.resolved_signing_key_file)
    )
    task = asyncio.create_task(decider.run())
    try:
        # deployments and breaches are separate topics: order them as production does, the
        # deployment first (a breach needs a window of the new version's traffic).
        await until(lambda: decider.counts["SystemManifest"] == 2)
        await publish(topics.BREACHES.name, first)
        await until(lambda: decider.counts["decision_rollback"] == 1)
        await publish(topics.BREACHES.name, second)
        await publish(topics.BREACHES.name, first)  # a redelivery: ignored
        await until(
            lambda: (
                decider.counts["decision_hold"] == 1 and decider.counts["duplicate_breaches"] == 1
            )
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    decisions = [
        Decision.model_validate_json(r.value)
        for r in await reader.read(topics.DECISIONS.name, until=lambda r: len(r) >= 2)
    ]
    assert [d.action for d in decisions] == ["rollback", "hold"]
    rollback, hold = decisions
    assert rollback.breach_ids == [first.event_id] and rollback.level == 1
    assert hold.breach_ids == [second.event_id]
    assert [r.code for r in hold.reasons] == ["breach", "rollback_in_flight"]

    (record,) = await reader.read(topics.COMMANDS.name, until=lambda r: len(r) >= 1, timeout_s=3)
    command = RollbackCommand.model_validate_json(record.value)
    assert command.command_id == rollback.command_id
    assert command.decision_id == rollback.event_id
    assert command.to_manifest.model_version == "v1"
    trusted = load_trusted_keys(topics_ready.resolved_trusted_keys_dir)
    assert verify_command(command, trusted, utcnow()).ok

    (letter,) = [
        DeadLetter.model_validate_json(r.value)
        for r in await reader.read(topics.DEADLETTER.name, until=lambda r: len(r) >= 1)
    ]
    assert letter.source_topic == topics_ready.topic(topics.DEPLOYMENTS.name)
    assert letter.consumer == "decider"
