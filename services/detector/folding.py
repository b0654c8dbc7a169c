"""Folding decoded batches into windows and per-version state (the hot path's numpy part).

Predictions become per-signal columns (numeric arrays, NaN = null, or lists of labels) and fold
into every open window of their version, the baseline being captured, and the join of
predictions waiting for their outcome. Kinds that need something only they read fold it through
their own hook (``DetectorKind.fold_predictions`` / ``fold_outcomes``).
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from typing import TypeVar, cast

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa

from rollguard import baselines as bl
from rollguard.bus import Rejected
from rollguard.detector_policy import DetectorBase
from rollguard.events import (
    BaselineSnapshot,
    BusinessMetricEvent,
    HealthCheckEvent,
    OutcomeEvent,
    SystemManifest,
)
from rollguard.logs import get_logger
from rollguard.policy import ModelPolicy, WindowPolicy
from rollguard_services.detector.capture import capture_due, snapshots_of
from rollguard_services.detector.decoding import (
    Column,
    LatencyBatch,
    PredictionBatch,
    Record,
    segment_labels,
    select,
    take,
)
from rollguard_services.detector.kinds import Plan, Resolved
from rollguard_services.detector.kinds.base import JoinedOutcomes, Selection
from rollguard_services.detector.kinds.health import trailing_failures
from rollguard_services.detector.reference import grid_of
from rollguard_services.detector.settings import DetectorSettings
from rollguard_services.detector.state import Capture, ModelState, VersionSeen, VersionState
from rollguard_services.detector.sustain import Sustain
from rollguard_services.detector.windows import (
    CategoricalAccumulator,
    LatencyWindow,
    LatencyWindows,
    MetricSums,
    NumericAccumulator,
    Piece,
    Reservoir,
    VersionKey,
    VersionWindow,
    VersionWindows,
)

log = get_logger("rollguard.detector")
E = TypeVar("E", BusinessMetricEvent, HealthCheckEvent)

#: Called with a finished baseline capture's snapshots (install them, publish them).
Captured = Callable[[VersionKey, list[BaselineSnapshot]], None]


class Folder:
    """What the detector knows between batches, and how each topic's events fold into it."""

    def __init__(
        self,
        svc: DetectorSettings,
        policy: Callable[[str], ModelPolicy],
        kinds: Resolved,
        rng: np.random.Generator,
        counts: Counter[str],
    ) -> None:
        self.svc = svc
        self._policy = policy
        self.kinds = kinds
        self.rng = rng
        self.counts = counts
        self.latency_windows = LatencyWindows(lambda model_id: policy(model_id).window)
        self.version_windows = VersionWindows(
            lambda model_id: policy(model_id).window,
            svc.window_events,
            svc.lateness_s,
            svc.idle_close_s,
        )
        #: Shadow predictions (PredictionEvent.shadow): a known-good version scoring the live
        #: version's inputs, windowed apart from that version's own traffic.
        self.shadow_windows = VersionWindows(
            lambda model_id: policy(model_id).window,
            svc.window_events,
            svc.lateness_s,
            svc.idle_close_s,
        )
        self.shadows: dict[VersionKey, VersionState] = {}
        #: When each version's shadow predictions were last folded (wall clock).
        self.shadow_seen: dict[VersionKey, float] = {}
        self.seen: dict[VersionKey, VersionSeen] = {}
        self.models: dict[str, ModelState] = {}
        self.versions: dict[VersionKey, VersionState] = {}
        self.baselines: dict[VersionKey, dict[str, BaselineSnapshot]] = {}
        self.on_captured: Captured = lambda key, snapshots: None
        self.skewed_by_version: Counter[str] = Counter()

    def configs(self, model_id: str) -> dict[str, DetectorBase]:
        return self.kinds.configs(self._policy(model_id))

    def model(self, model_id: str) -> ModelState:
        return self.models.setdefault(model_id, ModelState())

    def version(self, key: VersionKey, *, shadow: bool = False) -> VersionState:
        states = self.shadows if shadow else self.versions
        state = states.get(key)
        if state is None:
            policy = self._policy(key[0])
            state = states[key] = VersionState(
                deque(maxlen=max(self.svc.rapid_span_windows, 2)), Sustain.of(policy.false_alarm)
            )
        return state

    def saw(self, key: VersionKey, first_ts: float, n: int, now: float) -> None:
        seen = self.seen.setdefault(key, VersionSeen(first_ts))
        seen.events += n
        seen.last_wall = now

    def forget_quiet(self, now: float) -> None:
        """Versions that stopped sending are forgotten after a TTL: state stays bounded."""
        quiet = [k for k, v in self.seen.items() if now - v.last_wall > self.svc.version_ttl_s]
        for key in quiet:
            del self.seen[key]
            self.versions.pop(key, None)
            self.version_windows.drop(key)
        quiet_shadows = [
            k for k, last in self.shadow_seen.items() if now - last > self.svc.version_ttl_s
        ]
        for key in quiet_shadows:  # on their own clock: a target scores while it serves nothing
            del self.shadow_seen[key]
            self.shadows.pop(key, None)
            self.shadow_windows.drop(key)
        for model_id, model in self.models.items():
            ttl = self.plan(model_id).join.ttl_s
            if ttl is not None:
                self.counts["join_expired"] += model.pending.expire(now, ttl)

    # --- control tables: deployments and baselines ------------------------------------------

    def on_manifest(self, manifest: SystemManifest, now: float) -> None:
        """Track versions; a version newly marked known good starts a baseline capture."""
        model = self.model(manifest.model_id)
        version = manifest.model_version
        model.registered.add(version)
        if manifest.serving and model.live != version:
            model.previous_live, model.live = model.live, version
        if manifest.status == "known_good":
            if version in model.known_good:
                model.known_good.remove(version)
            model.known_good.append(version)
            key = (manifest.model_id, version)
            state = self.version(key)
            if key not in self.baselines and state.capture is None:
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
        model = self.model(snapshot.model_id)
        if snapshot.bin_edges:
            model.grids[snapshot.signal] = grid_of(snapshot)
            model.kinds.setdefault(snapshot.signal, "numeric")
        elif snapshot.categories:
            model.kinds.setdefault(snapshot.signal, "categorical")
        state = self.versions.get(key)
        if state is not None:
            state.capture = None
        self.counts["baselines"] += 1

    # --- latency ---------------------------------------------------------------------------

    def refuse_skewed(
        self,
        model_id: str,
        batch: LatencyBatch | PredictionBatch,
        rows: npt.NDArray[np.intp],
        now: float,
        rejected: list[Rejected],
    ) -> npt.NDArray[np.intp]:
        """``rows`` (of one model) without those dated more than the policy's
        ``window.max_future_s`` ahead of ``now`` or ``window.max_past_s`` behind it, which go
        to ``rejected``: a producer with a fast clock must not open a window in the future that
        every later event of its version folds into, nor one with a stopped clock date a
        version's first event (its MTTD) decades back."""
        window = self._policy(model_id).window
        ts = batch.ts[rows]
        skewed = (ts > now + window.max_future_s) | (ts < now - window.max_past_s)
        if not skewed.any():
            return rows
        rejected += [
            self._clock_skew(batch.records[i], batch.ts[i], now, window) for i in rows[skewed]
        ]
        return rows[~skewed]

    def none_skewed(self, batch: PredictionBatch, model_ids: Iterable[str], now: float) -> bool:
        """Whether no row of the batch can be skewed for any of its models: every row within
        the tightest ``max_future_s``/``max_past_s`` of them (one check for the whole batch,
        instead of one per version, when the clocks are fine)."""
        windows = [self._policy(m).window for m in model_ids]
        if not windows or len(batch.ts) == 0:
            return True
        future = min(w.max_future_s for w in windows)
        past = min(w.max_past_s for w in windows)
        return bool(batch.ts.max() <= now + future and batch.ts.min() >= now - past)

    def refuse_skewed_events(
        self, good: list[tuple[Record, E]], now: float, rejected: list[Rejected]
    ) -> list[E]:
        """The same for events decoded one by one (business, health): the ones to fold."""
        kept: list[E] = []
        for record, event in good:
            window = self._policy(event.model_id).window
            ts = event.ts.timestamp()
            if ts > now + window.max_future_s or ts < now - window.max_past_s:
                rejected.append(self._clock_skew(record, ts, now, window))
            else:
                kept.append(event)
        return kept

    def _clock_skew(self, record: Record, ts: float, now: float, window: WindowPolicy) -> Rejected:
        """Counted in all and per producer — the model version whose events they are, as the
        record's key and value name it — and said once per version, then every 1,000th."""
        version = _version_of(record)
        self.skewed_by_version[version] += 1
        seen = self.skewed_by_version[version]
        if seen == 1 or seen % 1000 == 0:
            log.warning("clock_skew", producer=version, events=seen, skew_s=round(ts - now))
        if ts > now:
            self.counts["events_from_the_future"] += 1
            return Rejected(
                record,
                "clock_skew",
                f"ts: {ts - now:.0f}s ahead of the detector's clock "
                f"(more than window.max_future_s={window.max_future_s:g})",
            )
        self.counts["events_from_the_past"] += 1
        return Rejected(
            record,
            "clock_skew",
            f"ts: {now - ts:.0f}s behind the detector's clock "
            f"(more than window.max_past_s={window.max_past_s:g})",
        )

    def fold_latency(
        self, batch: LatencyBatch, now: float, rejected: list[Rejected]
    ) -> list[LatencyWindow]:
        closed: list[LatencyWindow] = []
        for key, all_rows in batch.groups.items():
            rows = self.refuse_skewed(key[0], batch, all_rows, now, rejected)
            if len(rows) == 0:
                continue
            self.saw(key, float(batch.ts[rows[0]]), len(rows), now)
            closed += self.latency_windows.add(
                key,
                batch.system_version_of(int(rows[-1])),
                batch.ts[rows],
                batch.latency_ms[rows],
                batch.errors[rows],
            )
        return closed

    # --- predictions -----------------------------------------------------------------------

    def fold_version(
        self,
        key: VersionKey,
        batch: PredictionBatch,
        rows: npt.NDArray[np.intp],
        rejected: list[Rejected],
        now: float,
        *,
        shadow: bool = False,
        clocks_fine: bool = False,
    ) -> None:
        """Fold one version's rows of a prediction batch; bad rows go to ``rejected``.
        ``clocks_fine``: ``none_skewed`` said so for the whole batch already.

        ``shadow``: the rows are that version's shadow scoring of another version's requests:
        windowed apart, and no part of its own traffic (first event, joins, baseline capture).
        """
        if not clocks_fine:
            rows = self.refuse_skewed(key[0], batch, rows, now, rejected)
            if len(rows) == 0:
                return
        model = self.model(key[0])
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
        windows = self.shadow_windows if shadow else self.version_windows
        if shadow:
            self.shadow_seen[key] = now
        else:
            self.saw(key, float(ts[0]), len(rows), now)
            self._remember_for_join(model, key, batch.request_ids(rows), columns, now)
            state = self.version(key)
            if state.capture is not None:
                self.fold_columns(state.capture.window, columns, slice(None))
                self._check_capture(key, state, now)
        system_version = batch.system_version_of(int(rows[0]))
        for window, sel in windows.spans(key, system_version, ts, now, counted=True):
            self.fold_columns(window, columns, sel)

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
        columns["prediction"] = _column(
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
                else _column(model, f"feature:{name}", raw, bad, f"features.{name}")
            )
        return columns, bad

    def fold_columns(
        self, window: VersionWindow, columns: dict[str, Column], sel: Selection
    ) -> None:
        """Give ``window`` the rows ``sel`` of ``columns``: kept as a piece, folded when the
        window is first read (``VersionWindow.settle`` calls ``fold_now``)."""
        first = next(iter(columns.values()))
        if isinstance(sel, slice):
            n = len(range(*sel.indices(len(first))))
        else:
            n = int(np.count_nonzero(sel))
        window.add_piece((columns, sel), n, self.fold_now)

    def fold_now(self, window: VersionWindow, pieces: list[Piece]) -> None:
        """Fold pieces into the window's accumulators: one pass over all of them when they
        carry the same signals (a model's do), else piece by piece."""
        shapes = {
            tuple((s, isinstance(c, np.ndarray)) for s, c in cols.items()) for cols, _ in pieces
        }
        if len(pieces) > 1 and len(shapes) == 1:
            merged: dict[str, Column] = {}
            for signal, column in pieces[0][0].items():
                parts = [select(cols[signal], sel) for cols, sel in pieces]
                if isinstance(column, np.ndarray):
                    merged[signal] = np.concatenate(cast("list[npt.NDArray[np.float64]]", parts))
                else:
                    merged[signal] = [v for part in parts for v in part]
            pieces = [(merged, slice(None))]
        for columns, sel in pieces:
            self._fold_piece(window, columns, sel)

    def _fold_piece(
        self, window: VersionWindow, columns: dict[str, Column], sel: Selection
    ) -> None:
        model = self.models[window.model_id]
        plan = self.plan(window.model_id)
        numeric, categorical = window.numeric, window.categorical
        for signal, column in columns.items():
            if isinstance(column, np.ndarray):
                acc = numeric.get(signal)
                if acc is None:
                    acc = numeric[signal] = NumericAccumulator(
                        model.grids.get(signal),
                        Reservoir(plan.reservoir_cap, self.rng),
                    )
                acc.add(column[sel])
            else:
                cat = categorical.get(signal)
                if cat is None:
                    cat = categorical[signal] = CategoricalAccumulator()
                cat.add(cast("list[str | None]", select(column, sel)))
        for name, config, fold in plan.prediction_folds:
            fold(name, config, window, columns, sel)

    def plan(self, model_id: str) -> Plan:
        return self.kinds.plan(self._policy(model_id))

    def _remember_for_join(
        self,
        model: ModelState,
        key: VersionKey,
        request_ids: pa.Array,
        columns: dict[str, Column],
        now: float,
    ) -> None:
        plan = self.plan(key[0])
        limit = plan.join.max_pending
        if limit is None:
            return
        segments = {
            s: segment_labels(columns[f"feature:{s}"])
            for s in plan.segments
            if f"feature:{s}" in columns
        }
        # Bounded join state: the oldest predictions give up waiting first.
        evicted = model.pending.add(
            request_ids, key[1], columns["prediction"], segments, now, limit
        )
        self.counts["join_evicted"] += evicted

    def fold_outcomes(self, good: list[OutcomeEvent]) -> None:
        by_model: dict[str, list[OutcomeEvent]] = defaultdict(list)
        for e in good:
            by_model[e.model_id].append(e)
        joined: dict[
            VersionKey, tuple[list[float | str], list[float | str], list[dict[str, str | None]]]
        ] = {}
        for model_id, outcomes in by_model.items():
            model = self.models.get(model_id)
            found = model.pending.match([e.request_id for e in outcomes]) if model else []
            self.counts["outcomes_unmatched"] += len(outcomes) - sum(w is not None for w in found)
            for e, waiting in zip(outcomes, found, strict=False):
                if waiting is None:
                    continue
                preds, outs, segs = joined.setdefault((model_id, waiting.version), ([], [], []))
                preds.append(waiting.prediction)
                outs.append(e.outcome)
                segs.append(waiting.segments)
        for key, (preds, outs, segs) in joined.items():
            model = self.model(key[0])
            reference = model.reference_version(key[1])
            batch = JoinedOutcomes(
                key,
                preds,
                outs,
                segs,
                self.version(key),
                self.versions.get((key[0], reference)) if reference else None,
            )
            for name, config, fold in self.plan(key[0]).outcome_folds:
                fold(name, config, batch)
            self.counts["outcomes_joined"] += len(preds)

    # --- business, health ---------------------------------------------------------------------

    def fold_business(self, good: list[BusinessMetricEvent], now: float) -> None:
        for e in good:
            key = (e.model_id, e.model_version)
            self.saw(key, e.ts.timestamp(), 1, now)
            for window, _ in self.version_windows.spans(
                key, e.system_version, np.array([e.ts.timestamp()]), now
            ):
                _add_metric(window.metrics.setdefault(e.metric, MetricSums()), e)
            state = self.version(key)
            if state.capture is not None:
                _add_metric(state.capture.window.metrics.setdefault(e.metric, MetricSums()), e)

    def fold_health(self, good: list[HealthCheckEvent], now: float) -> None:
        groups: dict[VersionKey, list[HealthCheckEvent]] = defaultdict(list)
        for e in good:
            groups[(e.model_id, e.model_version)].append(e)
        for key, events in groups.items():
            state = self.version(key)
            ok = np.array([e.ok for e in events], dtype=np.bool_)
            state.consecutive_failures = trailing_failures(state.consecutive_failures, ok)
            ts = np.array([e.ts.timestamp() for e in events])
            for window, sel in self.version_windows.spans(key, events[-1].system_version, ts, now):
                window.health_checks += int(np.count_nonzero(np.ones(len(ts), bool)[sel]))

    # --- baselines captured from a known-good version ------------------------------------------

    def _check_capture(self, key: VersionKey, state: VersionState, now: float) -> None:
        capture = state.capture
        if capture is None or not capture_due(capture, self.svc, now):
            return
        state.capture = None
        self.counts["baselines_captured"] += 1
        self.on_captured(key, snapshots_of(capture.window, self.rng))


def _column(
    model: ModelState, signal: str, raw: Column, bad: dict[int, str], field_: str
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


def _add_metric(sums: MetricSums, e: BusinessMetricEvent) -> None:
    sums.n += 1
    if e.numerator is not None and e.denominator is not None:
        sums.numerator += e.numerator
        sums.denominator += e.denominator
        sums.ratio_events += 1
    if e.value is not None:
        sums.total += e.value


__all__ = ["Captured", "Folder"]


def _version_of(record: Record) -> str:
    """``model_id/model_version`` of a record the detector refused for its timestamp."""
    model_id = record.key.decode(errors="replace") if isinstance(record.key, bytes) else "?"
    try:
        version = str(orjson.loads(record.value).get("model_version", "?"))
    except (orjson.JSONDecodeError, TypeError, AttributeError):
        version = "?"
    return f"{model_id}/{version}"
