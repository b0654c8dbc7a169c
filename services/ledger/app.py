"""Ledger service: appends every control event to the hash chain, then commits offsets."""

from __future__ import annotations

import asyncio
from collections import Counter

from rollguard import topics
from rollguard.bus import make_consumer
from rollguard.logs import get_logger
from rollguard.settings import RollguardSettings
from services.ledger.settings import LedgerSettings
from services.ledger.store import Incoming, LedgerStore

log = get_logger("rollguard.ledger")


class Ledger:
    name = "ledger"

    def __init__(
        self, settings: RollguardSettings, ledger_settings: LedgerSettings | None = None
    ) -> None:
        self.settings = settings
        self.svc = ledger_settings or LedgerSettings()
        self.ready = asyncio.Event()
        self.counts: Counter[str] = Counter()

    async def run(self) -> None:
        store = LedgerStore(self.settings.resolved_ledger_url)
        names = [self.settings.topic(t.name) for t in topics.LEDGERED]
        consumer = make_consumer(
            self.settings,
            *names,
            group_id=self.svc.group_id,
            control=True,
            max_poll_records=self.svc.max_batch,
        )
        try:
            await consumer.start()
            log.info("started", bootstrap=self.settings.kafka_bootstrap, store=store.dialect)
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=self.svc.max_batch)
                if not self.ready.is_set() and consumer.assignment():
                    self.ready.set()
                if not batches:
                    continue
                incoming = [
                    Incoming(r.topic, r.partition, r.offset, r.value)
                    for records in batches.values()
                    for r in records
                ]
                added = await asyncio.to_thread(store.append, incoming)
                self.counts["appended"] += added
                self.counts["redelivered"] += len(incoming) - added
                # Only what is stored is committed: a store failure stops us before this line.
                await consumer.commit(
                    {tp: records[-1].offset + 1 for tp, records in batches.items()}
                )
        finally:
            await consumer.stop()
            store.close()
            log.info("stopped", **self.counts)
