"""Prediction and latency batches decoded into columns, without a Python object per event.

Three paths, tried in order, all producing the same ``PredictionBatch``:

1. **Arrow** — the batch's values joined into one newline-delimited buffer and parsed by
   pyarrow's JSON reader into typed columns (C++, GIL released: the detector runs the parse
   on a worker thread while the event loop folds the previous batch), then validated column
   by column with Arrow compute kernels.
2. **orjson** — one ``orjson.loads`` for the whole batch and a column-wise shape check, for
   batches Arrow cannot type (a topic mixing numeric and label predictions, booleans).
3. **pydantic** — ``rollguard.bus.decode_batch`` (per record only when the batch fails), so
   every dead-letter reason is pydantic's.

Paths 1 and 2 accept only documents ``PredictionEvent`` would accept as they are (exact JSON
types, bounds, no unknown keys, the schema tag, a UTC timestamp, finite numbers, valid
UTF-8, one object per record); anything else goes one path down. A missing feature and a
feature sent as ``null`` stay different things: Arrow reads both as null, so rows with a
null feature are looked at again. Latency events take path 1 or 3 (``LatencyBatch``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain, compress, repeat
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
from aiokafka import ConsumerRecord

from rollguard.bus import Rejected, decode_batch
from rollguard.events import (
    MAX_FEATURE_NAME,
    MAX_LABEL,
    MAX_LATENCY_MS,
    Event,
    LatencyEvent,
    PredictionEvent,
)
from rollguard_services.detector import arrow

Record: TypeAlias = "ConsumerRecord[Any, Any]"
VersionKey: TypeAlias = tuple[str, str]
# Numeric columns are float arrays (NaN = null); anything else a list of the JSON values.
Column: TypeAlias = "npt.NDArray[np.float64] | list[Any]"
Rows: TypeAlias = "npt.NDArray[np.intp]"

_TAG = PredictionEvent.SCHEMA


def _json_keys(model: type[Event]) -> frozenset[str]:
    return frozenset(f.alias or name for name, f in model.model_fields.items())


_KEYS = _json_keys(PredictionEvent)
_LATENCY_KEYS = _json_keys(LatencyEvent)
_SCALAR = frozenset({float, int, str, type(None)})
# What both fast paths take as a time: ISO 8601 in UTC, year 0001 or later, fields in range
# (an impossible date such as 02-30 then fails the conversion). Anything else: pydantic.
_UTC_STAMP = (
    r"^([1-9]\d{3}|0[1-9]\d{2}|00[1-9]\d|000[1-9])-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
    r"T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|\+00:00)$"
)
_STAMP = re.compile(_UTC_STAMP, re.ASCII)
_NUMERIC_TYPES = (pa.float64(), pa.int64())


@dataclass
class Batch:
    """What every decoded batch has: the accepted records, their event time (epoch s) and
    their rows grouped by model version, in order of first appearance."""

    records: list[Record]
    ts: npt.NDArray[np.float64]
    groups: dict[VersionKey, Rows]
    system_version: pa.Array | list[str | None] | None
    path: str  # which decoder took the batch: arrow / orjson / pydantic

    def __len__(self) -> int:
        return len(self.records)

    def system_version_of(self, row: int) -> str | None:
        if self.system_version is None:
            return None
        value: str | None = (
            self.system_version[row]
            if isinstance(self.system_version, list)
            else self.system_version[row].as_py()
        )
        return value


@dataclass
class LatencyBatch(Batch):
    """Accepted latency events of one batch: milliseconds and whether each was an error."""

    latency_ms: npt.NDArray[np.float64]
    errors: npt.NDArray[np.bool_]


@dataclass
class PredictionBatch(Batch):
    """Accepted predictions of one batch, column by column.

    ``missing`` holds, per feature name, which rows lack that key (as opposed to sending it
    as null); a name present in every row has no entry.
    """

    prediction: Column
    features: dict[str, Column]
    request_id: pa.Array  # string
    missing: dict[str, npt.NDArray[np.bool_]] = field(default_factory=dict)
    #: Which rows are shadow predictions (``PredictionEvent.shadow``); None: none are.
    shadow: npt.NDArray[np.bool_] | None = None

    def split_shadow(self, rows: Rows) -> tuple[Rows, Rows]:
        """``rows`` as (served, shadow): a version's own traffic and its shadow scoring."""
        if self.shadow is None:
            return rows, rows[:0]
        marked = self.shadow[rows]
        return rows[~marked], rows[marked]

    def request_ids(self, rows: Rows) -> pa.Array:
        return self.request_id.take(arrow.indices(rows))

    def feature_names(self, row: int) -> frozenset[str]:
        """The feature keys row ``row`` sent (null values included)."""
        return frozenset(
            n for n in self.features if n not in self.missing or not self.missing[n][row]
        )

    def lacking(self, name: str, rows: Rows) -> Rows:
        """Positions (within ``rows``) of the rows that did not send feature ``name``."""
        if name not in self.features:
            return np.arange(len(rows))
        absent = self.missing.get(name)
        if absent is None:
            return np.zeros(0, dtype=np.intp)
        return np.flatnonzero(absent[rows])


