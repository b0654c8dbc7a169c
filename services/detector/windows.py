"""Tumbling event-time windows per (model_id, model_version), with bounded state.

A window closes when an event of a later window arrives, or when the wall clock passes its
end plus a grace period (so a version that stops sending still gets its last window judged).
A closed window is dropped: state never grows with the number of events or of dead versions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from rollguard.baselines import Grid
from rollguard.policy import WindowPolicy
from rollguard_services.detector.decoding import Column
from rollguard_services.detector.histograms import LATENCY_EDGES, latency_histogram

VersionKey = tuple[str, str]


@dataclass
class LatencyWindow:
    model_id: str
    model_version: str
    system_version: str | None
    start: float
    seconds: float
    errors: int = 0
    n: int = 0
    counts: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(len(LATENCY_EDGES) - 1, dtype=np.int64)
    )

    @property
    def end(self) -> float:
        return self.start + self.seconds

    def absorb(self, other: LatencyWindow) -> None:
        """Pool another closed window of the version in: one window over both."""
        self.start, self.seconds = _span(self, other)
        self.system_version = other.system_version or self.system_version
        self.errors += other.errors
        self.n += other.n
        self.counts = self.counts + other.counts


def _span(
    a: LatencyWindow | VersionWindow, b: LatencyWindow | VersionWindow
) -> tuple[float, float]:
    """(start, seconds) of one window over both."""
    start = min(a.start, b.start)
    return start, max(a.end, b.end) - start


class LatencyWindows:
    """Error and latency windows of every live (model_id, model_version)."""

    def __init__(self, window_policy: Callable[[str], WindowPolicy]) -> None:
        self._policy = window_policy
        self._open: dict[VersionKey, LatencyWindow] = {}

    def __len__(self) -> int:
        return len(self._open)

    def add(
        self,
        key: VersionKey,
        system_version: str | None,
        ts: npt.NDArray[np.float64],
        latency_ms: npt.NDArray[np.float64],
        is_error: npt.NDArray[np.bool_],
    ) -> list[LatencyWindow]:
        """Fold one version's events (event time in epoch seconds) in; return closed windows."""
        policy = self._policy(key[0])
        buckets = np.floor(ts / policy.seconds) * policy.seconds
        closed: list[LatencyWindow] = []
        for start in np.unique(buckets):
            current = self._open.get(key)
            if current is None or start > current.start:
                if current is not None:
                    closed.append(current)
                current = LatencyWindow(
                    key[0], key[1], system_version, float(start), policy.seconds
                )
                self._open[key] = current
            # Events older than the open window are late: fold them into it rather than reopen.
            sel = buckets == start
            current.n += int(sel.sum())
            current.errors += int(is_error[sel].sum())
            current.counts += latency_histogram(latency_ms[sel])
        return closed

    def close_idle(self, now: float) -> list[LatencyWindow]:
        closed = [
            w for w in self._open.values() if now >= w.end + self._policy(w.model_id).close_grace_s
        ]
        for w in closed:
            del self._open[(w.model_id, w.model_version)]
        return closed


# --- prediction, feature, business and health windows --------------------------------------


class Reservoir:
    """Uniform sample of at most ``cap`` values of a stream (algorithm R, vectorised per batch)."""

    __slots__ = ("_sample", "cap", "rng", "seen")

    def __init__(self, cap: int, rng: np.random.Generator) -> None:
        self.cap = cap
        self.seen = 0
        self.rng = rng
        self._sample = np.empty(0, dtype=np.float64)

    def add(self, values: npt.NDArray[np.float64]) -> None:
        room = self.cap - len(self._sample)
        if room > 0:
            self._sample = np.concatenate([self._sample, values[:room]])
            self.seen += min(room, len(values))
            values = values[room:]
        if len(values) == 0:
            return
        # Item number t (1-based) replaces a random slot with probability cap / t; numpy's
        # fancy assignment keeps the last write on duplicate slots, as a sequential loop would.
        t = self.seen + np.arange(1, len(values) + 1)
        slot = (self.rng.random(len(values)) * t).astype(np.int64)
        keep = slot < self.cap
        self._sample[slot[keep]] = values[keep]
        self.seen += len(values)

    def values(self) -> npt.NDArray[np.float64]:
        return self._sample

    def absorb(self, other: Reservoir) -> None:
        """Pool ``other``'s sample into this one: each item stands for seen/len(sample) events
        of its window, and a pool over the cap keeps ``cap`` of them in that proportion."""
        if other.seen == 0:
            return
        samples = [x for x in (self._sample, other._sample) if len(x)]
        weights = [
            np.full(len(x), seen / len(x))
            for x, seen in ((self._sample, self.seen), (other._sample, other.seen))
            if len(x)
        ]
        pooled, weight = np.concatenate(samples), np.concatenate(weights)
        if len(pooled) > self.cap:
            keep = self.rng.choice(len(pooled), self.cap, replace=False, p=weight / weight.sum())
            pooled = pooled[np.sort(keep)]
        self._sample = pooled
        self.seen += other.seen


