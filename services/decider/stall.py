"""Input partitions faust stopped reading: behind their end, their position not moving.

Seen in tests/decider/test_scale_out.py (about one run in three on a busy machine): after a
worker is SIGKILLed, the survivor's rebalance completes, it holds every partition and its
table is recovered, yet it never reads another breach or deployment; only its internal ticks
topic moves, and every rollback it had issued is escalated as unacknowledged. So the timer
looks, every ``every_s``: a partition whose position stayed below its end for ``stall_s``
is said (``consumer_stalled``, with what faust's consumer holds of it) and resumed, so that the
fetcher reads it again. Not while faust holds the flow itself (a rebalance, a recovery), nor
for a partition faust holds back because its stream's buffer is full.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rollguard.logs import get_logger

log = get_logger("rollguard.decider")


class StallWatch:
    def __init__(self, stall_s: float = 10.0, every_s: float = 3.0) -> None:
        self.stall_s = stall_s
        self.every_s = every_s
        #: partition → (position, monotonic time it was first seen there behind its end)
        self._behind: dict[Any, tuple[int, float]] = {}
        self._next = 0.0
        self.unstuck = 0
        self._failed: set[str] = set()
        #: (topic, partition) → the last offset an agent took (``took``).
        self.read: dict[tuple[str, int], int] = {}
        #: Since when faust has held the flow (0: it does not).
        self._held = 0.0
        self._said_at = 0.0
        #: partition → its end as the broker said it, asked every ``ask_every_s`` off the timer
        self._told: dict[Any, int] = {}
        self._asking: asyncio.Task[None] | None = None
        self._asked_at = 0.0
        self.ask_every_s = 15.0

    def took(self, topic: str, partition: int, offset: int) -> None:
        """An agent took the record at ``offset``."""
        self.read[(topic, partition)] = offset

    async def check(self, app: Any, topics: set[str]) -> list[Any]:
        """The partitions handed back to the fetcher this time (usually none). Never raises:
        it runs on the decider's timer, whose failure would stop the app."""
        now = time.monotonic()
        if now < self._next:
            return []
        self._next = now + self.every_s
        try:
            return await self._check(app, topics, now)
        except Exception as exc:  # looked at again next time; said once per kind of failure
            said = type(exc).__name__
            if said not in self._failed:
                self._failed.add(said)
                log.warning("stall_check_failed", error=repr(exc)[:300])
            return []

    async def _check(self, app: Any, topics: set[str], now: float) -> list[Any]:
        consumer = app.consumer
        # Not while faust itself holds the flow (a rebalance, a recovery): its pauses then
        # are its own, and lifting them would let a revoked partition be read twice.
        if not getattr(consumer, "flow_active", True) or not app.flow_control.is_active():
            self._behind.clear()
            self._held = self._held or now
            if now - self._held >= 3 * self.stall_s:  # held far longer than any rebalance
                log.warning("consumer_flow_held", for_s=round(now - self._held, 1))
                self._held = now
            return []
        self._held = 0.0
        buffered: set[Any] = getattr(consumer, "_buffered_partitions", set())
        assigned = [tp for tp in consumer.assignment() if tp.topic in topics]
        parts = [tp for tp in assigned if tp not in buffered]
        # a buffered partition is faust's back-pressure, not a stall
        if not parts:
            self._behind.clear()
            return []
        # The ends the fetcher last saw (no request on the timer: ListOffsets took a second of
        # it each time on the embedded broker; None, never fetched), raised to what the broker
        # said when last asked off the timer: a partition the fetcher stopped fetching keeps
        # an old end, and would look caught up while breaches pile up behind it.
        self._ask_broker(consumer, parts, now)
        ends: dict[Any, int | None] = {}
        for tp in parts:
            seen, told = consumer.highwater(tp), self._told.get(tp)
            ends[tp] = told if seen is None else max(seen, told or seen)

        async def position(tp: Any) -> int | None:
            # aiokafka waits for a partition's offset reset before it answers: one that
            # never comes is itself the stall (seen: the survivor of a kill, every input
            # partition waiting, the tick timer slowed by these waits)
            try:
                got: int | None = await asyncio.wait_for(consumer.position(tp), 1)
                return got
            except TimeoutError:
                return None

        found = await asyncio.gather(*(position(tp) for tp in parts))
        positions = dict(zip(parts, found, strict=True))
        stalled = []
        behind: dict[Any, tuple[int, float]] = {}
        committed: dict[Any, int | None] = getattr(consumer, "_committed_offset", {})
        for tp in parts:
            pos, end = positions.get(tp), ends.get(tp)
            if pos is None:
                mark = -1  # no position: waiting for one (its end may be unknown too)
            elif end is None:
                mark = -3  # assigned, positioned, and never fetched
            elif pos >= end:
                # Fetched to the end: stalled all the same if what was fetched never reaches
                # an agent (seen: positions at the end, every agent idle).
                done = self.read.get((tp.topic, tp.partition))
                start = done + 1 if done is not None else committed.get(tp)
                if start is None or start >= pos:
                    continue
                mark = -2 - start  # undelivered from ``start``
            else:
                mark = pos
            seen = self._behind.get(tp)
            since = seen[1] if seen is not None and seen[0] == mark else now
            behind[tp] = (mark, since)
            if now - since >= self.stall_s:
                stalled.append(tp)
        self._behind = behind
        if behind and now >= self._said_at + self.stall_s:
            # What the watch sees while input partitions wait: said every stall_s at most.
            self._said_at = now
            log.info(
                "consumer_behind",
                partitions={
                    f"{tp.topic.rsplit('.', 1)[-1]}:{tp.partition}": [
                        positions.get(tp),
                        ends.get(tp),
                        self.read.get((tp.topic, tp.partition)),
                        committed.get(tp),
                        round(now - since, 1),
                    ]
                    for tp, (_, since) in behind.items()
                },
                buffered=len([tp for tp in assigned if tp in buffered]),
                says="position, end, last taken, committed, seconds so",
            )
        if stalled:
            await self._unstick(app, stalled, positions, ends)
            for tp in stalled:
                self._behind.pop(tp, None)
        return stalled

    def _ask_broker(self, consumer: Any, parts: list[Any], now: float) -> None:
        if self._asking is not None and not self._asking.done():
            return
        if now - self._asked_at < self.ask_every_s:
            return
        self._asked_at = now

        async def ask() -> None:
            try:
                told = await asyncio.wait_for(consumer.highwaters(*parts), 10)
            except Exception as exc:  # asked again next time; said once per kind
                said = f"ask:{type(exc).__name__}"
                if said not in self._failed:
                    self._failed.add(said)
                    log.warning("stall_check_failed", error=repr(exc)[:300])
                return
            self._told = {tp: end for tp, end in told.items() if end is not None}

        self._asking = asyncio.create_task(ask(), name="decider-stall-ends")

    async def _unstick(self, app: Any, stalled: list[Any], positions: Any, ends: Any) -> None:
        consumer = app.consumer
        active = getattr(consumer, "_active_partitions", None) or set()
        paused: set[Any] = getattr(consumer, "_paused_partitions", set())
        committed: dict[Any, int | None] = getattr(consumer, "_committed_offset", {})
        log.error(
            "consumer_stalled",
            partitions=[f"{tp.topic}:{tp.partition}" for tp in stalled],
            positions=[positions.get(tp) for tp in stalled],
            ends=[ends.get(tp) for tp in stalled],
            committed=[committed.get(tp) for tp in stalled],
            active=[tp in active for tp in stalled],
            paused=[tp in paused for tp in stalled],
            taken=[self.read.get((tp.topic, tp.partition)) for tp in stalled],
            routed=[tp in getattr(app.topics, "_tp_to_callback", {}) for tp in stalled],
            stalled_for_s=self.stall_s,
            fetcher=_thread_tasks(consumer),
        )
        if not all(tp in getattr(app.topics, "_tp_to_callback", {}) for tp in stalled):
            # fetched records of a partition the conductor has no route for are dropped:
            # route every assigned partition again
            await app.topics.on_partitions_assigned(consumer.assignment())
        consumer.resume_partitions(set(stalled))  # back among those the fetcher reads
        for tp in stalled:
            offset = committed.get(tp)
            if positions.get(tp) is None and offset is not None:
                # no position, waiting on an offset reset that does not come: from the
                # offset faust committed for it, as the seek after a rebalance meant to
                await consumer.seek(tp, offset)
        self.unstuck += len(stalled)


def _thread_tasks(consumer: Any) -> list[str]:
    """Where the tasks of faust's consumer thread wait (its aiokafka client runs there):
    what a stall is stuck on, for the log."""
    loop = getattr(getattr(consumer, "_thread", None), "thread_loop", None)
    if loop is None:
        return []
    out = []
    try:
        for task in list(asyncio.all_tasks(loop)):
            frames = task.get_stack(limit=1)
            where = f"{frames[0].f_code.co_name}:{frames[0].f_lineno}" if frames else "?"
            out.append(f"{task.get_name()} {where}")
    except RuntimeError:  # the set changed while read from this thread
        return out
    return out[:40]
