"""Prediction batches: the Arrow, orjson and pydantic paths agree, and no record is lost."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka import ConsumerRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from rollguard_services.detector import decoding as dec
from rollguard_services.detector.decoding import Parsed, PredictionBatch, decode_predictions

TOPIC = "t.predictions"
T0 = datetime(2026, 11, 22, 12, 0, 0, 250_000, tzinfo=UTC)


def _record(offset: int, value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(TOPIC, 0, offset, 0, 0, b"m", value, None, 1, len(value or b""), ())


def _doc(i: int, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": f"e{i}",
        "ts": f"2026-11-22T12:00:{i % 60:02d}.{i:06d}Z",
        "model_id": "m",
        "model_version": f"v{i % 2}",
        "request_id": f"r{i}",
        "prediction": i / 7,
        "features": {"f0": float(i), "city": "ab"[i % 2]},
    }
    doc.update(over)
    return doc


def _records(docs: list[dict[str, Any]]) -> list[ConsumerRecord[bytes, bytes]]:
    return [_record(i, orjson.dumps(d)) for i, d in enumerate(docs)]


def _rows(batch: PredictionBatch) -> dict[str, Any]:
    """Everything a batch says, in plain values, to compare paths with."""
    everything = np.arange(len(batch))
    columns = {"prediction": batch.prediction, **batch.features}
    return {
        "offsets": [r.offset for r in batch.records],
        "ts": batch.ts.tolist(),  # exactly: every path rounds as datetime.timestamp() does
        "groups": {k: v.tolist() for k, v in batch.groups.items()},
        "columns": {
            name: [None if isinstance(v, float) and np.isnan(v) else v for v in list(column)]
            for name, column in columns.items()
        },
        "missing": {name: batch.lacking(name, everything).tolist() for name in batch.features},
        "request_ids": batch.request_ids(everything).to_pylist(),
        "system_versions": [batch.system_version_of(i) for i in range(len(batch))],
    }


def _every_path(records: list[ConsumerRecord[bytes, bytes]]) -> dict[str, PredictionBatch]:
    arrow, none = decode_predictions(records)
    values = [r.value for r in records]
    orjson_path, none2 = decode_predictions(records, Parsed(values, None))
    pydantic, none3 = dec._from_events(records)
    assert none == none2 == none3 == []
    return {"arrow": arrow, "orjson": orjson_path, "pydantic": pydantic}


def test_the_three_paths_agree_on_good_input() -> None:
    docs = [_doc(i) for i in range(40)]
    docs[3]["features"]["f0"] = None  # sent as null
    del docs[5]["features"]["city"]  # not sent at all
    docs[7]["features"] = None
    docs[9]["system_version"] = "sys-9"
    docs[11]["prediction"] = 3  # an int is a number too
    docs[13]["ts"] = "2026-11-22T12:00:13+00:00"
    docs[15]["score"] = 0.5
    docs[17]["ts"] = "0001-01-01T00:00:00.047515Z"  # far from 1970: float64 rounding shows
    docs[19]["ts"] = "9999-12-31T23:59:59.023758Z"
    docs[21]["features"]["city"] = "é" * 1_024  # the longest label: 1,024 characters
    docs[23]["features"]["n" * 256] = 1.0  # the longest feature name
    batches = _every_path(_records(docs))
    assert {name: b.path for name, b in batches.items()} == {
        "arrow": "arrow",
        "orjson": "orjson",
        "pydantic": "pydantic",
    }
    seen = {name: _rows(b) for name, b in batches.items()}
    assert seen["arrow"] == seen["orjson"] == seen["pydantic"]
    arrow = seen["arrow"]
    assert list(arrow["groups"]) == [("m", "v0"), ("m", "v1")]  # in order of first appearance
    assert arrow["columns"]["f0"][3] is None and 3 not in arrow["missing"]["f0"]
    assert arrow["missing"]["city"] == [5, 7] and arrow["missing"]["f0"] == [7]
    assert arrow["ts"][0] == pytest.approx(datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC).timestamp())


def test_shadow_predictions_are_told_apart_alike_on_every_path() -> None:
    docs = [_doc(i) for i in range(20)]
    for i in (2, 3, 11):
        docs[i]["shadow"] = True
    docs[4]["shadow"] = False
    batches = _every_path(_records(docs))
    assert {b.path for b in batches.values()} == {"arrow", "orjson", "pydantic"}
    for batch in batches.values():
        rows = batch.groups[("m", "v1")]
        served, shadow = batch.split_shadow(rows)
        assert shadow.tolist() == [3, 11] and 3 not in served.tolist()
        assert len(served) + len(shadow) == len(rows)
    # none marked: nothing is shadow, and no mask is kept
    plain = _every_path(_records([_doc(i) for i in range(4)]))
    assert all(b.shadow is None for b in plain.values())


@pytest.mark.parametrize("flag", [None, "true", 1])
def test_a_shadow_flag_that_is_not_a_boolean_is_refused(flag: object) -> None:
    docs = [_doc(i) for i in range(6)]
    docs[2]["shadow"] = flag
    batch, rejected = decode_predictions(_records(docs))
    assert [r.record.offset for r in rejected] == [2]
    assert "shadow" in rejected[0].error
    assert len(batch) == 5


def test_a_null_feature_and_a_missing_one_stay_apart_on_the_arrow_path() -> None:
    docs = [
        _doc(0),
        _doc(1, features={"f0": None, "city": "a"}),
        _doc(2, features={"city": "b"}),
        _doc(3, features=None),
    ]
    batch, rejected = decode_predictions(_records(docs))
    assert batch.path == "arrow" and rejected == []
    assert [sorted(batch.feature_names(i)) for i in range(4)] == [
        ["city", "f0"],
        ["city", "f0"],
        ["city"],
        [],
    ]
    assert batch.lacking("f0", np.arange(4)).tolist() == [2, 3]
    assert batch.lacking("never-sent", np.arange(4)).tolist() == [0, 1, 2, 3]


def test_labels_and_numbers_in_one_batch_take_the_orjson_path() -> None:
    docs = [_doc(0, prediction="cat"), _doc(1, prediction=0.5), _doc(2, prediction="dog")]
    batch, rejected = decode_predictions(_records(docs))
    assert batch.path == "orjson" and rejected == []
    assert batch.prediction == ["cat", 0.5, "dog"]


def _raw(kind: str, i: int) -> bytes | None:
    """One record of a kind: good ones, and the bad input every path must refuse."""
    good = orjson.dumps(_doc(i))
    return {
        "good": good,
        "label": orjson.dumps(_doc(i, prediction="cat")),
        "offset_zone": orjson.dumps(_doc(i, ts="2026-11-22T14:00:00+02:00")),
        "nan": good.replace(orjson.dumps(i / 7), b"NaN"),
        "inf_feature": orjson.dumps(_doc(i)).replace(
            b'"f0":' + orjson.dumps(float(i)), b'"f0":1e999'
        ),
        "tombstone": None,
        "empty": b"",
        "blank": b"   ",
        "two_objects": good + b"\n" + good,
        "unknown_key": orjson.dumps(_doc(i, colour="red")),
        "long_id": orjson.dumps(_doc(i, request_id="x" * 257)),
        "wrong_tag": orjson.dumps(_doc(i, schema="LatencyEvent/v1")),
        "naive_ts": orjson.dumps(_doc(i, ts="2026-11-22T12:00:00")),
        "not_json": b"{nope",
        "array": b"[1, 2]",
        "nested_feature": orjson.dumps(_doc(i, features={"f0": {"a": 1}})),
        "bad_utf8_model": good.replace(b'"model_id":"m"', b'"model_id":"m\xff"'),
        "bad_utf8_feature": good.replace(b'"city":"', b'"city":"\xfe'),
        "bad_utf8_event_id": good.replace(b'"event_id":"e', b'"event_id":"\xffe'),
        "year_zero": orjson.dumps(_doc(i, ts="0000-01-01T00:00:00Z")),
        "hour_24": orjson.dumps(_doc(i, ts="2026-11-22T24:00:00Z")),
        "zone_then_z": orjson.dumps(_doc(i, ts="2026-11-22T12:00:00-05:00Z")),
        "two_zones": orjson.dumps(_doc(i, ts="2026-11-22T12:00:00+01:00+00:00")),
        "dot_z": orjson.dumps(_doc(i, ts="2026-11-22T12:00:00.Z")),
        "ts_newline": orjson.dumps(_doc(i, ts="2026-11-22T12:00:00.123456Z\n")),
        "bad_utf8_key": good[:-1] + b',"\xff":1}',
        "bool_prediction": orjson.dumps(_doc(i, prediction=True)),
        "bool_score": orjson.dumps(_doc(i, score=False)),
        # a label kept per window must not be a megabyte of text (nor a feature's name)
        "long_label": orjson.dumps(_doc(i, prediction="x" * 1_025)),
        "long_feature_value": orjson.dumps(_doc(i, features={"f0": 1.0, "city": "y" * 1_025})),
        "long_feature_name": orjson.dumps(_doc(i, features={"f0": 1.0, "c" * 257: "a"})),
    }[kind]


ACCEPTED = {"good", "label", "offset_zone"}
REFUSED = ["nan", "inf_feature", "tombstone", "empty", "blank", "two_objects", "unknown_key"]
REFUSED += ["long_id", "wrong_tag", "naive_ts", "not_json", "array", "nested_feature"]
REFUSED += ["bad_utf8_model", "bad_utf8_feature", "bad_utf8_event_id", "year_zero", "hour_24"]
REFUSED += ["zone_then_z", "two_zones", "dot_z", "ts_newline", "bad_utf8_key"]
REFUSED += ["bool_prediction", "bool_score"]
REFUSED += ["long_label", "long_feature_value", "long_feature_name"]


@pytest.mark.parametrize("kind", REFUSED)
def test_bad_input_is_refused_with_a_reason_and_the_rest_kept(kind: str) -> None:
    records = [_record(i, _raw("good", i)) for i in range(5)]
    records.insert(2, _record(99, _raw(kind, 99)))
    batch, rejected = decode_predictions(records)
    assert [r.offset for r in batch.records] == [0, 1, 2, 3, 4]
    assert [r.record.offset for r in rejected] == [99]
    assert rejected[0].error and rejected[0].kind in {"malformed", "invalid"}
    assert batch.request_ids(np.arange(5)).to_pylist() == [f"r{i}" for i in range(5)]


def test_a_timestamp_with_another_zone_is_read_in_utc() -> None:
    records = [_record(0, _raw("good", 0)), _record(1, _raw("offset_zone", 1))]
    batch, rejected = decode_predictions(records)
    assert rejected == [] and batch.path == "pydantic"
    assert batch.ts[1] == datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("separator", [b"\n", b","])
def test_a_document_split_over_records_is_not_taken_for_two(separator: bytes) -> None:
    """One event cut in two records, and two events in one record, keep the row count
    (so a count check alone would shift every row); the fast paths must see through it."""
    whole = orjson.dumps(_doc(0))
    cut = whole.index(b'"f0"')
    head, tail = whole[:cut], whole[cut:]
    if separator == b"\n":  # the Arrow path joins with newlines: the tail starts an object
        head, tail = whole[: whole.index(b"{", 1)], whole[whole.index(b"{", 1) :]
    pair = orjson.dumps(_doc(2)) + (b"\n" if separator == b"\n" else b",") + orjson.dumps(_doc(3))
    records = [_record(0, head), _record(1, tail), _record(2, pair), _record(3, _raw("good", 4))]
    batch, rejected = decode_predictions(records)
    assert [r.offset for r in batch.records] == [3]
    assert sorted(r.record.offset for r in rejected) == [0, 1, 2]
    assert batch.request_ids(np.arange(1)).to_pylist() == ["r4"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(sorted(ACCEPTED) + REFUSED), min_size=1, max_size=12))
def test_every_record_is_accepted_or_refused_exactly_once_in_order(kinds: list[str]) -> None:
    records = [_record(i, _raw(kind, i)) for i, kind in enumerate(kinds)]
    batch, rejected = decode_predictions(records)
    accepted = [r.offset for r in batch.records]
    refused = [r.record.offset for r in rejected]
    assert accepted == [i for i, k in enumerate(kinds) if k in ACCEPTED]
    assert sorted(refused) == [i for i, k in enumerate(kinds) if k not in ACCEPTED]
    assert batch.request_ids(np.arange(len(batch))).to_pylist() == [f"r{i}" for i in accepted]
    assert sum(len(rows) for rows in batch.groups.values()) == len(accepted)


def _latency(i: int, **over: Any) -> bytes:
    doc: dict[str, Any] = {
        "ts": f"2026-11-22T12:00:{i % 60:02d}.{i:06d}Z",
        "model_id": "m",
        "model_version": f"v{i % 3}",
        "request_id": f"r{i}",
        "latency_ms": 10.0 + i,
        "status": "error" if i % 4 == 0 else "ok",
    }
    doc.update(over)
    return orjson.dumps(doc)


def test_latency_events_decode_alike_on_both_paths() -> None:
    records = [_record(i, _latency(i)) for i in range(30)]
    records[5] = _record(5, _latency(5, error_kind="timeout", system_version="sys-2"))
    fast, none = dec.decode_latency(records)
    slow, none2 = dec.decode_latency(records, Parsed([r.value for r in records], None))
    assert (fast.path, slow.path, none, none2) == ("arrow", "pydantic", [], [])
    for batch in (fast, slow):
        assert {k: v.tolist() for k, v in batch.groups.items()} == {
            ("m", f"v{j}"): list(range(j, 30, 3)) for j in range(3)
        }
    assert fast.ts.tolist() == slow.ts.tolist()
    assert fast.latency_ms.tolist() == slow.latency_ms.tolist() == [10.0 + i for i in range(30)]
    assert fast.errors.tolist() == slow.errors.tolist() == [i % 4 == 0 for i in range(30)]
    assert fast.system_version_of(5) == slow.system_version_of(5) == "sys-2"


@pytest.mark.parametrize(
    ("bad", "field_"),
    [
        (_latency(99, latency_ms=-1.0), "latency_ms"),
        (_latency(99, latency_ms=86_400_001.0), "latency_ms"),
        (_latency(99).replace(b'"latency_ms":109.0', b'"latency_ms":NaN'), "(event)"),
        (_latency(99, status="slow"), "status"),
        (_latency(99, schema="PredictionEvent/v1"), "schema"),
        (_latency(99, request_id=""), "request_id"),
        (_latency(99)[:-1] + b',"\xff":1}', "(event)"),
        # a boolean or a string is not a number (`true` was read as 1 ms)
        (_latency(99).replace(b'"latency_ms":109.0', b'"latency_ms":true'), "latency_ms"),
        (_latency(99).replace(b'"latency_ms":109.0', b'"latency_ms":"109"'), "latency_ms"),
    ],
)
def test_bad_latency_events_are_refused_and_the_rest_kept(bad: bytes, field_: str) -> None:
    records = [_record(i, _latency(i)) for i in range(4)]
    records.insert(2, _record(99, bad))
    batch, rejected = dec.decode_latency(records)
    assert [r.offset for r in batch.records] == [0, 1, 2, 3]
    assert [r.record.offset for r in rejected] == [99]
    assert rejected[0].error.startswith(field_) or rejected[0].kind == "malformed"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_FIELDS = [*sorted(dec._KEYS), "features.f0", "features.city", "extra"]


@st.composite
def _mutant(draw: st.DrawFn, i: int) -> bytes:
    """A good prediction with one field set to any JSON value (or raw bytes instead)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=40))
    doc = _doc(i)
    name, value = draw(st.sampled_from(_FIELDS)), draw(_JSON)
    if name.startswith("features."):
        doc["features"][name.split(".")[1]] = value
    else:
        doc[name] = value
    return json.dumps(doc).encode()  # the stdlib writes integers of any size


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_input_is_accepted_or_refused_never_raises(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 8))
    values = [
        data.draw(_mutant(i)) if data.draw(st.booleans()) else _raw("good", i) for i in range(n)
    ]
    records = [_record(i, v) for i, v in enumerate(values)]
    batch, rejected = decode_predictions(records)
    accepted = [r.offset for r in batch.records]
    assert sorted(accepted + [r.record.offset for r in rejected]) == list(range(n))
    assert batch.request_ids(np.arange(len(batch))).to_pylist() == [
        json.loads(values[i])["request_id"] for i in accepted
    ]
    # A fast path accepts what pydantic accepts, and reads the same values from it.
    slow, refused = dec._from_events(records)
    assert sorted(r.record.offset for r in refused) == sorted(r.record.offset for r in rejected)
    assert _rows(batch) == _rows(slow)