@dataclass
class NumericAccumulator:
    """One numeric signal in one window: counts on the model's grid and a capped sample."""

    grid: Grid | None
    reservoir: Reservoir
    n: int = 0
    nulls: int = 0
    out_of_range: int = 0
    counts: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def add(self, values: npt.NDArray[np.float64]) -> None:
        """Fold values in; NaN marks a null (the decoder has already refused non-finite input)."""
        null = np.isnan(values)
        nulls = int(null.sum())
        if nulls:
            values = values[~null]
        self.nulls += nulls
        self.n += len(values) + nulls
        if self.grid is not None:
            # Without a grid yet (first window of a model with no baseline) only the sample is
            # kept; evaluation counts the sample on the reference's grid instead.
            if len(self.counts) == 0:
                self.counts = np.zeros(self.grid.bins, dtype=np.int64)
            self.counts += self.grid.count(values)
            self.out_of_range += int(((values < self.grid.low) | (values > self.grid.high)).sum())
        self.reservoir.add(values)

    def absorb(self, other: NumericAccumulator) -> None:
        """Pool the next window's values of this signal in. Counts stay only where every part
        was counted on the same grid; otherwise the pooled sample decides."""
        mine, theirs = self.n - self.nulls, other.n - other.nulls
        if theirs:
            if not mine and len(other.counts):
                self.grid, self.counts = other.grid, other.counts.copy()
            elif mine and len(self.counts) and other.grid is self.grid and len(other.counts):
                self.counts = self.counts + other.counts
            else:
                self.counts = np.zeros(0, dtype=np.int64)
        self.n += other.n
        self.nulls += other.nulls
        self.out_of_range += other.out_of_range
        self.reservoir.absorb(other.reservoir)


#: Categories beyond this many per signal fold into one bucket: state stays bounded.
MAX_CATEGORIES = 256
OTHER = "__other__"


@dataclass
class CategoricalAccumulator:
    counts: dict[str, int] = field(default_factory=dict)
    n: int = 0
    nulls: int = 0

    def add(self, values: list[str | None]) -> None:
        self.n += len(values)
        for v in values:
            if v is None:
                self.nulls += 1
            elif v in self.counts or len(self.counts) < MAX_CATEGORIES:
                self.counts[v] = self.counts.get(v, 0) + 1
            else:
                self.counts[OTHER] = self.counts.get(OTHER, 0) + 1

    def absorb(self, other: CategoricalAccumulator) -> None:
        self.n += other.n
        self.nulls += other.nulls
        for v, count in other.counts.items():
            if v not in self.counts and len(self.counts) >= MAX_CATEGORIES:
                v = OTHER
            self.counts[v] = self.counts.get(v, 0) + count


@dataclass
class MetricSums:
    """A business metric in a window: values (mean, variance) and ratio counts where given."""

    n: int = 0
    total: float = 0.0
    numerator: float = 0.0
    denominator: float = 0.0
    ratio_events: int = 0

    def absorb(self, other: MetricSums) -> None:
        self.n += other.n
        self.total += other.total
        self.numerator += other.numerator
        self.denominator += other.denominator
        self.ratio_events += other.ratio_events

    @property
    def rate(self) -> float:
        if self.ratio_events and self.denominator > 0:
            return self.numerator / self.denominator
        return self.total / self.n if self.n else 0.0


#: A window's prediction columns and the rows of them that are its own, folded when read.
Piece = tuple[dict[str, Column], slice | npt.NDArray[np.bool_]]
#: Folds pieces into a window's accumulators (the detector's ``Folder.fold_now``).
FoldPieces = Callable[["VersionWindow", list[Piece]], None]

#: Pieces a window keeps unfolded at most; one more folds them all in one go.
MAX_PIECES = 64