def take(column: Column, rows: Rows) -> Column:
    """The values of ``column`` at ``rows``."""
    if isinstance(column, np.ndarray):
        return column[rows]
    return [column[i] for i in rows.tolist()]


@dataclass(frozen=True)
class Parsed:
    """A batch as Arrow parsed it (``table`` None: Arrow could not; the next path decides)."""

    values: list[Any]
    table: pa.Table | None


@dataclass(frozen=True)
class Joined:
    """A batch's values, and the newline-delimited buffer Arrow reads (None: not for Arrow),
    with the fields Arrow must read as strings."""

    values: list[Any]
    buffer: bytes | None
    strings: tuple[str, ...]


# Required string fields, read as strings whatever they look like: left to inference, a
# batch of whole-second stamps (or a version named "2026-11-22") would become a timestamp
# column and miss the fast path. Optional ones stay inferred: an absent field would come
# back as a null column, which is not the same thing.
PREDICTION_STRINGS = ("ts", "model_id", "model_version", "request_id")
LATENCY_STRINGS = (*PREDICTION_STRINGS, "status")


def join_values(records: list[Record], strings: tuple[str, ...] = PREDICTION_STRINGS) -> Joined:
    """The batch as one newline-delimited buffer (Python work: done where the GIL is held)."""
    values = [r.value for r in records]
    fit = _one_object_each(values) and _shallow(values)
    return Joined(values, b"\n".join(values) if fit else None, strings)


#: Arrow's JSON reader recurses once per level of nesting and overflows the thread's stack
#: (SIGSEGV, the whole detector gone) somewhere past 10,000 levels; orjson and pydantic stop at
#: 1,024 and 200 with an error. No event nests deeper than two, so a batch goes to Arrow only
#: when no value can hold more than this many levels: one no longer than this, or with no
#: more brackets than this.
ARROW_MAX_DEPTH = 1_024


def _shallow(values: list[bytes]) -> bool:
    if max(map(len, values)) <= ARROW_MAX_DEPTH:  # the common case, one pass in C
        return True
    return all(
        len(v) <= ARROW_MAX_DEPTH or v.count(b"{") + v.count(b"[") <= ARROW_MAX_DEPTH
        for v in values
    )


def _one_object_each(values: list[Any]) -> bool:
    """Whether joining ``values`` can only give one document per value.

    Every value starts with '{' and ends with '}', so no document can run from one value
    into the next: after a closing '}' the parser wants ',' or '}', never the '{' that opens
    the next value (nor a key after ','). Then each value is one document or more, and a
    value holding two shows up as a row count above the number of values.
    """
    try:
        return (
            bool(values)
            and all(map(bytes.startswith, values, repeat(b"{")))
            and all(map(bytes.endswith, values, repeat(b"}")))
        )
    except TypeError:  # a tombstone (None) or a non-bytes value
        return False


