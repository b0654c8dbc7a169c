"""A breach storm (issue 15): 1,000 models breach at once; how long until every decision and
every command is out.

The real decider (faust, its table and changelog) runs against the embedded broker with
MODELS models deployed (v1 known good, v2 live, manifests signed by the deployer key). Then
one immediate-tier breach per model, signed by the detector key, is published in one burst;
the benchmark reads the decisions and commands topics from outside and reports the time from
the first breach sent to the last decision and the last command, and breach → decision
p50/p99 (breach ts to the decision's ts). ROUNDS rounds, each on a fresh broker.

    python -m benchmarks.storm [MODELS]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from benchmarks.common import write
from benchmarks.signing import _manifest, samples
from rollguard import events as ev
from rollguard import topics
from rollguard.broker import EmbeddedBroker
from rollguard.bus import client_options, provision_topics
from rollguard.policy import PolicySource
from rollguard.settings import RollguardSettings
from rollguard.signing import ensure_keys, load_signer, signer_of
from rollguard_services.decider.app import Decider
from rollguard_services.decider.settings import DeciderSettings

MODELS = 1_000
ROUNDS = int(__import__("os").environ.get("BENCH_ROUNDS", "3"))


async def _read_until(
    settings: RollguardSettings, topic: str, n: int, timeout_s: float
) -> list[Any]:
    consumer = AIOKafkaConsumer(
        settings.topic(topic), **client_options(settings), auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[tuple[float, bytes]] = []
    deadline = time.perf_counter() + timeout_s
    try:
        while len(out) < n and time.perf_counter() < deadline:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                now = time.perf_counter()
                out += [(now, r.value) for r in records]
    finally:
        await consumer.stop()
    return out


async def one_round(models: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "tansu.log") as broker:
        settings = RollguardSettings(
            kafka_bootstrap=broker.bootstrap,
            topic_prefix="storm.",
            enable_idempotence=False,
            state_dir=Path(tmp) / "state",
        )
        await provision_topics(settings)
        ensure_keys(settings)
        deployer, detector = signer_of(settings, "deployer"), signer_of(settings, "detector")
        producer = AIOKafkaProducer(**client_options(settings), acks="all", linger_ms=5)
        await producer.start()
        ids = [f"m{i:04d}" for i in range(models)]
        for model_id in ids:
            for version, status in (("v1", "known_good"), ("v2", "live")):
                value = deployer.sign(_manifest(version, status, model_id)).encode()
                await producer.send(
                    settings.topic(topics.DEPLOYMENTS.name), value, key=model_id.encode()
                )
        await producer.flush()
        decider = Decider(
            settings,
            PolicySource(None),
            load_signer(settings.resolved_signing_key_file),
            DeciderSettings(),
        )
        task = asyncio.create_task(decider.run())
        cpu = 0.0
        try:
            while decider.counts["SystemManifest"] < 2 * models:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            reading = asyncio.create_task(_read_until(settings, topics.COMMANDS.name, models, 120))
            decisions = asyncio.create_task(
                _read_until(settings, topics.DECISIONS.name, models, 120)
            )
            await asyncio.sleep(1.0)  # both readers are at the topics' ends
            started, cpu_at = time.perf_counter(), time.process_time()
            sent: dict[str, float] = {}
            template = samples()["Breach"]
            for model_id in ids:
                update = {"model_id": model_id, "event_id": ev.new_id(), "ts": ev.utcnow()}
                breach = detector.sign(template.model_copy(update=update))
                sent[breach.event_id] = time.perf_counter()
                await producer.send(
                    settings.topic(topics.BREACHES.name), breach.encode(), key=model_id.encode()
                )
            await producer.flush()
            commands, decided = await reading, await decisions
            cpu = time.process_time() - cpu_at  # this process: the decider and the readers
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await producer.stop()
    if len(commands) < models or len(decided) < models:
        raise AssertionError(f"{len(decided)} decisions, {len(commands)} commands of {models}")
    lags = [at - sent[orjson.loads(value)["breach_ids"][0]] for at, value in decided]
    return {
        "last_decision_s": max(t for t, _ in decided) - started,
        "last_command_s": max(t for t, _ in commands) - started,
        "decision_p50_s": statistics.median(lags),
        "decision_p99_s": sorted(lags)[int(0.99 * (len(lags) - 1))],
        "decider_cpu_s": cpu,
    }


def main(models: int = MODELS) -> dict[str, Any]:
    rounds = [asyncio.run(one_round(models)) for _ in range(ROUNDS)]
    result = {
        "models": models,
        "rounds": [{k: round(v, 3) for k, v in r.items()} for r in rounds],
        "median": {k: round(statistics.median(r[k] for r in rounds), 3) for k in rounds[0]},
        "target_s": 2.0,
    }
    write("storm", result)
    return result


def report(result: dict[str, Any]) -> str:
    m = result["median"]
    return (
        f"breach storm ({result['models']:,} models at once, median of {len(result['rounds'])}; "
        f"target: everything out in < {result['target_s']} s): last decision "
        f"{m['last_decision_s']} s, last command {m['last_command_s']} s after the first breach; "
        f"breach -> decision p50 {m['decision_p50_s']} s, p99 {m['decision_p99_s']} s"
    )


if __name__ == "__main__":
    print(report(main(int(sys.argv[1]) if len(sys.argv) > 1 else MODELS)))