def test_whole_second_stamps_and_date_like_versions_stay_on_the_arrow_path() -> None:
    docs = [_doc(i, ts=f"2026-11-22T12:00:{i:02d}Z", model_version="2026-11-22") for i in range(5)]
    batch, rejected = decode_predictions(_records(docs))
    assert (batch.path, rejected) == ("arrow", [])
    assert list(batch.groups) == [("m", "2026-11-22")]
    assert batch.ts[1] - batch.ts[0] == 1.0


_DEEP = """
from aiokafka import ConsumerRecord
import orjson
from rollguard_services.detector.decoding import decode_latency, decode_predictions

envelope = {"model_id": "m", "model_version": "v1", "request_id": "r"}
good = {
    decode_predictions: orjson.dumps({**envelope, "prediction": 0.5}),
    decode_latency: orjson.dumps({**envelope, "latency_ms": 3.0, "status": "ok"}),
}
for decode, value in good.items():
    for deep in (  # one at a time: a batch holding two was refused before the deep recursion
        value[:-1] + b',"features":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        value[:-1] + b',"features":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}",
        value[:-1] + b',"x":' + b"[" * 100_000 + b"}",  # never closed
    ):
        records = [ConsumerRecord("t", 0, i, 0, 0, b"m", v, None, 1, len(v), ())
                   for i, v in enumerate([value, deep, value])]
        batch, rejected = decode(records)
        assert [r.record.offset for r in rejected] == [1], rejected
        assert [r.offset for r in batch.records] == [0, 2]
print("ok")
"""


def test_deeply_nested_values_are_refused_without_crashing_the_process() -> None:
    """Arrow's JSON reader overflowed its stack (SIGSEGV, the detector gone) on one record of
    100,000 nested arrays inside an object; such a batch must go to orjson and pydantic."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _DEEP], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "ok"
