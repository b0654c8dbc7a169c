"""The notifier and oversized invalid input: dead-lettered with the reason on each topic it
reads, and the incident after it notified (issue 11, part 2)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

import orjson
import pytest

from rollguard import topics
from rollguard.events import DeadLetter
from rollguard.settings import RollguardSettings
from rollguard_services.notifier.app import Notifier
from rollguard_services.notifier.settings import NotifierSettings
from tests.conftest import TopicReader, until
from tests.notifier.test_app import incident_events

pytestmark = pytest.mark.broker

HUGE = b'{"model_id": "m", "junk": "' + b"x" * 900_000 + b'"}'
READ = (topics.BREACHES.name, topics.DECISIONS.name, topics.ACKS.name)


async def test_oversized_invalid_input_is_dead_lettered_and_the_incident_after_it_notified(
    topics_ready: RollguardSettings,
    keys: str,
    publish: Callable[..., Awaitable[None]],
    reader: TopicReader,
) -> None:
    for name in READ:
        await publish(name, HUGE, key=b"m")
    b, d, acks = incident_events(topics_ready)
    # NaN is not JSON, though pydantic's own parser reads it: a breach of value NaN.
    nan = b.encode().replace(orjson.dumps(b.value), b"NaN")
    assert nan != b.encode()
    await publish(topics.BREACHES.name, nan, key=b"m")
    await publish(topics.BREACHES.name, b)
    await publish(topics.DECISIONS.name, d)
    for ack in acks:
        await publish(topics.ACKS.name, ack)

    notifier = Notifier(topics_ready, NotifierSettings(group_id="notifier-poison"))
    task = asyncio.create_task(notifier.run())
    try:
        # no channel configured: each notification is counted as unrouted
        await until(
            lambda: notifier.counts["unrouted"] == 3 or task.done()
        )  # decided, applied, verified
        assert not task.done()
        assert notifier.counts["dead_letters"] == len(READ) + 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await reader.read(topics.DEADLETTER.name, until=lambda r: len(r) > len(READ))
    ]
    (not_json,) = [d for d in letters if d.reason == "malformed"]
    assert (not_json.source_topic, not_json.offset) == (topics_ready.topic("breaches"), 1)
    letters.remove(not_json)
    assert sorted(d.source_topic for d in letters) == sorted(topics_ready.topic(n) for n in READ)
    for letter in letters:
        assert (letter.consumer, letter.reason, letter.offset) == ("notifier", "invalid", 0)
        assert letter.raw_truncated and letter.raw_size == len(HUGE)
        assert letter.raw_sha256 == hashlib.sha256(HUGE).hexdigest()
