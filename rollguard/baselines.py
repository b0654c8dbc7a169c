"""Baselines: what good looks like for one model version, one snapshot per signal.

Built from a table (``rollguard baseline import``, signed with the deployer key) or from the
first events of a version marked known good (the detector captures it and signs it with its
own), and published to the compacted baselines topic.
Signals are named ``prediction``, ``feature:<name>`` and ``metric:<name>``.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from rollguard.errors import UsageError
from rollguard.events import BaselineSnapshot

#: Bins of the fine grid every numeric signal is counted on: quantiles at steps of 0.5 %, so
#: an approximate KS D from counts is within about one bin's mass of the exact one.
FINE_BINS = 200
#: Cap of the reference sample a snapshot carries (what the exact KS test runs against).
REFERENCE_CAP = 2_000
#: A baseline from fewer rows than this is refused: its quantiles would be noise.
MIN_ROWS = 200


@dataclass(frozen=True)
class Grid:
    """Interior bin edges of one numeric signal, plus the reference range.

    Bin k holds edges[k-1] < x <= edges[k], so cumulative counts are P(X <= edge) exactly.
    """

    edges: npt.NDArray[np.float64]
    low: float
    high: float

    @property
    def bins(self) -> int:
        return len(self.edges) + 1

    def count(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        idx = np.searchsorted(self.edges, values, side="left")
        return np.bincount(idx, minlength=self.bins).astype(np.int64)


def grid_from_sample(values: npt.NDArray[np.float64], bins: int = FINE_BINS) -> Grid:
    """Edges at the sample's quantiles; with few distinct values, the values themselves (so
    discrete and tied data keep an exact CDF at every support point)."""
    distinct = np.unique(values)
    if len(distinct) <= bins:
        edges = distinct
    else:
        edges = np.unique(np.quantile(values, np.arange(1, bins) / bins))
    return Grid(edges.astype(np.float64), float(distinct[0]), float(distinct[-1]))


#: What a checksum leaves out: the envelope (id, time) and who signed it, so signing a sealed
#: snapshot (the signature covers the checksum) leaves its checksum true.
_NOT_CHECKSUMMED = {"event_id", "ts", "checksum", "key_id", "signature"}


def checksum(snapshot: BaselineSnapshot) -> str:
    """SHA-256 of the canonical body: every field but event_id, ts, checksum and the
    signature (key_id, signature), keys sorted."""
    body = snapshot.model_dump(mode="json", by_alias=True, exclude=_NOT_CHECKSUMMED)
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def seal(snapshot: BaselineSnapshot) -> BaselineSnapshot:
    return snapshot.model_copy(update={"checksum": checksum(snapshot)})


def numeric_snapshot(
    model_id: str,
    model_version: str,
    signal: str,
    values: npt.NDArray[np.float64],
    *,
    nulls: int = 0,
    rng: np.random.Generator | None = None,
) -> BaselineSnapshot:
    """Snapshot of a numeric signal: capped reference sample, fine quantile edges, counts."""
    rng = rng or np.random.default_rng(0)
    grid = grid_from_sample(values)
    reference = values if len(values) <= REFERENCE_CAP else rng.choice(values, REFERENCE_CAP, False)
    total = len(values) + nulls
    return seal(
        BaselineSnapshot(
            model_id=model_id,
            model_version=model_version,
            signal=signal,
            n=len(values),
            reference=[float(v) for v in reference],
            bin_edges=[float(e) for e in grid.edges],
            counts=[int(c) for c in grid.count(values)],
            rates={"null_rate": nulls / total if total else 0.0, "min": grid.low, "max": grid.high},
        )
    )


def categorical_snapshot(
    model_id: str, model_version: str, signal: str, values: Sequence[str | None]
) -> BaselineSnapshot:
    labels = [v for v in values if v is not None]
    counts: dict[str, int] = {}
    for v in labels:
        counts[v] = counts.get(v, 0) + 1
    return seal(
        BaselineSnapshot(
            model_id=model_id,
            model_version=model_version,
            signal=signal,
            n=len(labels),
            categories={k: c / len(labels) for k, c in sorted(counts.items())} if labels else {},
            rates={"null_rate": (len(values) - len(labels)) / len(values) if values else 0.0},
        )
    )


def metric_snapshot(
    model_id: str, model_version: str, signal: str, rate: float, n: float, successes: float
) -> BaselineSnapshot:
    """A business metric: its rate (mean per event, or numerator/denominator) and counts."""
    return seal(
        BaselineSnapshot(
            model_id=model_id,
            model_version=model_version,
            signal=signal,
            n=round(n),
            rates={"rate": rate, "successes": successes, "n": n},
        )
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_table(path: Path) -> dict[str, list[Any]]:
    """Columns of a CSV (header row; empty cell = null) or Parquet file, by name."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise UsageError(f"{path}: not a readable Parquet file ({exc})") from None
        return {name: table.column(name).to_pylist() for name in table.column_names}
    if suffix != ".csv":
        raise UsageError(f"{path}: unsupported file type {suffix!r}; use .csv or .parquet")
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise UsageError(f"{path}: empty file (no header row)")
    header, body = rows[0], rows[1:]
    columns: dict[str, list[Any]] = {name: [] for name in header}
    for lineno, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise UsageError(f"{path}:{lineno}: {len(row)} cells, the header has {len(header)}")
        for name, cell in zip(header, row, strict=True):
            columns[name].append(cell if cell != "" else None)
    for name, cells in columns.items():
        present = [c for c in cells if c is not None]
        if present and all(_is_number(c) for c in present):
            columns[name] = [float(c) if c is not None else None for c in cells]
    return columns