@dataclass
class VersionWindow:
    """Everything one model version sent in one tumbling window, apart from latency.

    Prediction columns are kept as pieces (references to a batch's columns and the rows of
    them that are this window's) and folded into the accumulators the first time anything
    reads them: a window too short to test is pooled with the next ones without being folded,
    and a window that gets its events from many batches folds them in one pass (issue 15).
    ``n`` counts every prediction, folded or not.
    """

    model_id: str
    model_version: str
    system_version: str | None
    start: float
    seconds: float
    n: int = 0
    _numeric: dict[str, NumericAccumulator] = field(default_factory=dict)
    _categorical: dict[str, CategoricalAccumulator] = field(default_factory=dict)
    metrics: dict[str, MetricSums] = field(default_factory=dict)
    health_checks: int = 0
    #: What a detector kind folds for itself (segment tallies), by detector instance name.
    _kind_sums: dict[str, object] = field(default_factory=dict)
    pending: list[Piece] = field(default_factory=list)
    fold: FoldPieces | None = None

    @property
    def numeric(self) -> dict[str, NumericAccumulator]:
        self.settle()
        return self._numeric

    @property
    def categorical(self) -> dict[str, CategoricalAccumulator]:
        self.settle()
        return self._categorical

    @property
    def kind_sums(self) -> dict[str, object]:
        self.settle()
        return self._kind_sums

    def add_piece(self, piece: Piece, n: int, fold: FoldPieces) -> None:
        self.n += n
        self.fold = fold
        self.pending.append(piece)
        if len(self.pending) >= MAX_PIECES:
            self.settle()

    def settle(self) -> None:
        """Fold the pieces still pending (nothing to do when there are none)."""
        if not self.pending:
            return
        pieces, self.pending = self.pending, []
        assert self.fold is not None, "pieces come with their fold"
        self.fold(self, pieces)

    @property
    def end(self) -> float:
        return self.start + self.seconds

    @property
    def key(self) -> VersionKey:
        return (self.model_id, self.model_version)

    def absorb(self, other: VersionWindow) -> None:
        """Pool the version's next window in (a quiet model's windows, short of the events a
        test needs, judged as one): one window from this start to ``other``'s end. A kind's
        own sums pool when they know how (an ``absorb`` method), else the later ones stand.
        Windows may close out of order (count-based ones, idle ones): the pool spans both.
        ``other``'s unfolded pieces become this window's, still unfolded."""
        self.start, self.seconds = _span(self, other)
        self.system_version = other.system_version or self.system_version
        self.n += other.n
        self.health_checks += other.health_checks
        if other.pending:
            self.fold = self.fold or other.fold
            self.pending += other.pending
            other.pending = []
        for parts, theirs in (
            (self._numeric, other._numeric),
            (self._categorical, other._categorical),
            (self.metrics, other.metrics),
            (self._kind_sums, other._kind_sums),
        ):
            for name, part in theirs.items():
                mine = parts.get(name)
                if mine is not None and hasattr(mine, "absorb"):
                    mine.absorb(part)
                else:
                    parts[name] = part  # type: ignore[assignment]
        if len(self.pending) >= MAX_PIECES:
            self.settle()


