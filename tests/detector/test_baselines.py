"""Baselines: snapshots from tables, checksums, refusals that name what is wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rollguard import baselines as bl
from rollguard.errors import UsageError


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_csv_becomes_one_snapshot_per_column(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [
        f"{rng.normal():.6f},{rng.normal():.6f},{'ab'[i % 2]},{i % 10 == 0:d}" for i in range(500)
    ]
    path = _csv(tmp_path / "b.csv", "prediction,feature:f0,feature:city,metric:ctr", rows)
    snaps = bl.snapshots_from_table("m", "v1", bl.read_table(path), source=str(path))
    by = {s.signal: s for s in snaps}
    assert set(by) == {"prediction", "feature:f0", "feature:city", "metric:ctr"}
    pred = by["prediction"]
    assert pred.n == 500 and len(pred.reference) == 500 and sum(pred.counts) == 500
    assert len(pred.bin_edges) == bl.FINE_BINS - 1
    assert by["feature:city"].categories == {"a": 0.5, "b": 0.5}
    assert by["metric:ctr"].rates["rate"] == pytest.approx(0.1)
    assert all(s.checksum == bl.checksum(s) for s in snaps)
    tampered = pred.model_copy(update={"counts": [*pred.counts[:-1], 0]})
    assert bl.checksum(tampered) != pred.checksum


def test_parquet_reads_like_csv(tmp_path: Path) -> None:
    table = pa.table({"prediction": [float(i) for i in range(300)], "feature:x": ["a"] * 300})
    pq.write_table(table, tmp_path / "b.parquet")
    snaps = bl.snapshots_from_table(
        "m", "v1", bl.read_table(tmp_path / "b.parquet"), source="b.parquet"
    )
    assert {s.signal for s in snaps} == {"prediction", "feature:x"}


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        (
            "score,feature:f0",
            ["1,2"] * 300,
            r"no 'prediction' column \(columns: score, feature:f0\)",
        ),
        ("prediction,colour", ["1,2"] * 300, r"unexpected column 'colour'; allowed: prediction"),
        ("prediction,feature:f0", ["1,2"] * 10, r"10 rows, a baseline needs at least 200"),
        ("prediction,metric:ctr", ["1,x"] * 300, r"column 'metric:ctr' must be numeric"),
    ],
)
def test_bad_tables_are_refused_naming_the_problem(
    tmp_path: Path, header: str, rows: list[str], message: str
) -> None:
    path = _csv(tmp_path / "b.csv", header, rows)
    with pytest.raises(UsageError, match=message):
        bl.snapshots_from_table("m", "v1", bl.read_table(path), source=str(path))


def test_unsupported_file_type_is_refused(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text("{}")
    with pytest.raises(UsageError, match=r"unsupported file type '.json'"):
        bl.read_table(tmp_path / "b.json")


def test_discrete_values_become_their_own_edges() -> None:
    grid = bl.grid_from_sample(np.array([1.0, 1.0, 2.0, 3.0, 3.0]))
    assert list(grid.edges) == [1.0, 2.0, 3.0]
    assert list(grid.count(np.array([0.5, 1.0, 2.5, 3.0, 9.0]))) == [2, 0, 2, 1]
