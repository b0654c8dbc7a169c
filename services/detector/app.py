"""Detector service: consumes data topics in batches, keeps windows, publishes breaches.

The high-volume stage, so it is a plain aiokafka getmany loop, not a faust agent. Latency
windows feed the immediate tier (error rate, latency); prediction, business, health and
outcome events feed per-version windows judged by every other detector kind against the
baseline of the last known-good version (or, without one, the previous live version's
concurrent window).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from rollguard import baselines as bl
from rollguard import topics
from rollguard.bus import (
    DeadLetterSink,
    Rejected,
    client_options,
    decode_batch,
    make_consumer,
    make_producer,
    producer_send,
)
from rollguard.detector_policy import (
    BusinessMetricConfig,
    CostConfig,
    ErrorRateConfig,
    FairnessConfig,
    FeatureQualityConfig,
    GroundTruthConfig,
    HealthConfig,
    KsConfig,
    LatencyConfig,
    PsiConfig,
)
from rollguard.events import (
    BaselineSnapshot,
    Breach,
    BusinessMetricEvent,
    HealthCheckEvent,
    OutcomeEvent,
    SystemManifest,
)
from rollguard.logs import get_logger
from rollguard.policy import ModelPolicy, PolicySet, PolicySource
from rollguard.settings import RollguardSettings
from rollguard_services.detector import decoding, detectors
from rollguard_services.detector.decoding import (
    Column,
    PredictionBatch,
    decode_latency,
    decode_predictions,
    take,
)
from rollguard_services.detector.evaluation import (
    CategoricalView,
    Judged,
    NumericView,
    Sustain,
    confirm_ks,
    correct,
    publishable,
    run_ks,
    run_psi,
)
from rollguard_services.detector.join import PendingJoin, Waiting
from rollguard_services.detector.settings import DetectorSettings
from rollguard_services.detector.windows import (
    CategoricalAccumulator,
    LatencyWindow,
    LatencyWindows,
    MetricSums,
    NumericAccumulator,
    Reservoir,
    VersionKey,
    VersionWindow,
    VersionWindows,
)

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
        return None


from rollguard_services.detector.decoding import Record  # noqa: E402

Batches = dict[TopicPartition, list[Record]]
Parsed = dict[TopicPartition, decoding.Parsed]


@dataclass
class VersionSeen:
    """Since when, and how much, a model version has sent (for MTTD and blast radius)."""

    first_ts: float
    events: int = 0
    last_wall: float = 0.0


@dataclass
class Capture:
    """A baseline being captured from a version just marked known good."""

    window: VersionWindow
    started_wall: float


@dataclass
class VersionState:
    recent: deque[VersionWindow]
    sustain: Sustain
    consecutive_failures: int = 0
    drift: detectors.DriftState = field(default_factory=detectors.DriftState)
    capture: Capture | None = None
    # Error-rate fairness: segment feature -> label -> [outcomes joined, errors] since the
    # version's last evaluation.
    outcome_segments: dict[str, dict[str, list[int]]] = field(default_factory=dict)


@dataclass
class ModelState:
    """What the detector knows of one model: its versions, grids, feature kinds, join state."""

    registered: set[str] = field(default_factory=set)
    known_good: list[str] = field(default_factory=list)
    live: str | None = None
    previous_live: str | None = None
    grids: dict[str, bl.Grid] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # signal -> numeric / categorical
    features: frozenset[str] | None = None
    pending: PendingJoin = field(default_factory=PendingJoin)  # waiting for their outcome


@dataclass(frozen=True)
class NumericRef:
    grid: bl.Grid | None
    counts: npt.NDArray[np.int64] | None
    sample: npt.NDArray[np.float64]


@dataclass
class Reference:
    """What a window is compared with: a baseline snapshot set or a concurrent window."""

    source: str  # baseline:<version> / concurrent:<version> / none
    numeric: dict[str, NumericRef] = field(default_factory=dict)
    categorical: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics: dict[str, tuple[float, float | None, float | None]] = field(default_factory=dict)


class Detector:
    name = "detector"

    def __init__(
        self,
        settings: RollguardSettings,
        policy: PolicySet | PolicySource,
        detector_settings: DetectorSettings,
    ) -> None:
        self.settings = settings
        self._policy = policy
        self.svc = detector_settings
        self.ready = asyncio.Event()
        self.windows = LatencyWindows(lambda model_id: policy.for_model(model_id).window)
        self.version_windows = VersionWindows(
            lambda model_id: policy.for_model(model_id).window,
            self.svc.window_events,
            self.svc.lateness_s,
            self.svc.idle_close_s,
        )
        self.counts: Counter[str] = Counter()
        self.seen: dict[VersionKey, VersionSeen] = {}
        self.models: dict[str, ModelState] = {}
        self.versions: dict[VersionKey, VersionState] = {}
        self.baselines: dict[VersionKey, dict[str, BaselineSnapshot]] = {}
        self.rng = np.random.default_rng(self.svc.seed)
        self.dead_letters: DeadLetterSink | None = None
        self._producer: Any = None
        self._control: AIOKafkaConsumer | None = None
        self._latency_topic = settings.topic(topics.LATENCY.name)
        self._predictions_topic = settings.topic(topics.PREDICTIONS.name)
        self._business_topic = settings.topic(topics.BUSINESS.name)
        self._health_topic = settings.topic(topics.HEALTH.name)
        self._outcomes_topic = settings.topic(topics.OUTCOMES.name)
        self._deployments_topic = settings.topic(topics.DEPLOYMENTS.name)
        self._baselines_topic = settings.topic(topics.BASELINES.name)
        self._breach_topic = settings.topic(topics.BREACHES.name)
        self._folding = asyncio.Lock()
        self.revocations = Revocations(self._folding, settings.rebalance_timeout_ms / 2000)

    # --- wiring ---------------------------------------------------------------------------

    async def run(self) -> None:
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
        try:
            await producer.start()
            await control.start()
            await consumer.start()
            self._producer = producer
            self._control = control
            self.dead_letters = DeadLetterSink(self.settings, producer_send(producer), self.name)
            await self._load_tables(control)
            log.info("started", bootstrap=self.settings.kafka_bootstrap, group=self.svc.group_id)
            await self._loop(consumer)
        finally:
            await consumer.stop()
            await control.stop()
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
        log.info("tables_loaded", baselines=len(self.baselines), models=len(self.models))

    async def _poll_control(self, timeout_ms: int) -> None:
        if self._control is None:
            return
        batches = await self._control.getmany(timeout_ms=timeout_ms, max_records=1000)
        for tp, records in batches.items():
            if tp.topic == self._deployments_topic:
                good, rejected = decode_batch(records, SystemManifest)
                for _, manifest in good:
                    self.on_manifest(manifest)
            else:
                good_b, rejected = decode_batch(records, BaselineSnapshot)
                for _, snapshot in good_b:
                    self.install_baseline(snapshot)
            self.counts["control_rejected"] += len(rejected)

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
            while not stop():
                self._maybe_reload()
                batches = await consumer.getmany(
                    timeout_ms=0 if ahead else self.svc.poll_timeout_ms,
                    max_records=self.svc.max_batch,
                )
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
            if commit:
                await self._commit(consumer, batches)

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
        closed: list[LatencyWindow] = []
        # Predictions before outcomes, so an outcome fetched with its prediction joins it.
        for tp, records in sorted(batches.items(), key=lambda kv: self._topic_order(kv[0].topic)):
            ready = parsed.get(tp) if parsed is not None else None
            if tp.topic == self._latency_topic:
                closed += await self._fold_latency(records, ready)
            elif tp.topic == self._predictions_topic:
                await self.fold_predictions(*decode_predictions(records, ready))
            elif tp.topic == self._business_topic:
                await self._fold_business(records)
            elif tp.topic == self._health_topic:
                await self._fold_health(records)
            elif tp.topic == self._outcomes_topic:
                await self._fold_outcomes(records)
        now = time.time()
        closed += self.windows.close_idle(now)
        closed_versions = self.version_windows.close_ready(now)
        self._forget_quiet_versions(now)
        for window in closed:
            await self.publish(self.judge(window))
        for vw in closed_versions:
            await self.publish(self.close_version_window(vw))

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

    async def _reject(self, rejected: list[Rejected]) -> None:
        self.counts["dead_letters"] += len(rejected)
        if self.dead_letters is not None:
            await self.dead_letters.reject_all(rejected)

    # --- control tables -------------------------------------------------------------------

    def on_manifest(self, manifest: SystemManifest) -> None:
        """Track versions; a version newly marked known good starts a baseline capture."""
        model = self.models.setdefault(manifest.model_id, ModelState())
        version = manifest.model_version
        model.registered.add(version)
        if manifest.serving and model.live != version:
            model.previous_live, model.live = model.live, version
        if manifest.status == "known_good":
            if version in model.known_good:
                model.known_good.remove(version)
            model.known_good.append(version)
            key = (manifest.model_id, version)
            state = self._version(key)
            if key not in self.baselines and state.capture is None:
                now = time.time()
                state.capture = Capture(
                    VersionWindow(manifest.model_id, version, manifest.system_version, now, 0.0),
                    now,
                )
                log.info("baseline_capture_started", model_id=key[0], model_version=key[1])
        elif manifest.status == "rolled_back" and version in model.known_good:
            model.known_good.remove(version)

    def install_baseline(self, snapshot: BaselineSnapshot) -> None:
        if snapshot.checksum and snapshot.checksum != bl.checksum(snapshot):
            self.counts["baselines_bad_checksum"] += 1
            log.warning("baseline_bad_checksum", model_id=snapshot.model_id, signal=snapshot.signal)
            return
        key = (snapshot.model_id, snapshot.model_version)
        self.baselines.setdefault(key, {})[snapshot.signal] = snapshot
        model = self.models.setdefault(snapshot.model_id, ModelState())
        if snapshot.bin_edges:
            model.grids[snapshot.signal] = _grid_of(snapshot)
            model.kinds.setdefault(snapshot.signal, "numeric")
        elif snapshot.categories:
            model.kinds.setdefault(snapshot.signal, "categorical")
        state = self.versions.get(key)
        if state is not None:
            state.capture = None
        self.counts["baselines"] += 1

    # --- latency (immediate tier) -----------------------------------------------------------

    async def _fold_latency(
        self, records: list[Record], parsed: decoding.Parsed | None
    ) -> list[LatencyWindow]:
        batch, rejected = decode_latency(records, parsed)
        await self._reject(rejected)
        self.counts["latency_events"] += len(batch)
        self.counts[f"latency_batches_{batch.path}"] += 1
        closed: list[LatencyWindow] = []
        now = time.time()
        for key, rows in batch.groups.items():
            self._saw(key, float(batch.ts[rows[0]]), len(rows), now)
            closed += self.windows.add(
                key,
                batch.system_version_of(int(rows[-1])),
                batch.ts[rows],
                batch.latency_ms[rows],
                batch.errors[rows],
            )
        return closed

    def _saw(self, key: VersionKey, first_ts: float, n: int, now: float) -> None:
        seen = self.seen.setdefault(key, VersionSeen(first_ts))
        seen.events += n
        seen.last_wall = now

    def _forget_quiet_versions(self, now: float) -> None:
        """Versions that stopped sending are forgotten after a TTL: state stays bounded."""
        quiet = [k for k, v in self.seen.items() if now - v.last_wall > self.svc.version_ttl_s]
        for key in quiet:
            del self.seen[key]
            self.versions.pop(key, None)
            self.version_windows.drop(key)
        for model in self.models.values():
            self.counts["join_expired"] += model.pending.expire(now, self._join_ttl(model))

    def judge(self, window: LatencyWindow) -> list[Breach]:
        """Run the latency window's detectors; one Breach per measurement in phase ``breach``."""
        policy = self.policy.for_model(window.model_id)
        found: list[Judged] = []
        for name, config in policy.detectors.items():
            if not config.enabled:
                continue
            if isinstance(config, ErrorRateConfig):
                m = detectors.error_rate(
                    window.errors,
                    window.n,
                    threshold=config.threshold,
                    min_events=config.min_events,
                    confidence=config.confidence,
                )
            elif isinstance(config, LatencyConfig):
                m = detectors.latency(
                    window.counts,
                    sla_ms=config.sla_ms,
                    p99_multiplier=config.p99_multiplier,
                    min_events=config.min_events,
                )
            else:
                continue
            found.append(Judged(name, config.tier, m))
        key = (window.model_id, window.model_version)
        sustain = self._version(key).sustain
        return [
            self._breach(key, window.system_version, window.start, window.end, j)
            for j in publishable(found, sustain)
        ]

    def _breach(
        self, key: VersionKey, system_version: str | None, start: float, end: float, j: Judged
    ) -> Breach:
        m = j.measurement
        seen = self.seen.get(key)
        p_value = None if m.p_value is None else min(1.0, max(0.0, m.p_value))
        return Breach(
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
        )

    # --- predictions -----------------------------------------------------------------------

    def _version(self, key: VersionKey) -> VersionState:
        state = self.versions.get(key)
        if state is None:
            policy = self.policy.for_model(key[0])
            state = self.versions[key] = VersionState(
                deque(maxlen=max(self.svc.rapid_span_windows, 2)), Sustain.of(policy.false_alarm)
            )
        return state

    async def fold_predictions(self, batch: PredictionBatch, rejected: list[Rejected]) -> None:
        """Fold a decoded batch (``decode_predictions``, which may run on another thread)."""
        now = time.time()
        for key, rows in batch.groups.items():
            if not await self._known_version(key):
                rejected += [
                    Rejected(
                        batch.records[i],
                        "invalid",
                        f"model_version: {key[1]!r} has no manifest for model {key[0]!r}",
                    )
                    for i in rows.tolist()
                ]
                continue
            self._fold_version(key, batch, rows, rejected, now)
        self.counts["prediction_events"] += len(batch)
        self.counts[f"prediction_batches_{batch.path}"] += 1
        await self._reject(rejected)

    async def _known_version(self, key: VersionKey) -> bool:
        """A version of a model with manifests must have one itself (unknown: dead letter).
        Models never registered are accepted: nothing to check them against."""
        model = self.models.get(key[0])
        if model is None or not model.registered or key[1] in model.registered:
            return True
        # The manifest may be on its way on the other consumer: look once more, briefly.
        await self._poll_control(self.svc.unknown_version_wait_ms)
        return key[1] in model.registered

    def _fold_version(
        self,
        key: VersionKey,
        batch: PredictionBatch,
        rows: npt.NDArray[np.intp],
        rejected: list[Rejected],
        now: float,
    ) -> None:
        model = self.models.setdefault(key[0], ModelState())
        columns, bad = self._columns(model, batch, rows)
        if bad:
            rejected += [
                Rejected(batch.records[int(rows[i])], "invalid", reason)
                for i, reason in bad.items()
            ]
            keep = np.ones(len(rows), dtype=np.bool_)
            keep[list(bad)] = False
            if not keep.any():
                return
            rows = rows[keep]
            kept = np.flatnonzero(keep)
            columns = {s: take(c, kept) for s, c in columns.items()}
        ts = batch.ts[rows]
        self._saw(key, float(ts[0]), len(rows), now)
        policy = self.policy.for_model(key[0])
        self._remember_for_join(model, key[1], policy, batch.request_ids(rows), columns, now)
        state = self._version(key)
        if state.capture is not None:
            self._fold_columns(state.capture.window, columns, slice(None), policy)
            self._check_capture(key, state, now)
        system_version = batch.system_version_of(int(rows[0]))
        for window, sel in self.version_windows.spans(key, system_version, ts, now, counted=True):
            self._fold_columns(window, columns, sel, policy)

    def _columns(
        self, model: ModelState, batch: PredictionBatch, rows: npt.NDArray[np.intp]
    ) -> tuple[dict[str, Column], dict[int, str]]:
        """Signal columns of one version's rows, and the rows that are bad input (with why).

        Numeric columns are float arrays (NaN = null); categorical ones lists of str | None.
        A signal's kind is fixed by the first value the model sends (or by its baseline).
        Keys of ``bad`` are positions within ``rows``.
        """
        bad: dict[int, str] = {}
        columns: dict[str, Column] = {}
        columns["prediction"] = self._column(
            model, "prediction", take(batch.prediction, rows), bad, "prediction"
        )
        if model.features is None:
            first = batch.feature_names(int(rows[0]))
            if first:
                model.features = first
        for name in sorted(model.features or ()):
            for i in batch.lacking(name, rows).tolist():
                bad.setdefault(i, f"features.{name}: missing (the model sends it)")
            raw = take(batch.features[name], rows) if name in batch.features else None
            columns[f"feature:{name}"] = (
                np.full(len(rows), np.nan)
                if raw is None
                else self._column(model, f"feature:{name}", raw, bad, f"features.{name}")
            )
        return columns, bad

    def _column(
        self, model: ModelState, signal: str, raw: Column, bad: dict[int, str], field_: str
    ) -> Column:
        if isinstance(raw, np.ndarray):  # typed numbers (NaN = null) from the Arrow path
            kind = model.kinds.get(signal)
            if kind is None and not np.isnan(raw).all():
                kind = model.kinds[signal] = "numeric"
            if kind != "categorical":
                return raw
            raw = [None if np.isnan(v) else v for v in raw.tolist()]
        kind = model.kinds.get(signal)
        if kind is None:
            first = next((v for v in raw if v is not None), None)
            if first is None:
                return np.full(len(raw), np.nan)
            kind = model.kinds[signal] = "categorical" if isinstance(first, str) else "numeric"
        if kind == "numeric":
            try:
                values = np.array(raw, dtype=np.float64)
            except (ValueError, TypeError):
                for i, v in enumerate(raw):
                    if isinstance(v, str):
                        bad.setdefault(i, f"{field_}: expected a number, got a string")
                values = np.array([None if isinstance(v, str) else v for v in raw], np.float64)
            infinite = np.isinf(values)
            if infinite.any():
                for j in np.flatnonzero(infinite).tolist():
                    bad.setdefault(j, f"{field_}: not a finite number")
                values[infinite] = np.nan
            return values
        labels: list[str | None] = []
        for i, v in enumerate(raw):
            if v is None or isinstance(v, str):
                labels.append(v)
            else:
                bad.setdefault(i, f"{field_}: expected a label, got a number")
                labels.append(None)
        return labels

    def _fold_columns(
        self,
        window: VersionWindow,
        columns: dict[str, Any],
        sel: slice | npt.NDArray[np.bool_],
        policy: ModelPolicy,
    ) -> None:
        model = self.models[window.model_id]
        n = 0
        for signal, column in columns.items():
            if isinstance(column, np.ndarray):
                values = column[sel]
                acc = window.numeric.get(signal)
                if acc is None:
                    acc = window.numeric[signal] = NumericAccumulator(
                        model.grids.get(signal), Reservoir(self._reservoir_cap(policy), self.rng)
                    )
                acc.add(values)
                n = len(values)
            else:
                labels = cast("list[str | None]", _select(column, sel))
                cat = window.categorical.get(signal)
                if cat is None:
                    cat = window.categorical[signal] = CategoricalAccumulator()
                cat.add(labels)
                n = len(labels)
        window.n += n
        for config in policy.detectors.values():
            if (
                isinstance(config, FairnessConfig)
                and config.enabled
                and config.metric == "positive_rate"
            ):
                self._fold_segments(window, columns, sel, config)

    def _fold_segments(
        self,
        window: VersionWindow,
        columns: dict[str, Any],
        sel: slice | npt.NDArray[np.bool_],
        config: FairnessConfig,
    ) -> None:
        segment = columns.get(f"feature:{config.segment}")
        if segment is None:
            return
        pred = _select(columns["prediction"], sel)
        if isinstance(pred, np.ndarray):
            positive = pred >= config.positive_threshold
        else:
            positive = np.array([v == config.positive_label for v in pred], dtype=np.bool_)
        seg = _segment_labels(_select(segment, sel))
        labels, inverse = np.unique(np.array(seg, dtype=object), return_inverse=True)
        totals = np.bincount(inverse, minlength=len(labels))
        hits = np.bincount(inverse, weights=positive, minlength=len(labels))
        for label, t, h in zip(labels, totals, hits, strict=True):
            window.segments[label] = window.segments.get(label, 0) + int(t)
            window.positives[label] = window.positives.get(label, 0) + int(h)

    def _reservoir_cap(self, policy: ModelPolicy) -> int:
        caps = [c.reservoir for c in policy.detectors.values() if isinstance(c, KsConfig)]
        return max(caps) if caps else bl.REFERENCE_CAP

    # --- business, health, outcomes -----------------------------------------------------------

    async def _fold_business(self, records: list[Record]) -> None:
        good, rejected = decode_batch(records, BusinessMetricEvent)
        await self._reject(rejected)
        self.counts["business_events"] += len(good)
        now = time.time()
        for _, e in good:
            key = (e.model_id, e.model_version)
            self._saw(key, e.ts.timestamp(), 1, now)
            for window, _ in self.version_windows.spans(
                key, e.system_version, np.array([e.ts.timestamp()]), now
            ):
                sums = window.metrics.setdefault(e.metric, MetricSums())
                _add_metric(sums, e)
            state = self._version(key)
            if state.capture is not None:
                _add_metric(state.capture.window.metrics.setdefault(e.metric, MetricSums()), e)

    async def _fold_health(self, records: list[Record]) -> None:
        good, rejected = decode_batch(records, HealthCheckEvent)
        await self._reject(rejected)
        self.counts["health_events"] += len(good)
        now = time.time()
        groups: dict[VersionKey, list[HealthCheckEvent]] = defaultdict(list)
        for _, e in good:
            groups[(e.model_id, e.model_version)].append(e)
        for key, events in groups.items():
            state = self._version(key)
            ok = np.array([e.ok for e in events], dtype=np.bool_)
            state.consecutive_failures = detectors.trailing_failures(state.consecutive_failures, ok)
            ts = np.array([e.ts.timestamp() for e in events])
            for window, sel in self.version_windows.spans(key, events[-1].system_version, ts, now):
                window.health_checks += int(np.count_nonzero(np.ones(len(ts), bool)[sel]))

    def _join_ttl(self, model: ModelState) -> float:
        return min(
            (
                c.join_ttl_s
                for c in self.policy.defaults.detectors.values()
                if isinstance(c, GroundTruthConfig)
            ),
            default=0.0,
        )

    def _remember_for_join(
        self,
        model: ModelState,
        version: str,
        policy: ModelPolicy,
        request_ids: pa.Array,
        columns: dict[str, Column],
        now: float,
    ) -> None:
        configs = [
            c for c in policy.detectors.values() if isinstance(c, GroundTruthConfig) and c.enabled
        ]
        if not configs:
            return
        segments = {
            c.segment: _segment_labels(columns[f"feature:{c.segment}"])
            for c in policy.detectors.values()
            if isinstance(c, FairnessConfig)
            and c.enabled
            and c.metric == "error_rate"
            and f"feature:{c.segment}" in columns
        }
        limit = min(c.max_pending for c in configs)
        # Bounded join state: the oldest predictions give up waiting first.
        evicted = model.pending.add(
            request_ids, version, columns["prediction"], segments, now, limit
        )
        self.counts["join_evicted"] += evicted

    async def _fold_outcomes(self, records: list[Record]) -> None:
        good, rejected = decode_batch(records, OutcomeEvent)
        await self._reject(rejected)
        self.counts["outcome_events"] += len(good)
        losses: dict[VersionKey, list[float]] = defaultdict(list)
        by_model: dict[str, list[OutcomeEvent]] = defaultdict(list)
        for _, e in good:
            by_model[e.model_id].append(e)
        for model_id, outcomes in by_model.items():
            model = self.models.get(model_id)
            found = model.pending.match([e.request_id for e in outcomes]) if model else []
            self.counts["outcomes_unmatched"] += len(outcomes) - sum(w is not None for w in found)
            for e, waiting in zip(outcomes, found, strict=False):
                if waiting is None:
                    continue
                key = (model_id, waiting.version)
                losses[key].append(_loss(waiting.prediction, e.outcome))
                if waiting.segments:
                    self._count_segment_error(key, waiting, e.outcome)
        for key, values in losses.items():
            policy = self.policy.for_model(key[0])
            state = self._version(key)
            x = np.array(values, dtype=np.float64)
            for config in policy.detectors.values():
                if isinstance(config, GroundTruthConfig) and config.enabled:
                    if config.method == "page_hinkley":
                        state.drift = detectors.page_hinkley(x, state.drift, delta=config.delta)
                    else:
                        target = self._reference_loss(key)
                        state.drift = detectors.cusum(
                            x, state.drift, delta=config.delta, target=target
                        )
                    break
            self.counts["outcomes_joined"] += len(values)

    def _count_segment_error(self, key: VersionKey, waiting: Waiting, outcome: float | str) -> None:
        state = self._version(key)
        for config in self.policy.for_model(key[0]).detectors.values():
            if not (isinstance(config, FairnessConfig) and config.metric == "error_rate"):
                continue
            if config.segment not in waiting.segments:
                continue
            label = waiting.segments[config.segment]
            wrong = _is_error(waiting.prediction, outcome, config.positive_threshold)
            counts = state.outcome_segments.setdefault(config.segment, {})
            tally = counts.setdefault(str(label), [0, 0])
            tally[0] += 1
            tally[1] += int(wrong)

    def _reference_loss(self, key: VersionKey) -> float:
        ref = self._reference_version(key)
        state = self.versions.get((key[0], ref)) if ref else None
        return state.drift.mean if state is not None and state.drift.n else 0.0

    # --- baselines captured from a known-good version ------------------------------------------

    def _check_capture(self, key: VersionKey, state: VersionState, now: float) -> None:
        capture = state.capture
        if capture is None:
            return
        enough = capture.window.n >= self.svc.baseline_events
        old = now - capture.started_wall >= self.svc.baseline_seconds
        if not (enough or (old and capture.window.n >= bl.MIN_ROWS)):
            return
        state.capture = None
        snapshots = snapshots_of(capture.window, self.rng)
        for s in snapshots:
            self.install_baseline(s)
        self.counts["baselines_captured"] += 1
        log.info("baseline_captured", model_id=key[0], model_version=key[1], n=capture.window.n)
        if self._producer is not None:
            task = asyncio.ensure_future(
                bl.publish(self._producer, self._baselines_topic, snapshots)
            )
            task.add_done_callback(_log_failure)

    # --- evaluation of a closed version window --------------------------------------------------

    def _reference_version(self, key: VersionKey) -> str | None:
        model = self.models.get(key[0])
        if model is None:
            return None
        good = [v for v in model.known_good if v != key[1]]
        return good[-1] if good else None

    def reference(self, window: VersionWindow) -> Reference:
        """The baseline of the last known-good version; else the previous live version's
        concurrent window (canary-style); else nothing."""
        key = window.key
        model = self.models.get(key[0], ModelState())
        good = self._reference_version(key)
        if good is not None and (key[0], good) in self.baselines:
            return _reference_of_baseline(good, self.baselines[(key[0], good)])
        other = next(
            (v for v in (model.live, model.previous_live, good) if v and v != key[1]), None
        )
        if other is None:
            return Reference("none")
        other_key = (key[0], other)
        candidates = list(self.versions[other_key].recent) if other_key in self.versions else []
        candidates += self.version_windows.open_windows(other_key)
        concurrent = next((w for w in candidates if w.start == window.start and w.n), None)
        if concurrent is None:
            return Reference("none")
        return _reference_of_window(other, concurrent)

    def close_version_window(self, window: VersionWindow) -> list[Breach]:
        state = self._version(window.key)
        state.recent.append(window)
        model = self.models.setdefault(window.model_id, ModelState())
        for signal, acc in window.numeric.items():
            sample = acc.reservoir.values()
            # No baseline for this signal yet: fix the model's grid from the first sample.
            if signal not in model.grids and len(sample) >= 50:
                model.grids[signal] = bl.grid_from_sample(sample)
        span = list(state.recent)[-self.svc.rapid_span_windows :]
        judged = self.evaluate(window, span, state, self.reference(window))
        found = publishable(judged, state.sustain)
        self.counts["evaluations"] += 1
        return [
            self._breach(window.key, window.system_version, span[0].start, window.end, j)
            for j in found
        ]

    def evaluate(
        self,
        window: VersionWindow,
        span: list[VersionWindow],
        state: VersionState,
        ref: Reference,
    ) -> list[Judged]:
        """Every non-latency detector of the policy on one window (rapid ones on the span)."""
        policy = self.policy.for_model(window.model_id)
        judged: list[Judged] = []
        views: dict[str, NumericView] = {}
        for name, config in policy.detectors.items():
            if not config.enabled:
                continue
            if isinstance(config, KsConfig | PsiConfig):
                for signal in _matching(config.signals, window):
                    if signal in window.numeric:
                        view = views.get(signal) or _numeric_view(signal, span, ref, self.rng)
                        if view is None:
                            judged.append(_no_reference(name, config, signal, window))
                            continue
                        views[signal] = view
                        judged.append(
                            run_ks(name, config, view)
                            if isinstance(config, KsConfig)
                            else run_psi(name, config, view)
                        )
                    elif isinstance(config, PsiConfig) and signal in window.categorical:
                        counts = _merged_categories(span, signal)
                        if signal not in ref.categorical:
                            judged.append(_no_reference(name, config, signal, window))
                            continue
                        judged.append(
                            run_psi(
                                name,
                                config,
                                CategoricalView(signal, counts, ref.categorical[signal]),
                            )
                        )
            elif isinstance(config, FeatureQualityConfig):
                judged += self._feature_quality(name, config, window, ref)
            elif isinstance(config, BusinessMetricConfig | CostConfig):
                judged.append(_business(name, config, window, ref))
            elif isinstance(config, FairnessConfig):
                if config.metric == "error_rate":
                    # Outcomes joined since the version's last evaluation, per segment;
                    # measured once, then counted afresh.
                    tallies = state.outcome_segments.pop(config.segment, {})
                    hits = {label: t[1] for label, t in tallies.items()}
                    totals = {label: t[0] for label, t in tallies.items()}
                else:
                    hits, totals = window.positives, window.segments
                m = detectors.fairness(
                    hits,
                    totals,
                    segment=config.segment,
                    metric=config.metric,
                    min_ratio=config.min_ratio,
                    min_events=config.min_events,
                )
                judged.append(Judged(name, config.tier, m))
            elif isinstance(config, HealthConfig):
                m = detectors.health(
                    state.consecutive_failures,
                    window.health_checks,
                    consecutive_failures=config.consecutive_failures,
                    min_events=config.min_events,
                )
                judged.append(Judged(name, config.tier, m))
            elif isinstance(config, GroundTruthConfig):
                m = detectors.ground_truth(
                    state.drift,
                    method=config.method,
                    threshold=config.threshold,
                    min_events=config.min_events,
                )
                judged.append(Judged(name, config.tier, m))
        judged = correct(judged, policy.false_alarm.correction)
        ks_configs = {n: c for n, c in policy.detectors.items() if isinstance(c, KsConfig)}
        return [
            confirm_ks(j, views[j.measurement.signal], ks_configs[j.instance].min_effect)
            if j.measurement.detector == "ks" and j.measurement.phase == "breach"
            else j
            for j in judged
        ]

    def _feature_quality(
        self, name: str, config: FeatureQualityConfig, window: VersionWindow, ref: Reference
    ) -> list[Judged]:
        out: list[Judged] = []
        for signal, acc in window.numeric.items():
            if not signal.startswith("feature:"):
                continue
            out_of_range = acc.out_of_range if acc.grid is not None else 0
            m = detectors.feature_quality(
                acc.n,
                acc.nulls,
                out_of_range,
                0,
                signal=signal,
                max_null_rate=config.max_null_rate,
                max_out_of_range_rate=config.max_out_of_range_rate,
                max_unknown_category_rate=config.max_unknown_category_rate,
                min_events=config.min_events,
            )
            out.append(Judged(name, config.tier, m))
        for signal, cat in window.categorical.items():
            if not signal.startswith("feature:"):
                continue
            known = ref.categorical.get(signal)
            unknown = (
                sum(c for k, c in cat.counts.items() if k not in known) if known is not None else 0
            )
            m = detectors.feature_quality(
                cat.n,
                cat.nulls,
                0,
                unknown,
                signal=signal,
                max_null_rate=config.max_null_rate,
                max_out_of_range_rate=config.max_out_of_range_rate,
                max_unknown_category_rate=config.max_unknown_category_rate,
                min_events=config.min_events,
            )
            out.append(Judged(name, config.tier, m))
        return out


