"""The decider and oversized invalid input: on each of the six topics it reads, a ~900 KB
invalid record is dead-lettered with the reason and the valid events after it are handled
(issue 11, part 2: one such record crashed a decider agent)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

import pytest

from rollguard import topics
from rollguard.authority import person_signer
from rollguard.events import (
    Approval,
    CommandAck,
    DeadLetter,
    HealthCheckEvent,
    RollbackCommand,
    RollbackRequest,
    derived_id,
)
from rollguard.policy import PolicySource
from rollguard.settings import RollguardSettings
from rollguard.signing import load_signer
from rollguard_services.decider.app import Decider
from rollguard_services.decider.settings import DeciderSettings
from tests.conftest import TopicReader, until
from tests.decider.test_app import TOKENS, good_and_bad
from tests.factories import breach

pytestmark = pytest.mark.broker

HUGE = b'{"model_id": "m", "junk": "' + b"x" * 900_000 + b'"}'
#: The topics the decider reads, and the event its agent counts for each.
READ = {
    topics.DEPLOYMENTS.name: "SystemManifest",
    topics.BREACHES.name: "Breach",
    topics.ACKS.name: "CommandAck",
    topics.HEALTH.name: "HealthCheckEvent",
    topics.REQUESTS.name: "RollbackRequest",
    topics.APPROVALS.name: "Approval",
}


async def test_oversized_invalid_input_on_every_topic_is_dead_lettered_and_the_rest_handled(
    topics_ready: RollguardSettings,
    keys: str,
    publish_signed: Callable[..., Awaitable[None]],
    reader: TopicReader,
) -> None:
    for name in READ:
        await publish_signed(name, HUGE, key=b"m")
    for m in good_and_bad("m"):
        await publish_signed(topics.DEPLOYMENTS.name, m)
    request = person_signer("dora").sign(
        RollbackRequest(model_id="req", level=3, role="data_engineering_lead")
    )
    await publish_signed(topics.REQUESTS.name, request)
    approval = person_signer("dan").sign(
        Approval(
            model_id="req",
            decision_id=derived_id("request", request.event_id),
            role="data_engineering_lead",
        )
    )
    await publish_signed(topics.APPROVALS.name, approval)
    await publish_signed(
        topics.HEALTH.name, HealthCheckEvent(model_id="m", model_version="v1", ok=True)
    )
    await publish_signed(
        topics.ACKS.name,
        CommandAck(
            model_id="other",
            model_version="v2",
            command_id="c-0",
            status="received",
            executor_id="x",
        ),
    )

    decider = Decider(
        topics_ready,
        PolicySource(None),
        load_signer(topics_ready.resolved_signing_key_file),
        DeciderSettings(tick_s=0.2),
        tokens=TOKENS,
    )
    task = asyncio.create_task(decider.run())
    try:
        await until(lambda: decider.counts["SystemManifest"] >= 2 or task.done(), 60)
        await publish_signed(topics.BREACHES.name, breach("v2", model_id="m"))
        await until(
            lambda: task.done() or all(decider.counts[event] >= 1 for event in READ.values()),
            60,
        )
        assert not task.done(), task
        commands = [
            RollbackCommand.model_validate_json(r.value)
            for r in await reader.read(topics.COMMANDS.name, until=lambda r: len(r) >= 1)
        ]
        assert [c.model_id for c in commands] == ["m"]  # the breach after the poison: acted on
        letters = [
            DeadLetter.model_validate_json(r.value)
            for r in await reader.read(topics.DEADLETTER.name, until=lambda r: len(r) >= len(READ))
        ]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert sorted(d.source_topic for d in letters) == sorted(topics_ready.topic(n) for n in READ)
    for letter in letters:
        assert (letter.consumer, letter.reason, letter.offset) == ("decider", "invalid", 0)
        assert letter.raw_truncated and letter.raw_size == len(HUGE)
        assert letter.raw_sha256 == hashlib.sha256(HUGE).hexdigest()
