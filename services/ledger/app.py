"""Ledger service: appends every control event to the hash chain, then commits offsets.

When the database cannot take a batch (missing, read-only, full, unreachable) the service
holds the batch, pauses its partitions, says why and retries with backoff; it commits nothing
past what is stored, so when the database is back it carries on from the held batch without a
gap. A signed checkpoint of the head is written at most ``checkpoint_interval_s`` after any
new entry, and once more on the way out; each is also published to the ledger-checkpoints
topic (``Witness``), where the ledger's writer cannot take it back.

Whatever arrives is recorded, the fact that it arrived included; a value that is not a valid
event of its topic is also dead-lettered with the reason, after it is stored and before the
offsets are committed, so the dead-letter topic lists every input no service could take.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from rollguard import metrics, topics
from rollguard.bus import (
    DeadLetterSink,
    Rejected,
    decode_batch,
    make_consumer,
    make_dead_letter_producer,
    producer_batches,
    start_control_producer,
)
from rollguard.errors import BrokerUnavailable, LedgerError
from rollguard.events import LedgerCheckpoint, utcnow
from rollguard.logs import get_logger
from rollguard.outage import OutageLimit, Sender
from rollguard.settings import RollguardSettings
from rollguard.signing import Signer, generate_keypair, load_signer, load_trusted_keys
from rollguard_services.ledger.checkpoints import (
    CheckpointFile,
    Witness,
    WitnessRead,
    sign_checkpoint,
    witnessed,
)
from rollguard_services.ledger.settings import LedgerSettings
from rollguard_services.ledger.store import Incoming, LedgerStore

log = get_logger("rollguard.ledger")


def ledger_signer(settings: RollguardSettings, svc: LedgerSettings) -> Signer:
    """The checkpoint key, created (with its public half in the trusted dir) on first use."""
    path = svc.resolved_checkpoint_key_file(settings.state_dir)
    if not path.exists() and svc.checkpoint_key_file is None:
        kid = generate_keypair(path, svc.resolved_checkpoint_trusted_dir(settings.state_dir))
        log.info("generated_checkpoint_key", path=str(path), key_id=kid)
    return load_signer(path)


class Ledger:
    name = "ledger"

    def __init__(self, settings: RollguardSettings, ledger_settings: LedgerSettings) -> None:
        self.settings = settings
        self.svc = ledger_settings
        self.ready = asyncio.Event()
        self.counts: Counter[str] = Counter()
        #: "starting", "ok" or "stalled"; ``stall_reason`` says why when stalled.
        self.status = "starting"
        self.stall_reason = ""
        self.store: LedgerStore | None = None
        self.checkpoint_file = CheckpointFile(
            self.svc.resolved_checkpoint_file(settings.resolved_ledger_url, settings.state_dir)
        )
        self._checkpointed_size = -1
        self._uncovered_since: float | None = None

    async def run(self) -> None:
        signer = ledger_signer(self.settings, self.svc)
        store = await self._open_store()
        self.store = store
        consumer = None
        letters = make_dead_letter_producer(self.settings)
        witness: Witness | None = None
        try:
            await self._refuse_lost_entries(store)
            # Entries a kill -9 left uncovered are checkpointed now, not an interval later (a
            # ledger restarted more often than that would otherwise never checkpoint), and
            # into the file before any producer needs the broker: a broker away at the
            # restart does not leave them uncovered.
            made = await asyncio.to_thread(self._checkpoint, store, signer)
            await letters.start()
            witness = Witness((await start_control_producer(self.settings))[0], self.settings)
            await witness.publish(made)
            dead = DeadLetterSink(
                self.settings,
                # a letter its batch could not deliver waits out a broker outage
                Sender(letters, OutageLimit(self.settings.broker_outage_limit_s)).send,
                self.name,
                send_many=producer_batches(letters),
            )
            names = [self.settings.topic(t.name) for t in topics.LEDGERED]
            consumer = make_consumer(
                self.settings,
                *names,
                group_id=self.svc.group_id,
                control=True,
                max_poll_records=self.svc.max_batch,
            )
            await consumer.start()
            self.status = "ok"
            log.info(
                "started",
                bootstrap=self.settings.kafka_bootstrap,
                store=store.url,
                checkpoints=str(self.checkpoint_file.path),
            )
            await self._consume(consumer, store, signer, dead, witness)
        finally:
            if consumer is not None:
                await consumer.stop()
            if self.status == "ok":
                final = self._checkpoint(store, signer, final=True)
                if witness is not None:  # the file has it; a broker gone is said, not waited
                    await witness.publish(final, timeout_s=5.0)
            if witness is not None:
                await witness.producer.stop()
            await letters.stop()
            store.close()
            log.info("stopped", **self.counts)

    async def _consume(
        self,
        consumer: Any,
        store: LedgerStore,
        signer: Signer,
        dead: DeadLetterSink,
        witness: Witness,
    ) -> None:
        loop = asyncio.get_running_loop()
        held: dict[TopicPartition, list[Any]] = {}
        refused: list[Rejected] = []
        retry_at = 0.0
        backoff = self.svc.retry_initial_s
        limit = OutageLimit(self.settings.broker_outage_limit_s)
        consumed = metrics.Consumption(self.name)
        while True:
            limit.check()  # a broker away: getmany returns nothing, until the limit
            batches = await consumer.getmany(timeout_ms=200, max_records=self.svc.max_batch)
            consumed.took(consumer, batches)
            if not self.ready.is_set() and consumer.assignment():
                self.ready.set()
            for tp, records in batches.items():
                held.setdefault(tp, []).extend(records)
                refused += self._refused(tp.topic, records)
            if held and loop.time() >= retry_at:
                incoming = [
                    Incoming(r.topic, r.partition, r.offset, r.value)
                    for records in held.values()
                    for r in records
                ]
                try:
                    added = await asyncio.to_thread(store.append, incoming)
                except LedgerError as exc:
                    # Hold the batch, stop fetching, keep polling so the group keeps us.
                    consumer.pause(*consumer.assignment())
                    self.counts["store_failures"] += 1
                    retry_at, backoff = (
                        loop.time() + backoff,
                        min(backoff * 2, self.svc.retry_max_s),
                    )
                    if self.status != "stalled":
                        log.error("store_failed", reason=str(exc), held=len(incoming))
                    else:
                        log.warning("store_still_failing", reason=str(exc), held=len(incoming))
                    self.status, self.stall_reason = "stalled", str(exc)
                    continue
                self.counts["appended"] += added
                metrics.LEDGER_ENTRIES.inc(added)
                self.counts["redelivered"] += len(incoming) - added
                await dead.reject_all(refused)
                self.counts["dead_letters"] += len(refused)  # once on the topic, not before
                refused = []
                if added and self._uncovered_since is None:
                    self._uncovered_since = loop.time()
                # Only what is stored is committed, and only partitions still ours.
                owned = consumer.assignment()
                offsets = {tp: recs[-1].offset + 1 for tp, recs in held.items() if tp in owned}
                if offsets:
                    await self._commit(consumer, offsets)
                held = {}
                if self.status == "stalled":
                    log.info("store_recovered", appended=added)
                    consumer.resume(*consumer.assignment())
                self.status, self.stall_reason = "ok", ""
                backoff = self.svc.retry_initial_s
            elif held:
                consumer.pause(*consumer.assignment())  # partitions assigned while stalled
            if (
                self._uncovered_since is not None
                and loop.time() - self._uncovered_since >= self.svc.checkpoint_interval_s
            ):
                made = await asyncio.to_thread(self._checkpoint, store, signer)
                await witness.publish(made)
            elif witness.pending and loop.time() >= witness.retry_at:
                await witness.publish()

    async def _commit(self, consumer: Any, offsets: dict[TopicPartition, int]) -> None:
        """Commit what is stored. A broker away long enough for the group to move on refuses
        it: the batch comes again and is stored once (entries are unique by identity)."""
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            self.counts["commits_failed"] += 1
            log.warning("commit_failed", partitions=len(offsets), error=str(exc))

    def _refused(self, topic: str, records: list[Any]) -> list[Rejected]:
        """The records of ``topic`` that are not valid events of it, with why."""
        spec = topics.BY_NAME.get(topic.removeprefix(self.settings.topic_prefix))
        if spec is None:
            return []
        _, rejected = decode_batch(records, spec.event)
        return rejected

    def _checkpoint(
        self, store: LedgerStore, signer: Signer, *, final: bool = False
    ) -> LedgerCheckpoint | None:
        """Sign and keep the head (returned, for the witness); a failure is reported and
        retried at the next interval."""
        try:
            size, head = store.head()
            metrics.LEDGER_HEAD.set(size)  # seq runs 1, 2, ...: the newest entry's is the size
            if size in (0, self._checkpointed_size):  # nothing (new) to vouch for
                self._uncovered_since = None
                return None
            made = sign_checkpoint(signer, size, head, utcnow())
            self.checkpoint_file.append(made)
        except LedgerError as exc:
            self.counts["checkpoint_failures"] += 1
            log.error("checkpoint_failed", reason=str(exc), final=final)
            return None
        self._checkpointed_size = size
        self._uncovered_since = None
        self.counts["checkpoints"] += 1
        # The final one is told by the "stopped" line that follows (one line per service).
        (log.debug if final else log.info)(
            "checkpoint", size=size, head_hash=head[:16], final=final
        )
        return made

    async def _open_store(self) -> LedgerStore:
        """Open the store, retrying with backoff (and saying why) until it answers."""
        backoff = self.svc.retry_initial_s
        while True:
            try:
                return await asyncio.to_thread(LedgerStore, self.settings.resolved_ledger_url)
            except LedgerError as exc:
                self.counts["store_failures"] += 1
                self.status, self.stall_reason = "stalled", str(exc)
                log.error("store_unavailable", reason=str(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.svc.retry_max_s)

    async def _witnessed(self) -> WitnessRead:
        """The witness topic's checkpoints; none when the broker does not answer (said: the
        file alone is then held against the table)."""
        where = self.svc.resolved_checkpoint_trusted_dir(self.settings.state_dir)
        trusted = load_trusted_keys(where) if where.is_dir() else {}
        try:
            return await witnessed(self.settings, trusted)
        except (BrokerUnavailable, KafkaError) as exc:
            log.warning("witness_unread", reason=str(exc)[:300])
            return WitnessRead([])

    async def _refuse_lost_entries(self, store: LedgerStore) -> None:
        """Never extend a chain that is shorter than, or differs from, what was checkpointed.

        A replaced or emptied database would otherwise start over at seq 1 and the loss would
        look like a fresh ledger; wait (saying why) until the right database is back.
        """
        read = await self._witnessed()
        seen = read.checkpoints
        said_missing = False
        while True:
            try:
                own = self.checkpoint_file.read().checkpoints
                mine = {(c.size, c.head_hash) for c in own}
                lost = [c for c in seen if (c.size, c.head_hash) not in mine]
                if lost and not said_missing:  # deleted from the file; the witness has them
                    said_missing = True
                    log.warning(
                        "checkpoints_missing_from_file",
                        file=str(self.checkpoint_file.path),
                        missing=len(lost),
                        largest=max(c.size for c in lost),
                    )
                last = max([*own, *lost], key=lambda c: c.size, default=None)
                problem = None
                if read.untrusted:  # a checkpoint key made afresh over a ledger's history
                    kids = ", ".join(sorted({c.key_id for c in read.untrusted}))
                    problem = (
                        f"the witness topic holds checkpoints of key(s) {kids}, which "
                        f"{self.svc.resolved_checkpoint_trusted_dir(self.settings.state_dir)} "
                        "does not trust: the checkpoint key was replaced; put the old key's "
                        "public half back there"
                    )
                elif last is not None:
                    held = store.hash_at(last.size)
                    if held is None:
                        problem = (
                            f"the ledger has {store.count()} entries but the checkpoint of "
                            f"{last.ts.isoformat()} vouches for {last.size}: restore the database"
                        )
                    elif held != last.head_hash:
                        problem = (
                            f"the hash at seq {last.size} differs from the checkpoint of "
                            f"{last.ts.isoformat()}: the database was replaced or rewritten"
                        )
                    else:
                        self._checkpointed_size = last.size
            except LedgerError as exc:
                problem = str(exc)
            if problem is None:
                return
            self.counts["store_failures"] += 1
            self.status, self.stall_reason = "stalled", problem
            log.error("refusing_to_append", reason=problem, retry_in_s=self.svc.retry_max_s)
            await asyncio.sleep(self.svc.retry_max_s)