def snapshots_from_table(
    model_id: str,
    model_version: str,
    columns: dict[str, list[Any]],
    *,
    source: str,
    min_rows: int = MIN_ROWS,
) -> list[BaselineSnapshot]:
    """One snapshot per column; UsageError naming the column or the row count when wrong.

    Columns: ``prediction`` (required), ``feature:<name>``, ``metric:<name>`` (numeric, one
    value per prediction, e.g. 0/1 clicks for a CTR or the cost of the prediction).
    """
    if "prediction" not in columns:
        raise UsageError(
            f"{source}: no 'prediction' column (columns: {', '.join(columns) or 'none'})"
        )
    bad = [
        c for c in columns if c != "prediction" and not c.startswith(("feature:", "metric:"))
    ] + [c for c in columns if c in ("feature:", "metric:")]
    if bad:
        raise UsageError(
            f"{source}: unexpected column {bad[0]!r}; allowed: prediction, feature:<name>, "
            "metric:<name>"
        )
    rows = len(columns["prediction"])
    if rows < min_rows:
        raise UsageError(f"{source}: {rows} rows, a baseline needs at least {min_rows}")
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(source.encode()).digest()[:4]))
    out: list[BaselineSnapshot] = []
    for name, cells in columns.items():
        present = [c for c in cells if c is not None]
        if not present:
            raise UsageError(f"{source}: column {name!r} has no values")
        numeric = all(isinstance(c, int | float) and not isinstance(c, bool) for c in present)
        if numeric:
            values = np.asarray(present, dtype=np.float64)
            if not np.isfinite(values).all():
                row = next(i for i, c in enumerate(cells) if c is not None and not math.isfinite(c))
                raise UsageError(f"{source}: column {name!r} row {row + 1}: not a finite number")
        if name.startswith("metric:"):
            if not numeric:
                raise UsageError(f"{source}: column {name!r} must be numeric")
            out.append(
                metric_snapshot(
                    model_id,
                    model_version,
                    name,
                    float(values.mean()),
                    len(values),
                    float(values.sum()),
                )
            )
        elif numeric:
            out.append(
                numeric_snapshot(
                    model_id,
                    model_version,
                    name,
                    values,
                    nulls=len(cells) - len(present),
                    rng=rng,
                )
            )
        else:
            out.append(
                categorical_snapshot(
                    model_id, model_version, name, [None if c is None else str(c) for c in cells]
                )
            )
    return out


def snapshot_key(snapshot: BaselineSnapshot) -> bytes:
    """Compaction key: the latest snapshot per (model, version, signal) is the one kept."""
    return f"{snapshot.model_id}\x1f{snapshot.model_version}\x1f{snapshot.signal}".encode()


async def publish(producer: Any, topic: str, snapshots: Sequence[BaselineSnapshot]) -> None:
    """Send snapshots keyed per signal (compaction) but partitioned by model_id, like every
    other event of the model, so whoever owns the model's partition sees its baselines. They
    go as given: signed already by whoever built them (the detector takes no other)."""
    from aiokafka.partitioner import DefaultPartitioner

    partitioner = DefaultPartitioner()
    partitions = sorted(await producer.partitions_for(topic))
    for s in snapshots:
        partition = partitioner(s.model_id.encode(), partitions, partitions)
        await producer.send_and_wait(topic, s.encode(), key=snapshot_key(s), partition=partition)