def parse_joined(joined: Joined) -> Parsed:
    """Arrow's JSON parse of a joined batch: one call that runs with the GIL released, so a
    worker thread can do it while the event loop goes on."""
    if joined.buffer is None:
        return Parsed(joined.values, None)
    try:
        table = pj.read_json(
            pa.BufferReader(joined.buffer),
            read_options=pj.ReadOptions(use_threads=False, block_size=len(joined.buffer) + 1),
            parse_options=pj.ParseOptions(
                explicit_schema=pa.schema([(name, pa.string()) for name in joined.strings]),
                unexpected_field_behavior="infer",
            ),
        )
        # The reader does not check UTF-8: a bad byte would fail later, on the event loop.
        table.validate(full=True)
    except (pa.ArrowException, UnicodeError):  # UnicodeError: a key that is not UTF-8
        return Parsed(joined.values, None)
    return Parsed(joined.values, table)


def parse_records(records: list[Record], strings: tuple[str, ...] = PREDICTION_STRINGS) -> Parsed:
    return parse_joined(join_values(records, strings))


def decode_predictions(
    records: list[Record], parsed: Parsed | None = None
) -> tuple[PredictionBatch, list[Rejected]]:
    """Decode and validate a batch; what fails is returned as Rejected with pydantic's reason.

    ``parsed``: ``parse_records(records)`` done already (on a worker thread).
    """
    if not records:
        return _from_docs([], [], np.zeros(0), "orjson"), []
    parsed = parsed or parse_records(records)
    batch = _from_arrow(records, parsed)
    if batch is not None:
        return batch, []
    if not _one_object_each(parsed.values):
        return _from_events(records)
    try:
        # One parse for the whole batch: per-call overhead is a large share of a small event.
        docs: list[Any] = orjson.loads(b"[" + b",".join(parsed.values) + b"]")
    except (orjson.JSONDecodeError, TypeError):
        return _from_events(records)
    if len(docs) != len(records):  # a value holding "a, b" would shift every row after it
        return _from_events(records)
    if not _fast_batch(docs):
        return _from_events(records)
    try:
        ts = _epoch_seconds([doc["ts"] for doc in docs])
    except ValueError:
        return _from_events(records)
    return _from_docs(list(records), docs, ts, "orjson"), []


# --- path 1: Arrow -----------------------------------------------------------------------------


def _from_arrow(records: list[Record], parsed: Parsed) -> PredictionBatch | None:
    """The whole batch through Arrow, or None when any of it needs a slower path."""
    try:
        cols = _arrow_columns(records, parsed, _KEYS)
        return None if cols is None else _arrow_batch(records, parsed.values, cols)
    except _NOT_FOR_ARROW:
        return None


class _Refused(Exception):
    """A column the Arrow path does not take as it is (the next path decides)."""


_NOT_FOR_ARROW = (
    pa.ArrowException,
    _Refused,
    UnicodeDecodeError,
    orjson.JSONDecodeError,
)


def _arrow_columns(
    records: list[Record], parsed: Parsed, keys: frozenset[str]
) -> dict[str, pa.Array] | None:
    """The parsed table's columns, if it has one row per record and only known keys."""
    table = parsed.table
    if table is None or table.num_rows != len(records) or not keys.issuperset(table.column_names):
        return None
    return {name: table.column(name).combine_chunks() for name in table.column_names}


def _envelope(
    cols: dict[str, pa.Array], tag: str
) -> tuple[npt.NDArray[np.float64], dict[VersionKey, Rows], pa.Array | None]:
    """The fields every model event has, checked: event time, version groups, system version."""
    for name in ("model_id", "model_version"):
        _require_ids(cols.get(name), 256)
    if "event_id" in cols:
        _require_ids(cols["event_id"], 128)
    if "schema" in cols:
        tags = cols["schema"]
        _require(tags.type == pa.string() and tags.null_count == 0)
        _require(pc.dictionary_encode(tags).dictionary.to_pylist() == [tag])
    system = _optional_strings(cols.get("system_version"))
    stamps = _present(cols, "ts")
    _require(stamps.type == pa.string() and stamps.null_count == 0)
    _require(pc.all(pc.match_substring_regex(stamps, _UTC_STAMP)).as_py())
    micros = arrow.values(stamps.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()), np.int64)
    groups = _arrow_groups(cols["model_id"], cols["model_version"])
    return _seconds(micros), groups, system


