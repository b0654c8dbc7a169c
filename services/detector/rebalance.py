"""The detector's rebalance listener: what the pipelined loop needs to know of rebalances."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import ConsumerRebalanceListener

from rollguard.logs import get_logger

log = get_logger("rollguard.detector")


class Revocations(ConsumerRebalanceListener):  # type: ignore[misc]
    """Rebalances, as the hot loop needs to know them.

    A revocation resets every partition's position to its last committed offset, so a batch
    fetched before it is fetched again and must not be folded twice. A fold in flight is let
    finish and commit before the group moves on (up to ``wait_s``), so its batch is not.
    """

    def __init__(self, folding: asyncio.Lock, wait_s: float) -> None:
        self.count = 0
        self._folding = folding
        self._wait_s = wait_s

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.count += 1
        try:
            await asyncio.wait_for(self._folding.acquire(), self._wait_s)
        except TimeoutError:
            log.warning("rebalance_did_not_wait_for_fold", waited_s=self._wait_s)
            return
        self._folding.release()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        held: dict[str, list[int]] = {}
        for tp in assigned:
            held.setdefault(tp.topic, []).append(tp.partition)
        log.info("partitions_assigned", **{t: sorted(p) for t, p in sorted(held.items())})