# --- module-level pieces (pure) ---------------------------------------------------------------


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("baseline_publish_failed", error=str(task.exception()))


def _add_metric(sums: MetricSums, e: BusinessMetricEvent) -> None:
    sums.n += 1
    if e.numerator is not None and e.denominator is not None:
        sums.numerator += e.numerator
        sums.denominator += e.denominator
        sums.ratio_events += 1
    if e.value is not None:
        sums.total += e.value


def _is_error(prediction: float | str, outcome: float | str, threshold: float) -> bool:
    """A wrong call: labels that differ, or a score and an outcome on either side of the
    positive threshold."""
    if isinstance(prediction, str) or isinstance(outcome, str):
        return str(prediction) != str(outcome)
    return (float(prediction) >= threshold) != (float(outcome) >= threshold)


def _select(column: Column, sel: slice | npt.NDArray[np.bool_]) -> Column:
    if isinstance(column, np.ndarray) or isinstance(sel, slice):
        return column[sel]
    return list(itertools.compress(column, sel))


def _segment_labels(column: Column) -> list[str | None]:
    """Segment values as the labels fairness counts by (numbers too: '1.0')."""
    values = column.tolist() if isinstance(column, np.ndarray) else column
    return [str(v) for v in values]


def _loss(prediction: float | str, outcome: float | str) -> float:
    """Absolute error for numbers, 0/1 disagreement for labels."""
    if isinstance(prediction, str) or isinstance(outcome, str):
        return float(str(prediction) != str(outcome))
    return abs(float(prediction) - float(outcome))


