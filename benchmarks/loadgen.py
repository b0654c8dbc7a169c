"""A load generator of its own: healthy traffic from many models at a fixed rate, as a fleet
of instrumented model servers would send it (issue 15's background load).

Runs as a separate process (`python -m benchmarks.loadgen BOOTSTRAP PREFIX RATE MODELS`) with
confluent-kafka's producer, keyed by model id with the Java client's partitioner
(``murmur2_random``: the one rollguard's own producers use, so a model's events land on one
partition whoever sends them). Half the rate is LatencyEvents (1 % errors), half
PredictionEvents (5 features), every event dated now. Each second it prints one JSON line:
events sent so far, and the rate over the last second, so the caller sees what was offered.
"""

from __future__ import annotations

import json
import random
import sys
import time
import uuid
from datetime import UTC, datetime

import orjson
from confluent_kafka import Producer

from rollguard.events import LatencyEvent, PredictionEvent, utcnow


def templates(model: str) -> tuple[dict[str, object], dict[str, object]]:
    now = utcnow()
    latency = LatencyEvent(
        ts=now, model_id=model, model_version="v1", request_id="r", latency_ms=20.0, status="ok"
    ).model_dump(mode="json", by_alias=True)
    prediction = PredictionEvent(
        ts=now,
        model_id=model,
        model_version="v1",
        request_id="r",
        prediction=0.5,
        features={f"f{j}": 0.0 for j in range(5)},
    ).model_dump(mode="json", by_alias=True)
    return latency, prediction


def main(bootstrap: str, prefix: str, rate: float, models: int, seconds: float) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "acks": "1",
            "enable.idempotence": False,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    names = [f"load-{i:04d}" for i in range(models)]
    shapes = {m: templates(m) for m in names}
    rng = random.Random(15)
    latency_topic, prediction_topic = f"{prefix}latency", f"{prefix}predictions"
    tick = 0.01  # sent in slices of 10 ms, as many as the clock says are owed by now
    sent, said, said_sent = 0, time.monotonic(), 0
    started = time.monotonic()
    while seconds <= 0 or time.monotonic() - started < seconds:
        slice_started = time.monotonic()
        owed = rate * (slice_started - started) - sent  # a late slice catches up
        ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        while owed >= 2:
            owed -= 2
            model = names[sent // 2 % models]
            latency, prediction = shapes[model]
            rid = uuid.uuid4().hex
            latency.update(
                event_id=uuid.uuid4().hex,
                ts=ts,
                request_id=rid,
                latency_ms=15.0 + 10 * rng.random(),
                status="error" if rng.random() < 0.01 else "ok",
            )
            prediction.update(
                event_id=uuid.uuid4().hex,
                ts=ts,
                request_id=rid,
                prediction=rng.random(),
                features={f"f{j}": rng.gauss(0, 1) for j in range(5)},
            )
            key = model.encode()
            for topic, value in ((latency_topic, latency), (prediction_topic, prediction)):
                while True:
                    try:
                        producer.produce(topic, orjson.dumps(value), key=key)
                        break
                    except BufferError:  # the local queue is full: let it drain
                        producer.poll(0.05)
            sent += 2
        producer.poll(0)
        now = time.monotonic()
        if now - said >= 1:
            print(json.dumps({"sent": sent, "rate": round((sent - said_sent) / (now - said))}))
            sys.stdout.flush()
            said, said_sent = now, sent
        rest = tick - (time.monotonic() - slice_started)
        if rest > 0:
            time.sleep(rest)
    producer.flush(30)


if __name__ == "__main__":
    bootstrap, prefix, rate, models = sys.argv[1:5]
    seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    main(bootstrap, prefix, float(rate), int(models), seconds)
