"""The embedded broker on disk against the same broker in memory, measured in one run.

On disk, Tansu serves a fetch by listing the partition's batches in the object store
(rollguard.objectstore), so what a fetch costs grows with the partition; telemetry topics are
trimmed to ``ROLLGUARD_EMBEDDED_KEEP_BATCHES``, control topics are not. Printed: telemetry
throughput (ratio disk/memory), a control round trip (produce acks=all, then consumed by a
consumer waiting on the partition) p50/p99 on a fresh partition and on one of 1,000 and 3,000
batches, per storage.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from benchmarks.common import write
from rollguard.broker import EmbeddedBroker

EVENTS = 20_000
TRIALS = 100
SIZES = (0, 1_000, 3_000)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(int(len(ordered) * q), len(ordered) - 1)] * 1000, 1)


async def _throughput(bootstrap: str) -> dict[str, float]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic("telemetry", 3, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
    await producer.start()
    began = time.perf_counter()
    sent = [
        await producer.send("telemetry", b"x" * 200, key=str(i % 50).encode())
        for i in range(EVENTS)
    ]
    await asyncio.gather(*sent)
    produced = EVENTS / (time.perf_counter() - began)
    await producer.stop()
    consumer = AIOKafkaConsumer(
        "telemetry", bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    got, began = 0, time.perf_counter()
    while got < EVENTS and time.perf_counter() - began < 120:
        got += sum(len(r) for r in (await consumer.getmany(timeout_ms=500)).values())
    consumed = got / (time.perf_counter() - began)
    await consumer.stop()
    return {"produce_per_s": round(produced), "consume_per_s": round(consumed)}


async def _round_trips(bootstrap: str, topic: str, batches: int) -> dict[str, float | int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    for _ in range(batches):  # one batch each, as control events are sent
        await producer.send_and_wait(topic, b"filler")
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=10)
    await consumer.start()
    consumer.assign([tp])
    await consumer.seek_to_end(tp)
    trips: list[float] = []
    missed = 0
    for _ in range(TRIALS):
        began = time.perf_counter()
        await producer.send_and_wait(topic, b"control")
        records = (await consumer.getmany(tp, timeout_ms=5_000)).get(tp, [])
        if records:
            trips.append(time.perf_counter() - began)
        else:
            missed += 1
    await consumer.stop()
    await producer.stop()
    out: dict[str, float | int] = {"missed": missed}
    if trips:
        out |= {"p50_ms": _pct(trips, 0.5), "p99_ms": _pct(trips, 0.99)}
    return out


async def _measure(directory: Path, *, disk: bool) -> dict[str, Any]:
    broker = EmbeddedBroker(directory / "broker.log", data_dir=directory / "data" if disk else None)
    broker.start()
    try:
        result: dict[str, Any] = await _throughput(broker.bootstrap)
        for size in SIZES:
            result[f"round_trip_{size}_batches"] = await _round_trips(
                broker.bootstrap, f"control-{size}", size
            )
        return result
    finally:
        broker.stop()


def main() -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="rollguard-bench-broker-"))
    try:
        memory = asyncio.run(_measure(directory / "memory", disk=False))
        disk = asyncio.run(_measure(directory / "disk", disk=True))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    result = {
        "memory": memory,
        "disk": disk,
        "produce_ratio": round(disk["produce_per_s"] / memory["produce_per_s"], 2),
        "consume_ratio": round(disk["consume_per_s"] / memory["consume_per_s"], 2),
    }
    write("broker_storage", result)
    return result


if __name__ == "__main__":
    r = main()
    print(r)
