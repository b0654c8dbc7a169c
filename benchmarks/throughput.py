"""Throughput: the detector's hot path vs a bare aiokafka getmany loop, same topic, same run.

For 1, 100 and 1,000 models (2 versions each, 5 numeric features; issue 15), both read the
same 200k prediction events (10k events/s of event time, so 20 one-second windows per
version) from the embedded broker with the same consumer settings (assigned partitions, from the beginning, 5,000
records per getmany); the bare loop only counts, the detector runs its own consume loop
(Detector.consume: fetch, decode on the worker thread, validate, fold windows, evaluate
closed windows, remember predictions for the ground-truth join). Best of three rounds each,
rounds interleaved so both see the same machine.
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from benchmarks.common import write
from rollguard import topics
from rollguard.broker import EmbeddedBroker
from rollguard.bus import client_options, provision_topics
from rollguard.events import PredictionEvent, utcnow
from rollguard.policy import PolicySet
from rollguard.settings import RollguardSettings
from rollguard_services.detector.app import Detector
from rollguard_services.detector.settings import DetectorSettings

EVENTS = 200_000
VERSIONS = 2
FEATURES = 5
FLEETS = (1, 100, 1_000)
BATCH = 5_000
ROUNDS = int(__import__("os").environ.get("BENCH_ROUNDS", "3"))


def events(n: int, models: int) -> list[bytes]:
    rng = np.random.default_rng(1)
    start = utcnow() - timedelta(seconds=n / 10_000)
    values = rng.normal(0, 1, (n, FEATURES + 1))
    out = []
    for i in range(n):
        out.append(
            PredictionEvent(
                ts=start + timedelta(microseconds=100 * i),
                model_id=f"m{i % models}",
                model_version=f"v{(i // models) % VERSIONS}",
                request_id=f"r{i}",
                prediction=float(values[i, 0]),
                features={f"f{j}": float(values[i, j + 1]) for j in range(FEATURES)},
            ).encode()
        )
    return out


async def _timed(settings: RollguardSettings, drive: Callable[[Any], Awaitable[None]]) -> float:
    """Events/s of ``drive`` consuming the whole topic, timed from the first non-empty fetch
    (the first fetch waits on the broker, not on the consumer)."""
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 << 20,
        fetch_max_wait_ms=DetectorSettings().fetch_max_wait_ms,
    )
    await consumer.start()
    try:
        topic = settings.topic(topics.PREDICTIONS.name)
        await consumer.topics()
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning()
        started: list[float] = []
        getmany = consumer.getmany

        async def timed_getmany(*args: Any, **kwargs: Any) -> Any:
            batches = await getmany(*args, **kwargs)
            if batches and not started:
                started.append(time.perf_counter())
            return batches

        consumer.getmany = timed_getmany  # type: ignore[method-assign]
        await drive(consumer)
        return EVENTS / (time.perf_counter() - started[0])
    finally:
        await consumer.stop()


async def bare(consumer: Any) -> None:
    """The baseline: fetch and count, nothing else."""
    seen = 0
    while seen < EVENTS:
        batches = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
        seen += sum(len(r) for r in batches.values())


def confluent_bare(settings: RollguardSettings) -> float:
    """The other client: confluent-kafka's batched ``consume()`` (librdkafka, on this thread)
    on the same topic from the beginning, counting only; events/s from the first non-empty
    batch."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer
    from confluent_kafka import TopicPartition as CTopicPartition

    topic = settings.topic(topics.PREDICTIONS.name)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": "bench-confluent",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": DetectorSettings().fetch_max_wait_ms,
            "max.partition.fetch.bytes": 4 << 20,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        parts = list(metadata.topics[topic].partitions)
        consumer.assign([CTopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        seen, started = 0, 0.0
        while seen < EVENTS:
            batch = consumer.consume(num_messages=BATCH, timeout=1.0)
            if batch and not started:
                started = time.perf_counter()
            seen += sum(1 for m in batch if m.error() is None)
        return EVENTS / (time.perf_counter() - started)
    finally:
        consumer.close()


async def run(models: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "tansu.log") as broker:
        settings = RollguardSettings(
            kafka_bootstrap=broker.bootstrap, topic_prefix="bench.", enable_idempotence=False
        )
        await provision_topics(settings)
        producer = AIOKafkaProducer(
            **client_options(settings), acks=1, linger_ms=20, max_batch_size=1 << 20
        )
        await producer.start()
        topic = settings.topic(topics.PREDICTIONS.name)
        payloads = events(EVENTS, models)
        futures = [
            await producer.send(topic, v, key=f"m{i % models}".encode())
            for i, v in enumerate(payloads)
        ]
        await asyncio.gather(*futures)
        await producer.stop()
        del payloads, futures

        rates: dict[str, list[float]] = {"bare": [], "confluent": [], "detector": []}
        for _ in range(ROUNDS):
            gc.collect()  # each starts from the same heap: nothing left of the last round
            rates["bare"].append(await _timed(settings, bare))
            rates["confluent"].append(await asyncio.to_thread(confluent_bare, settings))
            gc.collect()
            detector = Detector(settings, PolicySet(), DetectorSettings(seed=1, max_batch=BATCH))

            async def drive(consumer: Any, detector: Detector = detector) -> None:
                done = lambda: detector.counts["prediction_events"] >= EVENTS  # noqa: E731
                await detector.consume(consumer, commit=False, stop=done)

            rates["detector"].append(await _timed(settings, drive))
            assert detector.counts["prediction_events"] == EVENTS, detector.counts
            paths = {k: v for k, v in detector.counts.items() if k.startswith("prediction_batches")}
            evaluated = detector.counts["evaluations"]
            del detector, drive
    best_bare, best_detector = max(rates["bare"]), max(rates["detector"])
    fastest = max(best_bare, max(rates["confluent"]))
    return {
        "events": EVENTS,
        "models": models,
        "versions": VERSIONS,
        "features": FEATURES,
        "bare_events_per_s": round(best_bare),
        "detector_events_per_s": round(best_detector),
        "confluent_events_per_s": round(max(rates["confluent"])),
        "ratio": round(best_detector / best_bare, 3),
        "ratio_to_fastest": round(best_detector / fastest, 3),
        "target_ratio": 0.5,
        "target_ratio_to_fastest": 0.3,
        "rounds": {k: [round(v) for v in vs] for k, vs in rates.items()},
        "decoded_batches": paths,
        "windows_evaluated": evaluated,
    }


def main(fleets: tuple[int, ...] = FLEETS) -> dict[str, Any]:
    result = {"fleets": {str(models): asyncio.run(run(models)) for models in fleets}}
    write("throughput", result)
    return result


def report(result: dict[str, Any]) -> str:
    lines = [
        "throughput (detector against a bare aiokafka getmany loop and confluent-kafka's "
        "batched consume, same run; targets: >= 0.5 of aiokafka, >= 0.3 of the fastest):"
    ]
    for models, r in result["fleets"].items():
        lines.append(
            f"  {int(models):>5,} models: detector {r['detector_events_per_s']:,} ev/s, bare "
            f"aiokafka {r['bare_events_per_s']:,} ev/s, confluent "
            f"{r['confluent_events_per_s']:,} ev/s; ratio {r['ratio']}, to the fastest "
            f"{r['ratio_to_fastest']} ({r['windows_evaluated']:,} version-windows evaluated)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(report(main(tuple(int(a) for a in sys.argv[1:]) or FLEETS)))
