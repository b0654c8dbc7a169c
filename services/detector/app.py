"""Detector service: consumes data topics in batches, keeps windows, publishes breaches.

The high-volume stage, so it is a plain aiokafka getmany loop, not a faust agent. This module
is the wiring and the loop: consumers and producer, the pipelined fetch → parse → fold, commits
and rebalances, and publishing. Folding is ``folding.py``; each detector kind is a module under
``kinds/`` registered in ``kinds.KINDS``; the reference choice, the multiple-testing correction
and the k-of-n sustain have a module each. Latency windows feed the immediate tier (error rate,
latency); prediction, business, health and outcome events feed per-version windows judged by
every other kind against the baseline of the last known-good version (or, without one, the
previous live version's concurrent window). Breaches and captured baselines go out signed with
the detector key; deployments and baselines are acted on only when a trusted key signed them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from rollguard import baselines as bl
from rollguard import metrics, topics
from rollguard.bus import (
    Admission,
    DeadLetterSink,
    Rejected,
    client_options,
    decode_batch,
    make_consumer,
    make_dead_letter_producer,
    make_producer,
    producer_batches,
)
from rollguard.detector_policy import DetectorBase
from rollguard.events import (
    BaselineSnapshot,
    Breach,
    BusinessMetricEvent,
    Counterfactual,
    DriftedInput,
    HealthCheckEvent,
    OutcomeEvent,
    Signed,
    SystemManifest,
    TrafficReport,
)
from rollguard.logs import get_logger
from rollguard.outage import OutageLimit, Sender
from rollguard.policy import ModelPolicy, PolicySet, PolicySource
from rollguard.settings import RollguardSettings
from rollguard.signing import Signer, Trust, TrustSource, signer_of
from rollguard_services.detector import decoding, pooling
from rollguard_services.detector import reference as references
from rollguard_services.detector.counterfactual import Shadowed, counterfactual
from rollguard_services.detector.decoding import (
    PredictionBatch,
    Record,
    decode_latency,
    decode_predictions,
)
from rollguard_services.detector.evaluation import judge_latency, judge_version
from rollguard_services.detector.folding import Folder
from rollguard_services.detector.kinds import KINDS, Resolved
from rollguard_services.detector.kinds.base import AnyKind, Judged, VersionInputs
from rollguard_services.detector.rebalance import Revocations
from rollguard_services.detector.settings import DetectorSettings
from rollguard_services.detector.state import ModelState, VersionSeen, VersionState
from rollguard_services.detector.sustain import publishable
from rollguard_services.detector.traffic import TrafficCounter
from rollguard_services.detector.windows import LatencyWindow, VersionKey, VersionWindow

log = get_logger("rollguard.detector")

Batches = dict[TopicPartition, list[Record]]
Parsed = dict[TopicPartition, decoding.Parsed]
_Signed = TypeVar("_Signed", bound=Signed)


class Detector:
    name = "detector"

    def __init__(
        self,
        settings: RollguardSettings,
        policy: PolicySet | PolicySource,
        detector_settings: DetectorSettings,
        kinds: dict[str, AnyKind] | None = None,
        *,
        signer: Signer | None = None,
        trust: Trust | None = None,
    ) -> None:
        """``kinds``: the detector kinds by name (default: every built-in one, ``KINDS``).
        ``signer`` and ``trust``: the detector key and the keys it trusts (default: loaded from
        the settings when it starts, ``signer_of(settings, "detector")`` and ``trust_of``)."""
        self.settings = settings
        #: Signs every breach and baseline this detector publishes (set at start, before any
        #: is built for publishing).
        self.signer = signer
        self._trust = trust
        #: Deployments and baselines are taken only when signed by a key trusted for them.
        self.admission: Admission | None = None
        self._policy = policy
        self.svc = detector_settings
        self.ready = asyncio.Event()
        self.counts: Counter[str] = Counter()
        self.rng = np.random.default_rng(self.svc.seed)
        self.kinds = Resolved(KINDS if kinds is None else kinds)
        self.folder = Folder(self.svc, policy.for_model, self.kinds, self.rng, self.counts)
        self.folder.on_captured = self._captured
        self.dead_letters: DeadLetterSink | None = None
        #: Breaches, baselines and dead letters wait out a broker outage (None: not running).
        self._producer: Sender | None = None
        self._limit = OutageLimit(settings.broker_outage_limit_s)
        #: Records still to read behind the last folded batch, and how old its newest one is.
        self.lag_records = 0
        self.behind_s = 0.0
        self._lag_said = 0.0
        self._lag: dict[TopicPartition, int] = {}
        self._control: AIOKafkaConsumer | None = None
        self._latency_topic = settings.topic(topics.LATENCY.name)
        self._predictions_topic = settings.topic(topics.PREDICTIONS.name)
        self._business_topic = settings.topic(topics.BUSINESS.name)
        self._health_topic = settings.topic(topics.HEALTH.name)
        self._outcomes_topic = settings.topic(topics.OUTCOMES.name)
        self._deployments_topic = settings.topic(topics.DEPLOYMENTS.name)
        self._baselines_topic = settings.topic(topics.BASELINES.name)
        self._breach_topic = settings.topic(topics.BREACHES.name)
        self._traffic_topic = settings.topic(topics.TRAFFIC.name)
        self.traffic = TrafficCounter(self.svc.traffic_interval_s)
        self._folding = asyncio.Lock()
        self._rejected: list[Rejected] = []
        self.revocations = Revocations(self._folding, settings.rebalance_timeout_ms / 2000)

    # What the detector knows (held by the folder), as tests and benchmarks read it.
    @property
    def models(self) -> dict[str, ModelState]:
        return self.folder.models

    @property
    def versions(self) -> dict[VersionKey, VersionState]:
        return self.folder.versions

    @property
    def seen(self) -> dict[VersionKey, VersionSeen]:
        return self.folder.seen

    @property
    def baselines(self) -> dict[VersionKey, dict[str, BaselineSnapshot]]:
        return self.folder.baselines

    # --- wiring ---------------------------------------------------------------------------

    async def run(self) -> None:
        # Keys before the broker: a missing or unreadable key stops the detector at once.
        if self.signer is None:
            self.signer = signer_of(self.settings, "detector")
        self.admission = Admission(self._trust or TrustSource(self.settings), self.name)
        self.admission.expect("deployer")
        consumer = make_consumer(
            self.settings,
            group_id=self.svc.group_id,
            control=False,
            fetch_max_wait_ms=self.svc.fetch_max_wait_ms,
            max_poll_records=self.svc.max_batch,
        )
        consumer.subscribe(
            [
                self._latency_topic,
                self._predictions_topic,
                self._business_topic,
                self._health_topic,
                self._outcomes_topic,
            ],
            listener=self.revocations,
        )
        # Deployments and baselines are tables every detector needs whole: no group, from the
        # beginning, read to the end before the first data batch.
        control = AIOKafkaConsumer(
            **client_options(self.settings),
            enable_auto_commit=False,
            fetch_max_wait_ms=self.settings.control_fetch_max_wait_ms,
        )
        producer = make_producer(self.settings, control=True)
        # Dead letters have a producer of their own: a flood of them never queues a breach.
        letters = make_dead_letter_producer(self.settings)
        try:
            await producer.start()
            await letters.start()
            await control.start()
            await consumer.start()
            self._producer = Sender(producer, self._limit)
            self._control = control
            self.dead_letters = DeadLetterSink(
                self.settings,
                Sender(letters, self._limit).send,  # a letter the batch could not deliver
                self.name,
                send_many=producer_batches(letters),
            )
            await self._load_tables(control)
            await self._resign_baselines()
            log.info("started", bootstrap=self.settings.kafka_bootstrap, group=self.svc.group_id)
            await self._loop(consumer)
        finally:
            await consumer.stop()
            await control.stop()
            await letters.stop()
            await producer.stop()
            log.info("stopped", **self.counts)

    async def _load_tables(self, control: AIOKafkaConsumer) -> None:
        await control.topics()
        parts = [
            TopicPartition(t, p)
            for t in (self._deployments_topic, self._baselines_topic)
            for p in control.partitions_for_topic(t) or ()
        ]
        control.assign(parts)
        await control.seek_to_beginning()
        if not parts:
            return
        end = await control.end_offsets(parts)
        deadline = time.monotonic() + self.svc.table_load_timeout_s
        while time.monotonic() < deadline:
            positions = {tp: await control.position(tp) for tp in parts}
            if all(positions[tp] >= end[tp] for tp in parts):
                break
            await self._poll_control(100)
        log.info(
            "tables_loaded", baselines=len(self.folder.baselines), models=len(self.folder.models)
        )

    async def _resign_baselines(self) -> None:
        """Sign again, with the key this detector has now, the baselines it keeps that an
        earlier detector key signed (one rotated out and still trusted), and publish them: the
        compacted topic then holds them under the new key, so retiring the old one later
        refuses none of them. Once per start, so detectors never take turns re-signing."""
        trust = self.admission.trust if self.admission is not None else None
        if not self.svc.resign_baselines or self.signer is None or trust is None:
            return
        if self._producer is None:
            return
        stale = [
            s
            for signals in self.folder.baselines.values()
            for s in signals.values()
            if s.key_id != self.signer.key_id
            and trust.keys.get(s.key_id, ("", None))[0] == "detector"
        ]
        if not stale:
            return
        fresh = [self.signer.sign(s) for s in stale]
        for s in fresh:
            self.folder.install_baseline(s)
        await bl.publish(self._producer, self._baselines_topic, fresh)
        log.info("baselines_resigned", baselines=len(fresh), key_id=self.signer.key_id)

    async def _poll_control(self, timeout_ms: int) -> None:
        admission = self.admission
        if self._control is None or admission is None:
            return
        batches = await self._control.getmany(timeout_ms=timeout_ms, max_records=1000)
        for tp, records in batches.items():
            if tp.topic == self._deployments_topic:
                good, rejected = decode_batch(records, SystemManifest)
                trusted, untrusted = admission.admit(good)
                for _, manifest in trusted:
                    self.on_manifest(manifest)
                # Invalid deployments are the decider's to dead-letter, not a second copy here;
                # an untrusted one is refused by each consumer it would have steered.
                self._reject(untrusted)
            else:
                good_b, rejected = decode_batch(records, BaselineSnapshot)
                trusted_b, untrusted = admission.admit(good_b)
                for _, snapshot in trusted_b:
                    self.install_baseline(snapshot)
                # The detector is the only reader of baselines: what it cannot take is kept.
                self._reject(rejected + untrusted)
            self.counts["control_rejected"] += len(rejected)
            self.counts["control_untrusted"] += len(untrusted)

    @property
    def policy(self) -> PolicySet:
        """The policy in force (a PolicySource's current one, reloaded as its files change)."""
        return self._policy.current if isinstance(self._policy, PolicySource) else self._policy

    def _maybe_reload(self) -> None:
        if isinstance(self._policy, PolicySource):
            self._policy.refresh()

    async def _loop(self, consumer: Any) -> None:
        await self.consume(consumer, commit=True)

    async def consume(
        self, consumer: Any, *, commit: bool, stop: Callable[[], bool] = lambda: False
    ) -> None:
        """The hot loop, pipelined: while batch k is folded on the event loop, batch k+1 is
        already fetched and its predictions and latency events are being parsed on a worker
        thread (Arrow parses with the GIL released). Offsets are committed per folded batch only, and a
        batch fetched before a rebalance is not folded (it is fetched again, see Revocations).
        """
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(1, thread_name_prefix="rollguard-parse")
        ahead: tuple[int, Batches, asyncio.Future[Parsed]] | None = None
        try:
            consumed = metrics.Consumption(self.name)
            while not stop():
                self._limit.check()
                self._maybe_reload()
                batches = await consumer.getmany(
                    timeout_ms=0 if ahead else self.svc.poll_timeout_ms,
                    max_records=self.svc.max_batch,
                )
                consumed.took(consumer, batches)
                # Before any other await: a revocation seen later means this batch is stale.
                # (getmany itself waits out a rebalance, so what it returns is current.)
                fetched_at = self.revocations.count
                if not self.ready.is_set() and consumer.assignment():
                    self.ready.set()
                # Let the fetcher send its next fetch before the fold holds the loop.
                await asyncio.sleep(0)
                await self._poll_control(0)
                started = (
                    (
                        fetched_at,
                        batches,
                        loop.run_in_executor(pool, self._parse, self._joined(batches)),
                    )
                    if batches
                    else None
                )
                if ahead is not None:
                    await self._fold_fetched(consumer, *ahead, commit=commit)
                elif started is None:
                    await self.process({})  # nothing fetched: still close idle windows
                ahead = started
        finally:
            if ahead is not None:
                ahead[2].cancel()
            pool.shutdown(wait=False, cancel_futures=True)

    async def _fold_fetched(
        self,
        consumer: Any,
        revocations: int,
        batches: Batches,
        parsing: asyncio.Future[Parsed],
        *,
        commit: bool,
    ) -> None:
        parsed = await parsing
        async with self._folding:
            if revocations != self.revocations.count:
                # Fetched before a rebalance reset the positions: it is fetched again.
                self.counts["batches_refetched"] += 1
                return
            await self.process(batches, parsed)
            self._note_lag(consumer, batches)
            if commit:
                await self._commit(consumer, batches)

    def _note_lag(self, consumer: Any, folded: Batches) -> None:
        """Back-pressure is said, never silent (issue 15): the records still to read behind
        what was just folded (the broker's high watermark), how far behind the newest record
        is, kept for the service's counters and said in a log line at most every 10 s while
        ``lag_warn_records`` or more wait."""
        newest = 0
        for tp, records in folded.items():
            high = consumer.highwater(tp)
            if high is not None:
                self._lag[tp] = max(0, high - (records[-1].offset + 1))
            newest = max(newest, records[-1].timestamp)
        # Every partition we hold, as last seen (a batch may come from only some of them).
        owned = consumer.assignment()
        for tp in [tp for tp in self._lag if tp not in owned]:
            del self._lag[tp]
        lag = sum(self._lag.values())
        now = time.time()
        self.lag_records = lag
        self.behind_s = max(0.0, now - newest / 1000) if newest > 0 else 0.0
        if lag >= self.svc.lag_warn_records and now >= self._lag_said + 10:
            self._lag_said = now
            self.counts["lag_warnings"] += 1
            log.warning(
                "falling_behind",
                lag_records=lag,
                behind_s=round(self.behind_s, 1),
                hint="breaches wait behind this backlog; add partitions and detector "
                "processes, or see docs/detectors.md for what one process takes",
            )

    async def _commit(self, consumer: Any, folded: Batches) -> None:
        """Commit what was folded. A partition taken away by a rebalance meanwhile is not
        ours to commit: its new owner reads that batch again (at least once)."""
        assigned = consumer.assignment()
        offsets = {tp: rs[-1].offset + 1 for tp, rs in folded.items() if tp in assigned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            self.counts["commits_failed"] += 1
            log.warning("commit_failed", error=str(exc), partitions=len(offsets))

    def _joined(self, batches: Batches) -> dict[TopicPartition, decoding.Joined]:
        strings = {
            self._predictions_topic: decoding.PREDICTION_STRINGS,
            self._latency_topic: decoding.LATENCY_STRINGS,
        }
        return {
            tp: decoding.join_values(records, strings[tp.topic])
            for tp, records in batches.items()
            if tp.topic in strings
        }

    @staticmethod
    def _parse(joined: dict[TopicPartition, decoding.Joined]) -> Parsed:
        """Parse joined predictions and latency events (on the worker thread: Arrow, with
        the GIL released)."""
        return {tp: decoding.parse_joined(j) for tp, j in joined.items()}

    async def process(self, batches: Batches, parsed: Parsed | None = None) -> None:
        """Fold one getmany result in, close windows, publish breaches (the whole hot path).

        ``parsed``: its predictions already parsed (``_parse``), else they are parsed here.
        """
        # The immediate tier first (issue 15): latency windows are folded, closed and judged,
        # and their breaches published, before any prediction of the batch is folded.
        closed: list[LatencyWindow] = []
        for tp, records in batches.items():
            if tp.topic == self._latency_topic:
                ready = parsed.get(tp) if parsed is not None else None
                batch, rejected = decode_latency(records, ready)
                self.counts["latency_events"] += len(batch)
                self.counts[f"latency_batches_{batch.path}"] += 1
                closed += self.folder.fold_latency(batch, time.time(), rejected)
                self._reject(rejected)
        closed += self.folder.latency_windows.close_idle(time.time())
        for window in closed:
            self.traffic.add_latency(window)
            await self.publish(self.judge(window))
        # Predictions before outcomes, so an outcome fetched with its prediction joins it.
        for tp, records in sorted(batches.items(), key=lambda kv: self._topic_order(kv[0].topic)):
            ready = parsed.get(tp) if parsed is not None else None
            if tp.topic == self._latency_topic:
                continue  # folded above
            elif tp.topic == self._predictions_topic:
                await self.fold_predictions(*decode_predictions(records, ready))
            elif tp.topic == self._business_topic:
                good_b, rejected = decode_batch(records, BusinessMetricEvent)
                business = self.folder.refuse_skewed_events(good_b, time.time(), rejected)
                self._reject(rejected)
                self.counts["business_events"] += len(business)
                self.folder.fold_business(business, time.time())
            elif tp.topic == self._health_topic:
                good_h, rejected = decode_batch(records, HealthCheckEvent)
                health = self.folder.refuse_skewed_events(good_h, time.time(), rejected)
                self._reject(rejected)
                self.counts["health_events"] += len(health)
                self.folder.fold_health(health, time.time())
            elif tp.topic == self._outcomes_topic:
                good_o, rejected = decode_batch(records, OutcomeEvent)
                self._reject(rejected)
                self.counts["outcome_events"] += len(good_o)
                self.folder.fold_outcomes([e for _, e in good_o])
        now = time.time()
        closed_versions = self.folder.version_windows.close_ready(now)
        closed_shadows = self.folder.shadow_windows.close_ready(now)
        self.folder.forget_quiet(now)
        for sw in closed_shadows:  # before the live windows their breaches compare with
            self.measure_shadow(sw)
        for vw in closed_versions:
            self.traffic.add_predictions(vw)
            await self.publish(self.close_version_window(vw))
        await self.report_traffic(self.traffic.due(time.monotonic()))
        # Dead letters after the breaches (under a flood they are most of a batch's work), and
        # on the topic before the batch is committed.
        rejected, self._rejected = self._rejected, []
        if self.dead_letters is not None:
            await self.dead_letters.reject_all(rejected)
        self.counts["dead_letters"] += len(rejected)  # counted once on the topic

    def _topic_order(self, topic: str) -> int:
        order = (self._latency_topic, self._predictions_topic, self._business_topic)
        return order.index(topic) if topic in order else len(order)

    async def publish(self, breaches: Iterable[Breach]) -> None:
        for breach in breaches:
            if self._producer is not None:
                await self._producer.send_and_wait(
                    self._breach_topic, breach.encode(), key=breach.key
                )
            self.counts["breaches"] += 1
            self.counts[f"breaches_{breach.tier}"] += 1
            metrics.BREACHES.labels(breach.detector, breach.tier).inc()
            log.warning(
                "breach",
                model_id=breach.model_id,
                model_version=breach.model_version,
                detector=breach.detector,
                signal=breach.signal,
                value=round(breach.value, 4),
                threshold=breach.threshold,
                n=breach.n,
                tier=breach.tier,
            )

    async def report_traffic(self, reports: list[TrafficReport]) -> None:
        """Each version's traffic of the last interval, signed, on topics.TRAFFIC."""
        if self._producer is not None and reports:
            producer = self._producer
            await asyncio.gather(
                *(
                    producer.send_and_wait(self._traffic_topic, r.encode(), key=r.key)
                    for r in map(self._sign, reports)
                )
            )
        self.counts["traffic_reports"] += len(reports)

    def _reject(self, rejected: list[Rejected]) -> None:
        """Keep ``rejected`` for the dead-letter topic (sent at the end of ``process``)."""
        self._rejected += rejected

    # --- control tables -------------------------------------------------------------------

    def on_manifest(self, manifest: SystemManifest) -> None:
        self.folder.on_manifest(manifest, time.time())

    def install_baseline(self, snapshot: BaselineSnapshot) -> None:
        self.folder.install_baseline(snapshot)

    def _sign(self, event: _Signed) -> _Signed:
        """``event`` signed with the detector key; as built when there is none yet (a
        detector that is not running publishes nothing)."""
        return event if self.signer is None else self.signer.sign(event)

    def _captured(self, key: VersionKey, captured: list[BaselineSnapshot]) -> None:
        # Signed once, here: what is installed, published and any re-send are the same bytes.
        snapshots = [self._sign(s) for s in captured]
        for s in snapshots:
            self.folder.install_baseline(s)
        log.info("baseline_captured", model_id=key[0], model_version=key[1], signals=len(snapshots))
        if self._producer is not None:
            task = asyncio.ensure_future(
                bl.publish(self._producer, self._baselines_topic, snapshots)
            )
            task.add_done_callback(_log_failure)

    # --- predictions -----------------------------------------------------------------------

    async def fold_predictions(self, batch: PredictionBatch, rejected: list[Rejected]) -> None:
        """Fold a decoded batch (``decode_predictions``, which may run on another thread)."""
        now = time.time()
        unknown = await self._unknown_versions(list(batch.groups))
        fine = self.folder.none_skewed(batch, {key[0] for key in batch.groups}, now)
        for key, rows in batch.groups.items():
            if key in unknown:
                rejected += [
                    Rejected(
                        batch.records[i],
                        "invalid",
                        f"model_version: {key[1]!r} has no manifest for model {key[0]!r}",
                    )
                    for i in rows.tolist()
                ]
                continue
            served, shadow = batch.split_shadow(rows)
            if len(served):
                self.folder.fold_version(key, batch, served, rejected, now, clocks_fine=fine)
            if len(shadow):
                self.folder.fold_version(
                    key, batch, shadow, rejected, now, shadow=True, clocks_fine=fine
                )
                self.counts["shadow_predictions"] += len(shadow)
        self.counts["prediction_events"] += len(batch)
        self.counts[f"prediction_batches_{batch.path}"] += 1
        self._reject(rejected)

    async def _unknown_versions(self, keys: list[VersionKey]) -> set[VersionKey]:
        """Versions of models with manifests that have none themselves (dead letters). Models
        never registered are accepted: nothing to check them against. The manifests may be on
        their way on the other consumer: it is read once more, briefly, once per batch (per
        unknown version, a flood of made-up versions held the loop 50 ms each)."""

        def unknown() -> set[VersionKey]:
            models = self.folder.models
            return {
                k
                for k in keys
                if (model := models.get(k[0])) is not None
                and model.registered
                and k[1] not in model.registered
            }

        if not unknown():
            return set()
        await self._poll_control(self.svc.unknown_version_wait_ms)
        return unknown()

    # --- evaluation of closed windows ----------------------------------------------------------

    def judge(self, window: LatencyWindow) -> list[Breach]:
        """The latency window's kinds; one Breach per measurement in phase ``breach``. A
        window short of their min_events is pooled with the next (pooling.pooled)."""
        configs = self.folder.configs(window.model_id)
        key = (window.model_id, window.model_version)
        state = self.folder.version(key)
        need = pooling.needed(configs, self.kinds, latency=True)
        max_s = self.policy.for_model(window.model_id).window.max_seconds
        ready, state.held_latency = pooling.pooled(state.held_latency, window, need, max_s)
        if ready is None:
            self.counts["latency_windows_pooled"] += 1
            return []
        found = judge_latency(ready, configs, self.kinds)
        return [
            self._breach(key, ready.system_version, ready.start, ready.end, j)
            for j in publishable(found, state.sustain)
        ]

    def reference(self, window: VersionWindow) -> references.Reference:
        f = self.folder
        model = f.models.get(window.model_id, ModelState())
        return references.choose(window, model, f.baselines, f.versions, f.version_windows)

    def close_version_window(self, window: VersionWindow) -> list[Breach]:
        """A closed prediction window's kinds. One short of the events its tests need is
        pooled with the version's next windows and judged once the pool has them
        (pooling.pooled); the immediate tier's kinds, and those that measure what they keep
        across windows (ground truth), run on every window all the same."""
        state = self.folder.version(window.key)
        model = self.folder.model(window.model_id)
        policy = self.policy.for_model(window.model_id)
        configs = self.folder.configs(window.model_id)
        every, pooled_kinds = pooling.split(configs, self.kinds)
        need = pooling.needed(pooled_kinds, self.kinds, latency=False)
        max_s = policy.window.max_seconds
        breaches: list[Breach] = []
        if state.held is None and (pooling.events(window) >= need or window.seconds >= max_s):
            # Enough on its own: one evaluation of every kind (rapid ones on the span), as ever.
            span = self._span(state, window)
            breaches += self._evaluate(window, span, configs, state, model, policy)
            fix_grids(model, window)
            return breaches
        if every:
            # The kinds run on every window are judged before the window joins the pool
            # (which takes its unfolded rows along).
            breaches += self._evaluate(window, [window], every, state, model, policy)
        ready, state.held = pooling.pooled(state.held, window, need, max_s)
        if ready is None:
            self.counts["windows_pooled"] += 1
        elif pooled_kinds:
            span = self._span(state, ready)
            breaches += self._evaluate(ready, span, pooled_kinds, state, model, policy)
            fix_grids(model, ready)
        return breaches

    def _span(self, state: VersionState, window: VersionWindow) -> list[VersionWindow]:
        """The rapid span ending with ``window``, now one of the version's recent windows."""
        state.recent.append(window)
        return list(state.recent)[-self.svc.rapid_span_windows :]

    def _judged(
        self,
        window: VersionWindow,
        span: list[VersionWindow],
        configs: dict[str, DetectorBase],
        state: VersionState,
        reference: references.Reference,
        policy: ModelPolicy,
    ) -> list[Judged]:
        inputs = VersionInputs(window, span, state, reference, self.rng)
        return judge_version(inputs, configs, self.kinds, policy.false_alarm.correction)

    def _evaluate(
        self,
        window: VersionWindow,
        span: list[VersionWindow],
        configs: dict[str, DetectorBase],
        state: VersionState,
        model: ModelState,
        policy: ModelPolicy,
    ) -> list[Breach]:
        judged = self._judged(window, span, configs, state, self.reference(window), policy)
        self.counts["evaluations"] += 1
        for j in judged:
            metrics.EVALUATIONS.labels(j.instance, j.tier).inc()
        drifted = input_drift(judged)
        return [
            self._breach(
                window.key,
                window.system_version,
                span[0].start,
                window.end,
                j,
                drifted,
                counterfactual(model.shadowed, window.model_version, window.end, j),
            )
            for j in publishable(judged, state.sustain)
        ]

    def measure_shadow(self, window: VersionWindow) -> None:
        """A closed window of a version's shadow predictions, measured against that version's
        own baseline and kept for the live version's next breaches: never a breach itself."""
        reference = self.reference(window)
        if not reference.source.startswith("baseline:"):
            self.counts["shadow_windows_without_baseline"] += 1
            return
        state = self.folder.version(window.key, shadow=True)
        configs = self.folder.configs(window.model_id)
        policy = self.policy.for_model(window.model_id)
        span = self._span(state, window)
        judged = self._judged(window, span, configs, state, reference, policy)
        model = self.folder.model(window.model_id)
        model.shadowed = Shadowed.of(window.model_version, window.end, window.seconds, judged)
        self.counts["shadow_windows"] += 1

    def _breach(
        self,
        key: VersionKey,
        system_version: str | None,
        start: float,
        end: float,
        j: Judged,
        drifted: list[DriftedInput] | None = None,
        shadow: Counterfactual | None = None,
    ) -> Breach:
        m = j.measurement
        seen = self.folder.seen.get(key)
        p_value = None if m.p_value is None else min(1.0, max(0.0, m.p_value))
        breach = Breach(
            model_id=key[0],
            model_version=key[1],
            system_version=system_version,
            detector=j.instance,
            kind=m.detector,
            signal=m.signal,
            statistic=m.statistic,
            value=m.value,
            p_value=p_value,
            threshold=m.threshold,
            window_start=datetime.fromtimestamp(start, UTC),
            window_end=datetime.fromtimestamp(end, UTC),
            n=m.n,
            tier=j.tier,
            sustain=j.sustain,
            # What the decider needs for MTTD (first event → breach) and blast radius.
            version_first_event_ts=None
            if seen is None
            else datetime.fromtimestamp(seen.first_ts, UTC),
            version_events=None if seen is None else seen.events,
            evidence=dict(m.evidence),
            input_drift=drifted or [],
            counterfactual=shadow,
        )
        # Signed where it is built: a send made again after an outage is the same bytes.
        return self._sign(breach)


#: The kinds whose breach of a ``feature:*`` signal is input drift.
DRIFT_KINDS = frozenset({"ks", "psi"})


def input_drift(judged: list[Judged], limit: int = 64) -> list[DriftedInput]:
    """The input features past their drift threshold in this window, sustained or not (the
    data-shift rule needs the inputs' state now), most significant first."""
    found = [
        j
        for j in judged
        if j.measurement.detector in DRIFT_KINDS
        and j.measurement.signal.startswith("feature:")
        and j.measurement.phase == "breach"
    ]
    found.sort(
        key=lambda j: (
            1.0 if j.measurement.p_value is None else j.measurement.p_value,
            -j.measurement.value,
        )
    )
    by_signal: dict[str, DriftedInput] = {}
    for j in found:
        m = j.measurement
        by_signal.setdefault(
            m.signal,
            DriftedInput(
                signal=m.signal,
                detector=j.instance,
                statistic=m.statistic,
                value=m.value,
                p_value=None if m.p_value is None else min(1.0, max(0.0, m.p_value)),
            ),
        )
    return list(by_signal.values())[:limit]


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("baseline_publish_failed", error=str(task.exception()))


def fix_grids(model: ModelState, window: VersionWindow) -> None:
    """A signal with no baseline yet gets the model's grid from its first sample of 50."""
    for signal, acc in window.numeric.items():
        sample = acc.reservoir.values()
        if signal not in model.grids and len(sample) >= 50:
            model.grids[signal] = bl.grid_from_sample(sample)
