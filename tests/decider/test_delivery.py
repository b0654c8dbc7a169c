"""The decider's sends are confirmed (issue 11): a send the broker refused is made again, an
error no attempt cures is raised, a changelog write is made again with the key's value as
it is by then.

The broker's refusal at SIGCONT needs a 90 s freeze (benchmarks/freeze.py makes it); here the
refusal is staged on the future faust hands back, through a topic whose sends fail the way
aiokafka fails them, on a real faust app and table against the broker."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import faust
import pytest
from aiokafka.errors import MessageSizeTooLargeError, UnknownError
from faust.types import FutureMessage

from rollguard.outage import UNKNOWN_ERROR_TRIES, OutageLimit
from rollguard.settings import RollguardSettings
from rollguard_services.decider.app import faust_broker_options
from rollguard_services.decider.delivery import ConfirmedTable, Delivery
from tests.conftest import TopicReader

pytestmark = pytest.mark.broker


class Refusing:
    """A faust topic whose first ``refusals`` sends the broker answers with ``error``."""

    def __init__(self, topic: faust.TopicT, refusals: int, error: type[Exception]) -> None:
        self.topic, self.refusals, self.error = topic, refusals, error
        self.sends = 0

    async def send(self, **kw: Any) -> Any:
        self.sends += 1
        if self.sends > self.refusals:
            return await self.topic.send(**kw)
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(self.error())
        return fut


@pytest.fixture
async def app(topics_ready: RollguardSettings) -> Any:
    s = topics_ready
    made = faust.App(
        f"{s.topic_prefix}delivery",
        **faust_broker_options(s),
        web_enabled=False,
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        loop=asyncio.get_running_loop(),
    )
    await made.producer.start()
    yield made
    await made.producer.stop()


async def test_a_refused_send_is_made_again_until_the_broker_takes_it(
    app: faust.App, topics_ready: RollguardSettings, reader: TopicReader
) -> None:
    name = topics_ready.topic("decisions")
    topic = Refusing(app.topic(name, key_serializer="raw", value_serializer="raw"), 2, UnknownError)
    counts: Counter[str] = Counter()
    delivery = Delivery(app, OutageLimit(None), counts)
    await delivery.send_all([(topic, b"m", b"first"), (app.topic(name), b"m", b"second")])  # type: ignore[list-item]
    assert (topic.sends, counts["sends_made_again"]) == (3, 2)
    records = await reader.read("decisions", until=lambda r: len(r) >= 2)
    assert sorted(r.value for r in records) == [b"first", b"second"]


async def test_an_error_no_attempt_cures_is_raised(app: faust.App) -> None:
    delivery = Delivery(app, OutageLimit(None), Counter())
    big = Refusing(app.topic("x"), 1, MessageSizeTooLargeError)
    with pytest.raises(MessageSizeTooLargeError):
        await delivery.send(big, b"m", b"v")  # type: ignore[arg-type]
    unknown = Refusing(app.topic("x"), UNKNOWN_ERROR_TRIES, UnknownError)
    with pytest.raises(UnknownError):
        await delivery.send(unknown, b"m", b"v")  # type: ignore[arg-type]
    assert unknown.sends == UNKNOWN_ERROR_TRIES


async def test_a_failed_changelog_write_is_made_again_with_the_current_value(
    app: faust.App, topics_ready: RollguardSettings, reader: TopicReader
) -> None:
    table = ConfirmedTable(
        app, name="state", beacon=app.tables.beacon, partitions=1, key_type=str, value_type=str
    )
    app.tables.add(table)
    refused: FutureMessage = asyncio.get_running_loop().create_future()  # type: ignore[assignment]
    refused.set_exception(UnknownError())
    table.unconfirmed.append((0, "m", refused))  # the write of "old" the broker refused
    table.data["m"] = "new"  # written since, not yet sent
    counts: Counter[str] = Counter()
    await Delivery(app, OutageLimit(None), counts).confirm(table)
    assert counts["sends_made_again"] == 1 and not table.unconfirmed
    changelog = table.changelog_topic.get_topic_name()
    records = await reader.read(
        changelog.removeprefix(topics_ready.topic_prefix), until=lambda r: len(r) >= 1
    )
    assert [(r.key, r.value) for r in records] == [(b'"m"', b'"new"')]
