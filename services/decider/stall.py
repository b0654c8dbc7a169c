"""Input partitions faust stopped reading: behind their end, their position not moving.

Seen in tests/decider/test_scale_out.py (about one run in three on a busy machine): after a
worker is SIGKILLed, the survivor's rebalance completes, it holds every partition and its
table is recovered, yet it never reads another breach or deployment; only its internal ticks
topic moves, and every rollback it had issued is escalated as unacknowledged. So the timer
looks, every ``every_s``: a partition whose position stayed below its end for ``stall_s``
is said (``consumer_stalled``, with what faust's consumer holds of it) and handed back to the
fetcher (resumed, unbuffered, flow resumed), which reads it again.
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
        """The partitions handed back to the fetcher this time (usually none)."""
        now = time.monotonic()
        if now < self._next:
            return []
        self._next = now + self.every_s
        consumer = app.consumer
        parts = [tp for tp in consumer.assignment() if tp.topic in topics]
        if not parts:
            self._behind.clear()
            return []
        try:
            ends = await asyncio.wait_for(consumer.highwaters(*parts), 5)
            positions = {tp: await asyncio.wait_for(consumer.position(tp), 2) for tp in parts}
        except Exception:  # a timeout or a broker error: looked at again next time
            return []
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
        tps = set(stalled)
        buffered.difference_update(tps)
        consumer.resume_partitions(tps)
        consumer.resume_flow()
        app.flow_control.resume()
        self.unstuck += len(tps)