def _optional_strings(column: pa.Array | None, limit: int = 256) -> pa.Array | None:
    """A nullable string field of at most ``limit`` characters (None: never sent)."""
    if column is None or column.type == pa.null():
        return None
    _require(column.type == pa.string())
    _require((pc.max(pc.utf8_length(column)).as_py() or 0) <= limit)
    return column


def _arrow_batch(
    records: list[Record], values: list[Any], cols: dict[str, pa.Array]
) -> PredictionBatch:
    ts, groups, system = _envelope(cols, _TAG)
    _require_ids(cols.get("request_id"), 256)
    score = cols.get("score")
    if score is not None and score.type != pa.null():
        _numeric(score)

    prediction = _present(cols, "prediction")
    _require(prediction.null_count == 0)
    if prediction.type in _NUMERIC_TYPES:
        predicted: Column = _numeric(prediction)
    else:
        _optional_strings(prediction, MAX_LABEL)
        predicted = prediction.to_pylist()

    features, missing = _arrow_features(cols.get("features"), values)
    return PredictionBatch(
        records=list(records),
        ts=ts,
        groups=groups,
        system_version=system,
        path="arrow",
        prediction=predicted,
        features=features,
        request_id=cols["request_id"],
        missing=missing,
        shadow=_arrow_shadow(cols.get("shadow"), values),
    )


def _arrow_shadow(column: pa.Array | None, values: list[Any]) -> npt.NDArray[np.bool_] | None:
    """The shadow flags: JSON booleans, absent meaning false. Arrow reads an absent key and a
    null alike, so a row without a flag whose bytes name it (``"shadow": null``, say) goes to
    the next path, as does any other type: pydantic refuses what StrictBool does."""
    if column is None:
        return None
    _require(column.type in (pa.bool_(), pa.null()))
    if column.null_count:
        absent = np.flatnonzero(arrow.nulls(column)).tolist()
        _require(not any(b'"shadow"' in values[i] for i in absent))
    if column.type == pa.null():
        return None
    return _flags(column.fill_null(False).to_numpy(zero_copy_only=False).astype(np.bool_))


def _flags(flags: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_] | None:
    return flags if flags.any() else None


def _arrow_latency(records: list[Record], cols: dict[str, pa.Array]) -> LatencyBatch:
    ts, groups, system = _envelope(cols, LatencyEvent.SCHEMA)
    _require_ids(cols.get("request_id"), 256)
    latency = _present(cols, "latency_ms")
    _require(latency.null_count == 0)
    ms = _numeric(latency)
    _require(bool((ms >= 0).all() and (ms <= MAX_LATENCY_MS).all()))
    status = _present(cols, "status")
    _require(status.type == pa.string() and status.null_count == 0)
    codes = pc.dictionary_encode(status)
    labels = codes.dictionary.to_pylist()
    _require(set(labels) <= {"ok", "error"})
    errors = (
        arrow.values(codes.indices, np.int32) == labels.index("error")
        if "error" in labels
        else np.zeros(len(status), dtype=np.bool_)
    )
    _optional_strings(cols.get("error_kind"))
    return LatencyBatch(list(records), ts, groups, system, "arrow", ms, errors)


def decode_latency(
    records: list[Record], parsed: Parsed | None = None
) -> tuple[LatencyBatch, list[Rejected]]:
    """Latency events as columns: Arrow for a batch it takes whole, else pydantic."""
    parsed = parsed or parse_records(records, LATENCY_STRINGS)
    try:
        cols = _arrow_columns(records, parsed, _LATENCY_KEYS)
        if cols is not None:
            return _arrow_latency(records, cols), []
    except _NOT_FOR_ARROW:
        pass
    good, rejected = decode_batch(records, LatencyEvent)
    events = [e for _, e in good]
    return (
        LatencyBatch(
            records=[r for r, _ in good],
            ts=np.array([e.ts.timestamp() for e in events], dtype=np.float64),
            groups=_groups((e.model_id, e.model_version) for e in events),
            system_version=[e.system_version for e in events],
            path="pydantic",
            latency_ms=np.array([e.latency_ms for e in events], dtype=np.float64),
            errors=np.array([e.status == "error" for e in events], dtype=np.bool_),
        ),
        rejected,
    )


def _present(cols: dict[str, pa.Array], name: str) -> pa.Array:
    column = cols.get(name)
    if column is None:
        raise _Refused
    return column


