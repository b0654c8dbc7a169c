"""Kafka plumbing against the real broker: provisioning, batch decoding, dead letters."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaTimeoutError

from rollguard import bus, topics
from rollguard.bus import (
    DeadLetterSink,
    Item,
    Rejected,
    client_options,
    decode_batch,
    make_producer,
    producer_send,
    provision_topics,
)
from rollguard.errors import ConfigError
from rollguard.events import DeadLetter, LatencyEvent
from rollguard.settings import RollguardSettings
from tests.conftest import TopicReader

pytestmark = pytest.mark.broker


async def test_provisioning_creates_every_topic_once(settings: RollguardSettings) -> None:
    created = await provision_topics(settings)
    assert sorted(created) == sorted(settings.topic(t.name) for t in topics.ALL)
    assert await provision_topics(settings) == []
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        described = await admin.describe_topics([settings.topic(t.name) for t in topics.ALL])
        assert {len(d["partitions"]) for d in described} == {settings.partitions}
    finally:
        await admin.close()


async def test_partition_mismatch_is_refused(settings: RollguardSettings) -> None:
    await provision_topics(settings)
    wider = settings.model_copy(update={"partitions": settings.partitions + 2})
    with pytest.raises(ConfigError, match="ROLLGUARD_PARTITIONS"):
        await provision_topics(wider)


def _record(value: bytes, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="t.latency",
        partition=1,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"m",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=(),
    )


def _latency(**kw: object) -> bytes:
    doc = {
        "model_id": "m",
        "model_version": "v1",
        "request_id": "r",
        "latency_ms": 3.0,
        "status": "ok",
    }
    doc.update(kw)
    return orjson.dumps(doc)


def test_good_batch_validates_in_one_call() -> None:
    good, rejected = decode_batch([_record(_latency(), i) for i in range(5)], LatencyEvent)
    assert len(good) == 5 and rejected == []
    assert all(isinstance(e, LatencyEvent) for _, e in good)


def test_one_bad_record_costs_only_itself() -> None:
    records = [
        _record(_latency(), 0),
        _record(b"{not json", 1),
        _record(_latency(latency_ms=-5), 2),
        _record(_latency(schema="LatencyEvent/v7"), 3),
        _record(_latency(), 4),
    ]
    good, rejected = decode_batch(records, LatencyEvent)
    assert [r.offset for r, _ in good] == [0, 4]
    assert [(r.record.offset, r.kind) for r in rejected] == [
        (1, "malformed"),
        (2, "invalid"),
        (3, "invalid"),
    ]
    assert "latency_ms" in rejected[1].error
    assert "schema" in rejected[2].error


def test_a_mostly_bad_batch_gets_the_reasons_record_by_record_validation_gives() -> None:
    """A failed batch is split by its errors (two pydantic calls, not one per record): the
    same records kept, the same reasons as validating each on its own."""
    bad = [
        _latency(latency_ms=-5),
        _latency(latency_ms=True, status="slow"),  # two errors: "(+1 more)"
        _latency(schema="LatencyEvent/v7"),
        _latency(model_id=""),
        b"[1, 2]",
        b"{not json",
        orjson.dumps({"model_id": "m"}),
        _latency(extra={"a": [1]}),
    ]
    records = [_record(v, i) for i, v in enumerate([_latency(), *bad, _latency()] * 3)]
    good, rejected = decode_batch(records, LatencyEvent)
    parsed = [(r, orjson.loads(r.value)) for r in records if r.value != b"{not json"]
    slow_good, slow_rejected = bus._one_by_one(parsed, LatencyEvent, [])
    assert [r.offset for r, _ in good] == [r.offset for r, _ in slow_good] == [0, 9, 10, 19, 20, 29]
    assert sorted((r.record.offset, r.kind, r.error) for r in rejected if r.kind == "invalid") == (
        sorted((r.record.offset, r.kind, r.error) for r in slow_rejected)
    )
    assert any(r.error.endswith("(+1 more)") for r in rejected)


async def test_dead_letter_keeps_source_reason_and_bytes(
    topics_ready: RollguardSettings, reader: TopicReader
) -> None:
    producer = make_producer(topics_ready, control=True)
    await producer.start()
    try:
        sink = DeadLetterSink(topics_ready, producer_send(producer), "test")
        raw = b"\xff\x00garbage"
        await sink.send(_record(raw, 41), "not JSON", "malformed")
    finally:
        await producer.stop()
    got = await reader.read(topics.DEADLETTER.name, until=lambda r: len(r) >= 1)
    letter = DeadLetter.model_validate_json(got[0].value)
    assert (letter.source_topic, letter.partition, letter.offset) == ("t.latency", 1, 41)
    assert letter.error == "malformed: not JSON" and letter.reason == "malformed"
    assert base64.b64decode(letter.raw_b64) == raw
    assert letter.model_id == "m"
    assert sink.counts["malformed"] == 1


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (b"\xff\x00garbage", b"m"),
        (None, None),  # a tombstone
        (b"x" * (300 * 1024), b"k" * 1_000),  # truncated to 256 KiB, the key to 256 bytes
        ('{"model_id": "é\u2028"}'.encode(), "é".encode()),
    ],
)
def test_a_dead_letter_is_byte_for_byte_what_the_model_encodes(
    value: bytes | None, key: bytes | None
) -> None:
    """The sink writes letters without building the model (in a flood that was most of the
    cost): what it writes must be exactly what DeadLetter itself would encode."""
    sink = DeadLetterSink(RollguardSettings(kafka_bootstrap="127.0.0.1:1"), _no_send, "test")
    record = ConsumerRecord("t.latency", 2, 7, 0, 0, key, value, None, 0, len(value or b""), ())
    letter, sent_key = sink.letter(record, "why", "invalid")
    model = DeadLetter.model_validate_json(letter)
    assert model.encode() == letter
    assert sent_key == (key[:256] if key else None)
    assert (model.raw_size, model.raw_truncated) == (len(value or b""), len(value or b"") > 262_144)
    again, _ = sink.letter(record, "why", "invalid")
    assert DeadLetter.model_validate_json(again).event_id == model.event_id  # same source, same id


async def _no_send(topic: str, value: bytes, key: bytes | None) -> None:
    raise AssertionError("not sent")


async def test_letters_of_a_batch_the_producer_could_not_deliver_are_sent_one_by_one() -> None:
    """A record batch that failed (a broker gone, say) is not lost: its letters go through
    ``send``, which is where an outage is waited out."""
    loop = asyncio.get_running_loop()
    sent: list[int] = []

    async def send(topic: str, value: bytes, key: bytes | None) -> None:
        sent.append(DeadLetter.model_validate_json(value).offset)

    async def send_many(topic: str, items: list[Item]) -> list[tuple[Any, list[Item]]]:
        failed, done = loop.create_future(), loop.create_future()
        failed.set_exception(KafkaTimeoutError())
        done.set_result(None)
        return [(failed, items[:2]), (done, items[2:])]

    settings = RollguardSettings(kafka_bootstrap="127.0.0.1:1")
    sink = DeadLetterSink(settings, send, "test", send_many=send_many)
    await sink.queue([Rejected(_record(b"x", i), "invalid", "bad") for i in range(5)])
    assert sent == []  # queued, not waited for
    await sink.delivered()
    assert sent == [0, 1]
    assert (sink.counts["invalid"], sink.sent) == (5, 5)