def _grid_of(snapshot: BaselineSnapshot) -> bl.Grid:
    low = snapshot.rates.get("min", snapshot.bin_edges[0])
    high = snapshot.rates.get("max", snapshot.bin_edges[-1])
    return bl.Grid(np.array(snapshot.bin_edges, dtype=np.float64), float(low), float(high))


def _reference_of_baseline(version: str, snapshots: dict[str, BaselineSnapshot]) -> Reference:
    ref = Reference(f"baseline:{version}")
    for signal, s in snapshots.items():
        if s.bin_edges:
            counts = np.array(s.counts, dtype=np.int64) if s.counts else None
            ref.numeric[signal] = NumericRef(
                _grid_of(s), counts, np.array(s.reference, dtype=np.float64)
            )
        elif s.categories:
            ref.categorical[signal] = dict(s.categories)
        elif signal.startswith("metric:") and "rate" in s.rates:
            ref.metrics[signal[len("metric:") :]] = (
                s.rates["rate"],
                s.rates.get("successes"),
                s.rates.get("n"),
            )
    return ref


def _reference_of_window(version: str, w: VersionWindow) -> Reference:
    ref = Reference(f"concurrent:{version}")
    for signal, acc in w.numeric.items():
        counts = acc.counts if acc.grid is not None and len(acc.counts) else None
        ref.numeric[signal] = NumericRef(acc.grid, counts, acc.reservoir.values().copy())
    for signal, cat in w.categorical.items():
        ref.categorical[signal] = {k: float(v) for k, v in cat.counts.items()}
    for metric, sums in w.metrics.items():
        successes = sums.numerator if sums.ratio_events else sums.total
        n = sums.denominator if sums.ratio_events else float(sums.n)
        ref.metrics[metric] = (sums.rate, successes, n)
    return ref