def _require(ok: Any) -> None:
    if not ok:
        raise _Refused


def _require_ids(column: pa.Array | None, limit: int) -> None:
    _require(column is not None and column.type == pa.string() and column.null_count == 0)
    lengths = pc.min_max(pc.utf8_length(column)).as_py()
    _require(lengths["min"] >= 1 and lengths["max"] <= limit)


def _numeric(column: pa.Array) -> npt.NDArray[np.float64]:
    """A number column as floats (null → NaN); NaN or ±inf sent as such is refused."""
    _require(column.type in _NUMERIC_TYPES)
    if column.type == pa.float64():
        _require(pc.all(pc.is_finite(column)).as_py() is not False)
    out = arrow.values(column, np.float64 if column.type == pa.float64() else np.int64).astype(
        np.float64
    )
    out[arrow.nulls(column)] = np.nan
    return out


def _arrow_features(
    column: pa.Array | None, values: list[Any]
) -> tuple[dict[str, Column], dict[str, npt.NDArray[np.bool_]]]:
    if column is None or column.type == pa.null():
        return {}, {}
    _require(pa.types.is_struct(column.type))
    features: dict[str, Column] = {}
    nulls = arrow.nulls(column)
    for i, spec in enumerate(column.type):
        _require(len(spec.name) <= MAX_FEATURE_NAME)
        child = column.field(i)
        if child.type in _NUMERIC_TYPES:
            features[spec.name] = _numeric(child)
        elif child.type == pa.string():
            _optional_strings(child, MAX_LABEL)
            features[spec.name] = child.to_pylist()
        else:
            _require(child.type == pa.null())
            features[spec.name] = np.full(len(child), np.nan)
        nulls |= arrow.nulls(child)
    missing: dict[str, npt.NDArray[np.bool_]] = {}
    for row in np.flatnonzero(nulls).tolist():
        # Null here may be a key sent as null or a key not sent at all: the document says.
        sent = orjson.loads(values[row]).get("features") or {}
        for name in features:
            if name not in sent:
                missing.setdefault(name, np.zeros(len(column), dtype=np.bool_))[row] = True
    return features, missing


