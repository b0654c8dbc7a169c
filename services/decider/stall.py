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

    async def check(self, app: Any, topics: set[str]) -> list[Any]:
        """The partitions handed back to the fetcher this time (usually none). Never raises:
        it runs on the decider's timer, whose failure would stop the app."""
        now = time.monotonic()
        if now < self._next:
            return []
        self._next = now + self.every_s
        try:
            return await self._check(app, topics, now)
        except Exception as exc:  # looked at again next time
            log.debug("stall_check_failed", error=repr(exc))
            return []

    async def _check(self, app: Any, topics: set[str], now: float) -> list[Any]:
        consumer = app.consumer
        # Not while faust itself holds the flow (a rebalance, a recovery): its pauses then
        # are its own, and lifting them would let a revoked partition be read twice.
        if not getattr(consumer, "flow_active", True) or not app.flow_control.is_active():
            self._behind.clear()
            return []
        buffered: set[Any] = getattr(consumer, "_buffered_partitions", set())
        parts = [
            tp for tp in consumer.assignment() if tp.topic in topics and tp not in buffered
        ]  # a buffered partition is faust's back-pressure, not a stall
        if not parts:
            self._behind.clear()
            return []
        ends = await asyncio.wait_for(consumer.highwaters(*parts), 5)
        positions = {tp: await asyncio.wait_for(consumer.position(tp), 2) for tp in parts}
        stalled = []
        behind: dict[Any, tuple[int, float]] = {}
        for tp in parts:
            pos, end = positions.get(tp), ends.get(tp)
            if pos is None or end is None or pos >= end:
                continue
            seen = self._behind.get(tp)
            since = seen[1] if seen is not None and seen[0] == pos else now
            behind[tp] = (pos, since)
            if now - since >= self.stall_s:
                stalled.append(tp)
        self._behind = behind
        if stalled:
            self._unstick(app, stalled, positions, ends)
            for tp in stalled:
                self._behind.pop(tp, None)
        return stalled

    def _unstick(self, app: Any, stalled: list[Any], positions: Any, ends: Any) -> None:
        consumer = app.consumer
        active = getattr(consumer, "_active_partitions", None) or set()
        paused: set[Any] = getattr(consumer, "_paused_partitions", set())
        buffered: set[Any] = getattr(consumer, "_buffered_partitions", set())
        log.error(
            "consumer_stalled",
            partitions=[f"{tp.topic}:{tp.partition}" for tp in stalled],
            behind=[ends[tp] - positions[tp] for tp in stalled],
            active=[tp in active for tp in stalled],
            paused=[tp in paused for tp in stalled],
            buffered=[tp in buffered for tp in stalled],
            flow_active=getattr(consumer, "flow_active", None),
            flow_control=app.flow_control.is_active(),
            in_recovery=app.in_recovery,
            stalled_for_s=self.stall_s,
        )
        consumer.resume_partitions(set(stalled))  # back among those the fetcher reads
        self.unstuck += len(stalled)
