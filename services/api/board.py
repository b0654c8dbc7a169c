"""The models' status board: the latest ModelStatus of each model, followed on
``model-status`` from its beginning (compacted: the latest per model counts).

Only statuses the decider's key signed are shown; another is counted and dropped, as every
consumer of a control topic does (rollguard.bus.Admission). ``caught_up`` is set once the
board has read up to where the topic ended when it started: before that, the API is not
ready (an empty board would say "no models").
"""

from __future__ import annotations

import asyncio
from collections import Counter

from aiokafka import TopicPartition

from rollguard import topics
from rollguard.bus import make_consumer
from rollguard.events import ModelStatus, decode
from rollguard.logs import get_logger
from rollguard.settings import RollguardSettings
from rollguard.signing import Trust, TrustSource

log = get_logger("rollguard.api")


class Board:
    def __init__(self, settings: RollguardSettings, trust: Trust | TrustSource) -> None:
        self.settings = settings
        #: Followed as the trusted keys directory changes, when a source is given.
        self._trust = trust
        self.statuses: dict[str, ModelStatus] = {}
        self.caught_up = asyncio.Event()
        self.refused: Counter[str] = Counter()

    async def follow(self) -> None:
        """Read model-status until cancelled."""
        name = self.settings.topic(topics.MODEL_STATUS.name)
        consumer = make_consumer(self.settings, group_id=None, control=True)
        await consumer.start()
        try:
            parts: list[TopicPartition] = []
            while not parts:  # not made yet (the topics job runs beside the API's pod)
                await consumer.topics()
                parts = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
                if not parts:
                    log.warning("status_topic_missing", topic=name, hint="rollguard topics create")
                    await asyncio.sleep(2)
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts) if parts else {}
            if all(offset == 0 for offset in ends.values()):
                self.caught_up.set()
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        self._take(record.key, record.value)
                if not self.caught_up.is_set():
                    positions = {tp: await consumer.position(tp) for tp in parts}
                    if all(positions[tp] >= ends[tp] for tp in parts):
                        self.caught_up.set()
                        log.info("status_board_caught_up", models=len(self.statuses))
        finally:
            await consumer.stop()

    def _take(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        model_id = key.decode(errors="replace")
        if value is None:  # a tombstone: the model was forgotten
            self.statuses.pop(model_id, None)
            return
        try:
            status = decode(ModelStatus, value)
        except ValueError:
            self.refused["unreadable"] += 1
            return
        trust = self._trust
        if isinstance(trust, TrustSource):
            trust.refresh()
            trust = trust.current
        verdict = trust.check(status)
        if not verdict.ok or status.model_id != model_id:
            self.refused["untrusted"] += 1
            log.warning("status_refused", model_id=model_id, refusal=verdict.refusal)
            return
        self.statuses[model_id] = status
