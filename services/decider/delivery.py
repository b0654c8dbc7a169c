"""The decider's sends, confirmed: faust sends a record and forgets it.

Neither ``Topic.send`` nor a table's changelog write is checked by faust: a send the broker
refused was lost, and said only by asyncio's "FutureMessage exception was never retrieved"
traceback (seven lines, not JSON). The embedded broker refuses so, with UNKNOWN_SERVER_ERROR
at SIGCONT, a produce in flight at SIGSTOP; a real broker refuses a produce during a leader
election. Here every send is waited for and made again the way ``rollguard.outage.Sender``
makes its own (``waited_out``): the decider's outputs, its model status, its dead letters,
and its state table's changelog, whose failed write is made again with the key's value as
it is by then (a compacted topic keeps the last write: an older value sent again after a
newer one would win).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.types import FutureMessage

from rollguard.outage import OutageLimit, waited_out


class ConfirmedTable(faust.Table[str, str]):
    """A faust table that keeps the futures of its changelog writes for ``Delivery.confirm``.

    Made like ``app.Table`` makes one; faust's own callback on a write is skipped for a write
    that failed (it would raise in the event loop: the unread exception)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: (partition, key, future) of every changelog write not yet confirmed.
        self.unconfirmed: list[tuple[int | None, Any, FutureMessage]] = []

    def send_changelog(
        self, partition: int | None, key: Any, value: Any, *args: Any, **kwargs: Any
    ) -> FutureMessage:
        fut = super().send_changelog(partition, key, value, *args, **kwargs)
        self.unconfirmed.append((partition, key, fut))
        return fut

    def write_again(self, partition: int | None, key: Any) -> FutureMessage | None:
        """Write the key's current value to the changelog again (None: the key is gone)."""
        if key not in self:
            return None
        fut: FutureMessage = super().send_changelog(partition, key, self[key])
        return fut

    def _on_changelog_sent(self, fut: FutureMessage) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # Delivery.confirm writes it again
        super()._on_changelog_sent(fut)


def _attempts(first: Awaitable[Any], again: Callable[[], Awaitable[Any]]) -> Callable[[], Any]:
    """For ``waited_out``: the first attempt waits for the send already made (its error, if
    any, is judged like any other), each later one makes it again."""
    pending = [first]

    async def attempt() -> Any:
        if pending:
            return await pending.pop()
        return await again()

    return attempt


class Delivery:
    """Sends that wait for the broker to take them (see the module doc)."""

    def __init__(self, app: faust.App, limit: OutageLimit, counts: Counter[str]) -> None:
        self.app = app
        self.limit = limit
        self.counts = counts

    def _again(self) -> None:
        self.counts["sends_made_again"] += 1

    async def send(self, topic: faust.TopicT, key: bytes | None, value: bytes) -> Any:
        """Send one record; return once the broker took it."""
        return (await self.send_all([(topic, key, value)]))[0]

    async def send_all(self, records: list[tuple[faust.TopicT, bytes | None, bytes]]) -> list[Any]:
        """Send the records together (one round trip, not one each) and wait for all of them;
        each that failed is made again until the broker takes it."""
        sent = [await topic.send(key=key, value=value) for topic, key, value in records]
        out = []
        for (topic, key, value), first in zip(records, sent, strict=True):
            resend = functools.partial(self._resend, topic, key, value)
            out.append(await waited_out(_attempts(first, resend), self.limit, again=self._again))
        return out

    @staticmethod
    async def _resend(topic: faust.TopicT, key: bytes | None, value: bytes) -> Any:
        return await (await topic.send(key=key, value=value))

    async def confirm(self, table: ConfirmedTable) -> None:
        """Wait for each of the table's changelog writes; a failed one is written again with
        the key's value as it is now.

        Each write's own future is waited for, and faust's producer sends what it buffers on
        its own: no ``producer.flush()``, whose loop wakes every waiting flusher on every
        message sent (with 32 breaches decided at once, a fifth of a storm's CPU went there)."""
        while table.unconfirmed:
            partition, key, first = table.unconfirmed.pop(0)
            rewrite = functools.partial(self._rewrite, table, partition, key)
            await waited_out(_attempts(first, rewrite), self.limit, again=self._again)

    async def _rewrite(self, table: ConfirmedTable, partition: int | None, key: Any) -> Any:
        again = table.write_again(partition, key)
        if again is None:
            return None
        return await again