def _numeric_view(
    signal: str, span: list[VersionWindow], ref: Reference, rng: np.random.Generator
) -> NumericView | None:
    """The span's values of one signal against the reference, counted on one grid."""
    r = ref.numeric.get(signal)
    accs = [w.numeric[signal] for w in span if signal in w.numeric]
    if r is None or not accs or len(r.sample) == 0:
        return None
    grids = {id(a.grid) for a in accs}
    sample = np.concatenate([a.reservoir.values() for a in accs])
    cap = accs[-1].reservoir.cap
    if len(sample) > cap:
        sample = rng.choice(sample, cap, replace=False)
    grid: bl.Grid
    if len(grids) == 1 and accs[0].grid is not None:
        grid = accs[0].grid
        counts = np.sum([a.counts for a in accs], axis=0).astype(np.int64)
    else:
        grid = r.grid or bl.grid_from_sample(r.sample)
        counts = grid.count(sample)
    same_grid = r.grid is not None and (r.grid is grid or np.array_equal(r.grid.edges, grid.edges))
    ref_counts = r.counts if same_grid and r.counts is not None else grid.count(r.sample)
    return NumericView(signal, counts, ref_counts, sample, r.sample)


def _merged_categories(span: list[VersionWindow], signal: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for w in span:
        cat = w.categorical.get(signal)
        if cat is not None:
            for k, v in cat.counts.items():
                out[k] = out.get(k, 0) + v
    return out


def _matching(patterns: tuple[str, ...], window: VersionWindow) -> list[str]:
    signals = list(window.numeric) + list(window.categorical)
    out: list[str] = []
    for p in patterns:
        if p.endswith(":*"):
            out += [s for s in signals if s.startswith(p[:-1]) and s not in out]
        elif p in signals and p not in out:
            out.append(p)
    return out


def _no_reference(name: str, config: KsConfig | PsiConfig, signal: str, w: VersionWindow) -> Judged:
    statistic = "ks_d" if isinstance(config, KsConfig) else "psi"
    threshold = config.min_effect if isinstance(config, KsConfig) else config.major
    n = w.numeric[signal].n if signal in w.numeric else w.categorical[signal].n
    m = detectors.Measurement(
        config.kind,
        signal,
        "inconclusive",
        statistic,
        0.0,
        threshold,
        n,
        None,
        {"reason": "no_reference"},
    )
    return Judged(name, config.tier, m)


def _business(
    name: str, config: BusinessMetricConfig | CostConfig, w: VersionWindow, ref: Reference
) -> Judged:
    sums = w.metrics.get(config.metric, MetricSums())
    base = ref.metrics.get(config.metric)
    if isinstance(config, CostConfig):
        total = sums.numerator if sums.ratio_events else sums.total
        n = int(sums.denominator) if sums.ratio_events else sums.n
        m = detectors.cost(
            total,
            n,
            base[0] if base else None,
            metric=config.metric,
            max_increase=config.max_increase,
            min_events=config.min_events,
        )
        return Judged(name, config.tier, m)
    counted = sums.ratio_events > 0
    successes = sums.numerator if counted else sums.total
    n = int(sums.denominator) if counted else sums.n
    m = detectors.business_metric(
        sums.rate,
        n,
        base[0] if base else None,
        metric=config.metric,
        max_relative_drop=config.max_relative_drop,
        alpha=config.alpha,
        min_events=config.min_events,
        successes=successes,
        base_successes=base[1] if base else None,
        base_n=base[2] if base else None,
    )
    return Judged(name, config.tier, m)


def snapshots_of(window: VersionWindow, rng: np.random.Generator) -> list[BaselineSnapshot]:
    """Baseline snapshots from what a known-good version sent during its capture."""
    out: list[BaselineSnapshot] = []
    mid, ver = window.model_id, window.model_version
    for signal, acc in window.numeric.items():
        sample = acc.reservoir.values()
        if len(sample):
            out.append(bl.numeric_snapshot(mid, ver, signal, sample, nulls=acc.nulls, rng=rng))
    for signal, cat in window.categorical.items():
        labels: list[str | None] = [k for k, c in cat.counts.items() for _ in range(c)]
        out.append(bl.categorical_snapshot(mid, ver, signal, labels + [None] * cat.nulls))
    for metric, sums in window.metrics.items():
        successes = sums.numerator if sums.ratio_events else sums.total
        n = sums.denominator if sums.ratio_events else float(sums.n)
        out.append(bl.metric_snapshot(mid, ver, f"metric:{metric}", sums.rate, n, successes))
    return out