class VersionWindows:
    """Open prediction/business/health windows of every live version.

    These windows gather several topics read at different speeds, so unlike latency windows a
    later event does not close an earlier window at once. A window closes when the version's
    event-time watermark (the latest event time seen) passes its end by ``lateness_s``, or when
    nothing reached it for ``idle_s`` of wall time after its end plus the policy's grace. It
    also closes at ``max_events`` (count-based windows; 0 = time only). Events older than every
    open window fold into the oldest one (counted as late) rather than reopening a closed one.

    Count-based windows are exact: ``spans(..., counted=True)`` gives a window no more than
    the events it still has room for and starts the next one (same time bucket) with the
    rest, so every full window holds exactly ``max_events`` predictions.
    """

    def __init__(
        self,
        window_policy: Callable[[str], WindowPolicy],
        max_events: int = 0,
        lateness_s: float = 2.0,
        idle_s: float = 1.0,
    ) -> None:
        self._policy = window_policy
        self._max_events = max_events
        self._lateness_s = lateness_s
        self._idle_s = idle_s
        self._open: dict[VersionKey, dict[float, VersionWindow]] = {}
        self._closed_until: dict[VersionKey, float] = {}
        self._watermark: dict[VersionKey, float] = {}
        self._touched: dict[int, float] = {}
        self._full: list[VersionWindow] = []
        self.late = 0

    def __len__(self) -> int:
        return sum(len(w) for w in self._open.values())

    def open_windows(self, key: VersionKey) -> list[VersionWindow]:
        return sorted(self._open.get(key, {}).values(), key=lambda w: w.start)

    def spans(
        self,
        key: VersionKey,
        system_version: str | None,
        ts: npt.NDArray[np.float64],
        now: float = 0.0,
        counted: bool = False,
    ) -> list[tuple[VersionWindow, slice | npt.NDArray[np.bool_]]]:
        """Split events of one version (event time, epoch s) over its open windows.

        ``counted``: these events count towards ``max_events`` (predictions do; business and
        health events ride along in whatever window is open).
        """
        seconds = self._policy(key[0]).seconds
        buckets = np.floor(ts / seconds) * seconds
        opened = self._open.setdefault(key, {})
        closed_until = self._closed_until.get(key, -np.inf)
        out: list[tuple[VersionWindow, slice | npt.NDArray[np.bool_]]] = []
        dealt: dict[int, int] = {}  # count-based: events given to a window in this call
        lo, hi = float(buckets.min()), float(buckets.max())
        # A version's rows of one batch mostly fall in one window: no sort for them.
        starts = [lo] if lo == hi else np.unique(buckets).tolist()
        for start in starts:
            sel: slice | npt.NDArray[np.bool_] = (
                slice(None) if len(starts) == 1 else buckets == start
            )
            begin = float(start)
            if begin < closed_until:
                self.late += int(np.count_nonzero(np.ones(len(ts), np.bool_)[sel]))
                begin = min(opened) if opened else closed_until
            window = opened.get(begin)
            if window is None:
                window = opened[begin] = VersionWindow(
                    key[0], key[1], system_version, begin, seconds
                )
            self._touched[id(window)] = now
            if counted and self._max_events > 0:
                out += self._deal(key, window, np.arange(len(ts))[sel], len(ts), dealt, now)
            else:
                out.append((window, sel))
        self._watermark[key] = max(self._watermark.get(key, -np.inf), float(ts.max()))
        return out

    def _deal(
        self,
        key: VersionKey,
        window: VersionWindow,
        rows: npt.NDArray[np.intp],
        n: int,
        dealt: dict[int, int],
        now: float,
    ) -> list[tuple[VersionWindow, slice | npt.NDArray[np.bool_]]]:
        """Deal one time bucket's events (``rows`` of ``n``) into windows of ``max_events``."""
        out: list[tuple[VersionWindow, slice | npt.NDArray[np.bool_]]] = []
        while len(rows):
            room = self._max_events - window.n - dealt.get(id(window), 0)
            part, rows = rows[:room], rows[room:]
            mask = np.zeros(n, dtype=np.bool_)
            mask[part] = True
            out.append((window, mask))
            dealt[id(window)] = dealt.get(id(window), 0) + len(part)
            if len(part) == room:  # full: closes at the next close_ready; a new one opens
                self._full.append(window)
                self._touched.pop(id(window), None)
                window = self._open[key][window.start] = VersionWindow(
                    key[0], key[1], window.system_version, window.start, window.seconds
                )
                self._touched[id(window)] = now
        return out

    def close_ready(self, now: float) -> list[VersionWindow]:
        """Full count-based windows, and windows past the watermark or idle; oldest first."""
        closed: list[VersionWindow] = []
        for key, opened in self._open.items():
            grace = self._policy(key[0]).close_grace_s
            watermark = self._watermark.get(key, -np.inf)
            for start in sorted(opened):
                w = opened[start]
                passed = watermark >= w.end + self._lateness_s
                idle = now >= w.end + grace and now - self._touched.get(id(w), 0.0) >= self._idle_s
                if passed or idle:
                    closed.append(w)
        for w in closed:
            del self._open[w.key][w.start]
            self._touched.pop(id(w), None)
            self._closed_until[w.key] = max(self._closed_until.get(w.key, -np.inf), w.end)
        full, self._full = self._full, []
        return sorted(full + closed, key=lambda w: (w.key, w.start))

    def drop(self, key: VersionKey) -> None:
        self._full = [w for w in self._full if w.key != key]
        for w in self._open.pop(key, {}).values():
            self._touched.pop(id(w), None)
        self._closed_until.pop(key, None)
        self._watermark.pop(key, None)