def _arrow_groups(model_ids: pa.Array, versions: pa.Array) -> dict[VersionKey, Rows]:
    ids = pc.dictionary_encode(model_ids)
    vers = pc.dictionary_encode(versions)
    _require(ids.indices.type == vers.indices.type == pa.int32())
    codes = arrow.values(ids.indices, np.int32).astype(np.int64) * len(
        vers.dictionary
    ) + arrow.values(vers.indices, np.int32)
    id_names, version_names = ids.dictionary.to_pylist(), vers.dictionary.to_pylist()
    keys, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    rows_of = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
    groups: dict[VersionKey, Rows] = {}
    for j in np.argsort(first).tolist():  # in order of first appearance, like the other paths
        code = int(keys[j])
        groups[(id_names[code // len(version_names)], version_names[code % len(version_names)])] = (
            rows_of[j]
        )
    return groups


# --- path 2: orjson ----------------------------------------------------------------------------


def _types(values: list[Any]) -> set[type]:
    return set(map(type, values))


def _fast_batch(docs: list[Any]) -> bool:
    """True only for documents PredictionEvent accepts as they are, checked column by column
    so the loops run in C (map, set)."""
    if _types(docs) != {dict} or not all(map(_KEYS.issuperset, docs)):
        return False
    for name in ("model_id", "model_version", "request_id"):
        column = [d.get(name) for d in docs]
        if _types(column) != {str} or not min(map(len, column)) > 0 or max(map(len, column)) > 256:
            return False
    stamps = [d.get("ts") for d in docs]
    if _types(stamps) != {str}:
        return False
    if not all(map(_STAMP.fullmatch, stamps)):
        return False
    predictions = [d.get("prediction") for d in docs]
    if not _types(predictions) <= {float, int, str} or not _short_labels(predictions):
        return False
    if not _types([d.get("score") for d in docs]) <= {float, int, type(None)}:
        return False
    features = [d.get("features") for d in docs]
    if not _types(features) <= {dict, type(None)}:
        return False
    present = [f for f in features if f]
    if present:
        feature_values = [v for f in present for v in f.values()]
        if not _types(feature_values) <= _SCALAR or not _short_labels(feature_values):
            return False
        if max(map(len, chain.from_iterable(present))) > MAX_FEATURE_NAME:
            return False
    systems = [d.get("system_version") for d in docs]
    if not _types(systems) <= {str, type(None)} or any(s and len(s) > 256 for s in systems):
        return False
    if not _types([d.get("shadow", False) for d in docs]) <= {bool}:
        return False
    if any(d.get("schema", _TAG) != _TAG for d in docs):
        return False
    ids = [d["event_id"] for d in docs if "event_id" in d]
    return not ids or (
        _types(ids) == {str} and min(map(len, ids)) > 0 and max(map(len, ids)) <= 128
    )


def _short_labels(values: list[Any]) -> bool:
    labels = [v for v in values if type(v) is str]
    return not labels or max(map(len, labels)) <= MAX_LABEL


def _epoch_seconds(stamps: list[str]) -> npt.NDArray[np.float64]:
    """UTC ISO-8601 stamps ('Z' or '+00:00') to epoch seconds, microsecond precision."""
    naive = [s[:-1] if s[-1] == "Z" else s[:-6] for s in stamps]
    return _seconds(np.array(naive, dtype="datetime64[us]").astype(np.int64))


def _seconds(micros: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Epoch microseconds to seconds exactly as ``datetime.timestamp()`` rounds them (whole
    seconds and fraction apart: a float64 holds every microsecond count only up to 2255)."""
    whole: npt.NDArray[np.float64] = (micros // 1_000_000).astype(np.float64)
    return whole + (micros % 1_000_000) / 1e6


def _from_docs(
    records: list[Record], docs: list[dict[str, Any]], ts: npt.NDArray[np.float64], path: str
) -> PredictionBatch:
    feats = [d.get("features") or {} for d in docs]
    names: set[str] = set().union(*feats)
    missing = {
        name: absent
        for name in names
        if (absent := np.array([name not in f for f in feats], dtype=np.bool_)).any()
    }
    return PredictionBatch(
        records=records,
        ts=ts,
        groups=_groups((d["model_id"], d["model_version"]) for d in docs),
        system_version=[d.get("system_version") for d in docs],
        path=path,
        prediction=[d["prediction"] for d in docs],
        features={name: [f.get(name) for f in feats] for name in sorted(names)},
        request_id=arrow.strings([d["request_id"] for d in docs]),
        missing=missing,
        shadow=_flags(np.array([d.get("shadow", False) for d in docs], dtype=np.bool_)),
    )


def _groups(keys: Iterable[VersionKey]) -> dict[VersionKey, Rows]:
    grouped: dict[VersionKey, list[int]] = {}
    for i, key in enumerate(keys):
        grouped.setdefault(key, []).append(i)
    return {k: np.array(rows, dtype=np.intp) for k, rows in grouped.items()}


# --- path 3: pydantic --------------------------------------------------------------------------


def _from_events(records: list[Record]) -> tuple[PredictionBatch, list[Rejected]]:
    good, rejected = decode_batch(records, PredictionEvent)
    docs = [
        {
            "model_id": e.model_id,
            "model_version": e.model_version,
            "system_version": e.system_version,
            "request_id": e.request_id,
            "prediction": e.prediction,
            "score": e.score,
            "features": e.features,
            "shadow": e.shadow,
        }
        for _, e in good
    ]
    ts = np.array([e.ts.timestamp() for _, e in good], dtype=np.float64)
    return _from_docs([r for r, _ in good], docs, ts, "pydantic"), rejected


def select(column: Column, sel: slice | npt.NDArray[np.bool_]) -> Column:
    """The rows of ``column`` a window takes (a slice or a boolean mask)."""
    if isinstance(column, np.ndarray) or isinstance(sel, slice):
        return column[sel]
    return list(compress(column, sel))


def segment_labels(column: Column) -> list[str | None]:
    """Segment values as the labels fairness counts by (numbers too: '1.0')."""
    values = column.tolist() if isinstance(column, np.ndarray) else column
    return [str(v) for v in values]
