"""Scale-out: 1, 2 and 4 detector processes in one consumer group on one topic (issue 15).

Each round fills a fresh predictions topic of 8 partitions with the same events (100 models,
2 versions, 5 features: throughput.py's), then starts N `rollguard run detector` processes
(the real entrypoint, a process each) in a fresh group and follows the group's committed
offsets. The rate counts only what is committed after the group settled (every process
holding partitions, together all of them), so start-up and the joining rebalances are left
out; it ends when everything is committed. Throughput is reported as the group's events/s
and as a ratio to one process measured in the same run, best of ``BENCH_ROUNDS`` rounds;
each process's RSS at the end, per model it held. Then one process on 1, 1,000 and 10,000
models (the same number of events): RSS and rate by fleet size.

On this 2-core machine N processes share two cores with the broker and the benchmark
itself: the ratio shows what another process buys while cores are free, and where the
machine, not rollguard, is the limit.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from benchmarks.common import write
from benchmarks.throughput import events
from rollguard import topics
from rollguard.broker import EmbeddedBroker
from rollguard.bus import client_options, provision_topics
from rollguard.settings import RollguardSettings
from rollguard.signing import ensure_keys

EVENTS = 300_000
MODELS = 100
PARTITIONS = 8
PROCESSES = (1, 2, 4)
#: Fleet sizes whose memory one process is measured at (the first is the baseline).
FLEET_MEMORY = (1, 1_000, 10_000)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
ROLLGUARD = Path(sys.executable).with_name("rollguard")
GROUP = "rollguard-detector"  # DetectorSettings.group_id


def _assigned(log: Path, topic: str) -> list[int]:
    held: list[int] = []
    for line in log.read_text(errors="replace").splitlines():
        if "partitions_assigned" in line and line.startswith("{"):
            doc = json.loads(line)
            if topic in doc:
                held = doc[topic]
    return held


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def _fill(settings: RollguardSettings, payloads: list[bytes], models: int) -> None:
    producer = AIOKafkaProducer(
        **client_options(settings), acks=1, linger_ms=20, max_batch_size=1 << 20
    )
    await producer.start()
    try:
        topic = settings.topic(topics.PREDICTIONS.name)
        futures = [
            await producer.send(topic, v, key=f"m{i % models}".encode())
            for i, v in enumerate(payloads)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _round(
    broker: str, state: Path, n: int, payloads: list[bytes], r: int, models: int = MODELS
) -> dict[str, Any]:
    settings = RollguardSettings(
        kafka_bootstrap=broker,
        topic_prefix=f"scale{n}m{models}r{r}.",
        enable_idempotence=False,
        partitions=PARTITIONS,
        state_dir=state,
    )
    await provision_topics(settings)
    await _fill(settings, payloads, models)
    topic = settings.topic(topics.PREDICTIONS.name)
    env = {
        **os.environ,
        "ROLLGUARD_KAFKA_BOOTSTRAP": broker,
        "ROLLGUARD_TOPIC_PREFIX": settings.topic_prefix,
        "ROLLGUARD_STATE_DIR": str(state),
        "ROLLGUARD_PARTITIONS": str(PARTITIONS),
        "ROLLGUARD_ENABLE_IDEMPOTENCE": "false",
        "ROLLGUARD_LOG_FORMAT": "json",
        "ROLLGUARD_LOG_LEVEL": "info",
    }
    logs = [state / f"{settings.topic_prefix}{i}.log" for i in range(n)]
    procs = []
    for log in logs:
        with log.open("wb") as out:
            procs.append(
                await asyncio.create_subprocess_exec(
                    str(ROLLGUARD), "run", "detector", env=env, stdout=out, stderr=out, cwd=state
                )
            )
    watcher = AIOKafkaConsumer(
        **client_options(settings), group_id=f"{settings.topic_prefix}{GROUP}"
    )
    await watcher.start()
    parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    try:
        end = sum((await watcher.end_offsets(parts)).values())

        async def committed() -> int:
            return sum([(await watcher.committed(tp)) or 0 for tp in parts])

        settled_at, settled_done = 0.0, 0
        deadline = time.monotonic() + 600
        while True:
            assert time.monotonic() < deadline, f"{n} processes never finished: see {logs}"
            assert all(p.returncode is None for p in procs), f"a detector died: see {logs}"
            done = await committed()
            now = time.perf_counter()
            if not settled_at:
                held = [_assigned(log, topic) for log in logs]
                if all(held) and sorted(p for h in held for p in h) == list(range(PARTITIONS)):
                    settled_at, settled_done = now, done
            if done >= end:
                break
            await asyncio.sleep(0.05)
        finished_at = time.perf_counter()
        rss = [_rss_bytes(p.pid) for p in procs]
    finally:
        await watcher.stop()
        for p in procs:
            if p.returncode is None:
                p.terminate()
        for p in procs:
            await p.wait()
    counted = end - settled_done
    return {
        "events_per_s": round(counted / max(finished_at - settled_at, 1e-9)),
        "counted_events": counted,
        "rss_mib": [round(b / (1 << 20), 1) for b in rss],
        "rss_bytes": sum(rss),
        "rss_kib_per_model": round(sum(rss) / models / 1024, 1),
    }


async def run() -> dict[str, Any]:
    payloads = events(EVENTS, MODELS)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "tansu.log") as broker:
        state = Path(tmp) / "state"
        state.mkdir()
        ensure_keys(RollguardSettings(kafka_bootstrap=broker.bootstrap, state_dir=state))
        rounds: dict[int, list[dict[str, Any]]] = {n: [] for n in PROCESSES}
        for r in range(ROUNDS):  # interleaved, so every size sees the same machine
            for n in PROCESSES:
                rounds[n].append(await _round(broker.bootstrap, state, n, payloads, r))
        # Memory by fleet size: one process, the same number of events over more models.
        fleet: dict[int, dict[str, Any]] = {}
        for models in FLEET_MEMORY:
            fleet[models] = await _round(
                broker.bootstrap, state, 1, events(EVENTS, models), 0, models
            )
    best = {n: max(rs, key=lambda x: x["events_per_s"]) for n, rs in rounds.items()}
    few = fleet[FLEET_MEMORY[0]]["rss_bytes"]
    one = best[1]["events_per_s"]
    return {
        "events": EVENTS,
        "models": MODELS,
        "partitions": PARTITIONS,
        "cores": os.cpu_count(),
        "processes": {
            str(n): {
                **best[n],
                "ratio_to_1": round(best[n]["events_per_s"] / one, 2),
                "per_process_events_per_s": round(best[n]["events_per_s"] / n),
                "rounds_events_per_s": [x["events_per_s"] for x in rounds[n]],
            }
            for n in PROCESSES
        },
        "memory_by_fleet": {
            str(m): {
                "rss_mib": round(f["rss_bytes"] / (1 << 20), 1),
                "events_per_s": f["events_per_s"],
                "kib_per_model_over_one": round(
                    (f["rss_bytes"] - few) / max(m - FLEET_MEMORY[0], 1) / 1024, 1
                ),
            }
            for m, f in fleet.items()
        },
    }


def main() -> dict[str, Any]:
    result = asyncio.run(run())
    write("scaleout", result)
    return result


def report(result: dict[str, Any]) -> str:
    lines = [
        f"scale-out ({result['events']:,} events, {result['models']} models, "
        f"{result['partitions']} partitions, {result['cores']} cores; detector processes in "
        "one group, best of the rounds):"
    ]
    for n, r in result["processes"].items():
        lines.append(
            f"  {n} process(es): {r['events_per_s']:,} events/s = {r['ratio_to_1']}x one "
            f"({r['per_process_events_per_s']:,} per process; rounds "
            f"{r['rounds_events_per_s']}); RSS {r['rss_mib']} MiB, "
            f"{r['rss_kib_per_model']} KiB per model"
        )
    for m, f in result["memory_by_fleet"].items():
        lines.append(
            f"  one process, {int(m):,} models: RSS {f['rss_mib']} MiB, "
            f"{f['kib_per_model_over_one']} KiB per model over 1 model, "
            f"{f['events_per_s']:,} events/s"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(main()))
