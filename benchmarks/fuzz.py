"""Fuzz and dead-letter flood: 100,000 malformed records through the real broker and detector.

Each trial gets a fresh topic prefix on one embedded broker. The Detector runs in this process
with production logging (JSON lines, to a file); an independent producer runs in a child process
(``python -m benchmarks.fuzz produce``) and sends one model's traffic at ``RATE`` requests/s (a
latency event and a prediction each): the good version, then at t0 a bad deploy (its manifest,
then the bad version's traffic: 30 % errors). In a flood trial it also sends ``FLOOD`` malformed
records of every kind in ``benchmarks/poison.py`` as fast as it can (from a second after the
start), and the bad deploy comes once half of them are out, so the bad version's events queue
behind and among the other half. t0 is always 0.25 s past a whole second (windows are whole
seconds), so every trial's first bad window holds 0.75 s of traffic. Detection time: the
timestamp of the bad version's first breach on the breaches topic minus t0.

Idle and flood trials alternate, so both see the same machine; the figure is the ratio of the
medians (target: at most 2). The flood comes as fast as one aiokafka producer sends it (about
10,000 records/s here); a last trial puts a whole flood on the topics before the detector
starts, for the rate at which it works through a backlog, its ceiling. After every flood the
dead-letter topic is read back and checked against what the child produced: one letter per
malformed record, with its source topic/partition/offset, a reason from the record's set, and
raw_size and raw_sha256 of its bytes. RSS is sampled every 50 ms while the detector runs; the
growth over the trial is kept.

``python -m benchmarks.fuzz [trials] [flood]`` (default 5 and 100,000, about 7 minutes).
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from benchmarks.common import rss_bytes, write
from benchmarks.poison import BAD, GOOD, MODEL, Fuzzer, Poison, traffic
from rollguard import topics
from rollguard.broker import EmbeddedBroker
from rollguard.bus import client_options, provision_topics
from rollguard.events import Breach, DeadLetter
from rollguard.logs import configure_logging
from rollguard.policy import PolicySet
from rollguard.settings import RollguardSettings
from rollguard.signing import ensure_keys, signer_of
from rollguard_services.detector.app import Detector
from rollguard_services.detector.settings import DetectorSettings
from tests.factories import manifest

FLOOD = 100_000
TRIALS = 5  # of each: idle, flood
RATE = 500  # requests/s of the real traffic
WARMUP_S = 3.0  # the good version before the bad deploy (at least)
#: The flood starts after this much real traffic: a model's first prediction fixes the features
#: it sends (and their kinds), so one malformed first would leave later ones unchecked.
LEAD_S = 1.0
DEPLOY_PHASE_S = 0.25
AFTER_S = 6.0  # the bad version's traffic after t0 (at least)
BREACH_WAIT_S = 600.0
DRAIN_WAIT_S = 120.0  # after the breach, for the rest of the flood to be dead-lettered
RSS_BOUND = 512 * 2**20  # a fetch is bounded in bytes, every state by count: far below this


# --- the producer (child process) --------------------------------------------------------------


async def produce(args: dict[str, Any]) -> None:
    """Real traffic at ``RATE`` requests/s, the bad deploy at t0, and the flood if asked; every
    malformed record's metadata, then a summary line, written to ``args['out']``."""
    settings = RollguardSettings(
        kafka_bootstrap=args["bootstrap"],
        topic_prefix=args["prefix"],
        enable_idempotence=False,
        state_dir=Path(args["state_dir"]),
    )
    deployer = signer_of(settings, "deployer")  # the detector takes signed deployments only
    flood = int(args["flood"])
    fuzzer = Fuzzer(int(args["seed"]), now=time.time)
    poison = [fuzzer.one() for _ in range(flood)]
    producer = AIOKafkaProducer(
        **client_options(settings), acks=1, linger_ms=5, max_request_size=2 << 20
    )
    await producer.start()
    sent: list[tuple[Poison, Any]] = []
    try:
        started = time.time()
        flood_from: float | None = None
        t0: float | None = None
        next_poison = 0
        tick = 0.01  # the real traffic goes out every 10 ms, RATE/100 requests at a time
        served = 0
        while True:
            now = time.time()
            # The deploy comes DEPLOY_PHASE_S past a whole second, so that every trial's first
            # window of the bad version holds the same share of it (windows are whole seconds).
            if (
                t0 is None
                and now - started >= WARMUP_S
                and next_poison >= flood // 2
                and DEPLOY_PHASE_S <= now % 1 < DEPLOY_PHASE_S + 0.1
            ):
                deploy = deployer.sign(manifest(BAD, status="live", model_id=MODEL))
                await producer.send_and_wait(
                    settings.topic(topics.DEPLOYMENTS.name), deploy.encode(), key=deploy.key
                )
                t0 = time.time()
            if t0 is not None and now - t0 >= AFTER_S and next_poison >= flood:
                break
            due = int((now - started) * RATE) - served
            if due > 0:
                version = GOOD if t0 is None else BAD
                error_rate = 0.01 if t0 is None else 0.3
                for record in traffic(
                    version, due, now, 0.0, error_rate, seed=served, first=served
                ):
                    await producer.send(settings.topic(record.topic), record.value, key=record.key)
                served += due
            # As much of the flood as fits before the next tick of real traffic.
            until = now + tick
            while next_poison < flood and now - started >= LEAD_S and time.time() < until:
                p = poison[next_poison]
                sent.append((p, await producer.send(settings.topic(p.topic), p.value, key=p.key)))
                flood_from = flood_from or time.time()
                next_poison += 1
            if next_poison >= flood:
                await asyncio.sleep(max(0.0, until - time.time()))
        await producer.flush()
        lines = []
        for p, delivery in sent:
            meta = await delivery
            line = {"t": meta.topic, "p": meta.partition, "o": meta.offset, "kind": p.kind}
            line |= {"size": p.size, "sha": p.sha256, "reasons": sorted(p.reasons)}
            lines.append(orjson.dumps(line))
        took = time.time() - started
        _say(f"producer: {len(sent)} malformed, {served} requests in {took:.1f} s")
        summary = {"t0": t0, "started": started, "flood_from": flood_from, "requests": served}
        lines.append(orjson.dumps({"summary": summary}))
        await asyncio.to_thread(Path(args["out"]).write_bytes, b"\n".join(lines) + b"\n")
    finally:
        await producer.stop()


# --- the trial (this process) ------------------------------------------------------------------


async def _first_breach(
    settings: RollguardSettings, version: str, timeout_s: float
) -> tuple[float, float]:
    """The timestamp (s) of the first breach of ``version`` on the breaches topic, and the
    end of the window it judged."""
    consumer = AIOKafkaConsumer(
        **client_options(settings), enable_auto_commit=False, fetch_max_wait_ms=20
    )
    await consumer.start()
    try:
        topic = settings.topic(topics.BREACHES.name)
        await consumer.topics()
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                for r in records:
                    breach = Breach.model_validate_json(r.value)
                    if breach.model_version == version:
                        return float(r.timestamp) / 1000, breach.window_end.timestamp()
        raise AssertionError(f"no breach of {version} within {timeout_s:g} s")
    finally:
        await consumer.stop()


async def _check_dead_letters(
    settings: RollguardSettings, expected: dict[tuple[str, int, int], dict[str, Any]]
) -> dict[str, Any]:
    """Read the dead-letter topic whole, one letter at a time, against what was produced."""
    consumer = AIOKafkaConsumer(
        **client_options(settings), enable_auto_commit=False, max_partition_fetch_bytes=8 << 20
    )
    await consumer.start()
    seen: set[tuple[str, int, int]] = set()
    problems: list[str] = []
    reasons: dict[str, int] = {}
    extra = duplicates = 0
    try:
        topic = settings.topic(topics.DEADLETTER.name)
        await consumer.topics()
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning()
        # Only the detector writes here, one letter per malformed record. Asked right after the
        # last letter was acknowledged, the embedded broker's end offsets lacked 94 to 759 of
        # them in every trial (a read that stopped there once missed 12 of 100,000): they are
        # asked again until they hold them all, for up to 30 s (ends_short_at_first says by how
        # many the first answer fell short).
        deadline = time.monotonic() + 30
        ends = await consumer.end_offsets(parts)
        short_at_first = max(0, len(expected) - sum(ends.values()))
        while sum(ends.values()) < len(expected) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            ends = await consumer.end_offsets(parts)

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in parts])

        while await behind():
            for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for r in records:
                    letter = DeadLetter.model_validate_json(r.value)
                    source = (letter.source_topic, letter.partition, letter.offset)
                    want = expected.get(source)
                    if want is None:
                        extra += 1
                        continue
                    if source in seen:
                        duplicates += 1
                    seen.add(source)
                    reasons[str(letter.reason)] = reasons.get(str(letter.reason), 0) + 1
                    if letter.reason not in want["reasons"]:
                        problems.append(f"{want['kind']}: reason {letter.reason}")
                    elif (letter.raw_size, letter.raw_sha256) != (want["size"], want["sha"]):
                        problems.append(f"{want['kind']}: raw_size/raw_sha256")
                    elif not letter.error:
                        problems.append(f"{want['kind']}: no error")
    finally:
        await consumer.stop()
    return {
        "dead_lettered": len(seen),
        "missing": len(expected) - len(seen),
        "not_malformed": extra,
        "duplicates": duplicates,
        "wrong": len(problems),
        "first_problems": problems[:5],
        "ends_short_at_first": short_at_first,
        "missing_kinds": dict(
            Counter(want["kind"] for src, want in expected.items() if src not in seen)
        ),
        "by_reason": reasons,
    }


def delivered(detector: Detector) -> int:
    """Dead letters the broker has acknowledged (counted ones may still be on their way)."""
    return 0 if detector.dead_letters is None else detector.dead_letters.sent


def _say(what: str) -> None:
    print(f"    {time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


async def _produce(settings: RollguardSettings, flood: int, seed: int, out: Path) -> list[bytes]:
    """Run the producer child to its end; what it wrote (one line per malformed record, then
    the summary)."""
    args = {"bootstrap": settings.kafka_bootstrap, "prefix": settings.topic_prefix}
    args |= {"flood": flood, "seed": seed, "out": str(out), "state_dir": str(settings.state_dir)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.fuzz", "produce", json.dumps(args)
    )
    if await child.wait() != 0:
        raise AssertionError(f"the producer exited with {child.returncode}")
    written = await asyncio.to_thread(out.read_bytes)
    await asyncio.to_thread(out.unlink)
    return written.splitlines()


async def trial(
    bootstrap: str, flood: int, seed: int, tmp: Path, *, backlog: bool = False
) -> dict[str, Any]:
    """One trial: the detector running while the child produces (``backlog``: started only
    once everything is on the topics, to time how fast it works through it)."""
    settings = RollguardSettings(
        kafka_bootstrap=bootstrap,
        topic_prefix=f"fz{uuid.uuid4().hex[:8]}.",
        enable_idempotence=False,
        session_timeout_ms=4_000,
        heartbeat_interval_ms=300,
        rebalance_timeout_ms=1_000,
        state_dir=tmp / f"state-{seed}",
    )
    ensure_keys(settings)  # every role's key: the detector's, and the deployer's for the deploys
    await provision_topics(settings)
    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    known_good = signer_of(settings, "deployer").sign(
        manifest(GOOD, status="known_good", model_id=MODEL)
    )
    await producer.send_and_wait(
        settings.topic(topics.DEPLOYMENTS.name), known_good.encode(), key=known_good.key
    )
    await producer.stop()
    out = tmp / f"produced-{seed}.jsonl"
    lines = await _produce(settings, flood, seed, out) if backlog else []

    gc.collect()
    detector = Detector(settings, PolicySet(), DetectorSettings(group_id="fuzz"))
    running = asyncio.create_task(detector.run())
    rss_start = rss_bytes()
    peak = rss_start
    all_sent_at = 0.0  # when the last dead letter was acknowledged

    async def sample() -> None:
        nonlocal peak, all_sent_at
        while True:
            peak = max(peak, rss_bytes())
            if flood and not all_sent_at and delivered(detector) >= flood:
                all_sent_at = time.time()
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        while not detector.ready.is_set():
            if running.done():
                running.result()
            await asyncio.sleep(0.05)
        ready_at = time.time()
        if not backlog:
            lines = await _produce(settings, flood, seed, out)
            _say(f"producer done, dead letters so far {detector.counts['dead_letters']}")
        summary = orjson.loads(lines[-1])["summary"]
        breach_ts, window_end = await _first_breach(settings, BAD, BREACH_WAIT_S)
        _say(f"breach {breach_ts - summary['t0']:.1f} s after t0")
        expected = {}
        for line in lines[:-1]:
            doc = orjson.loads(line)
            expected[(doc["t"], doc["p"], doc["o"])] = doc
        deadline = time.monotonic() + DRAIN_WAIT_S
        while delivered(detector) < len(expected) and time.monotonic() < deadline:
            if running.done():
                running.result()
            await asyncio.sleep(0.05)
        all_sent_at = all_sent_at or time.time()
        _say(f"dead letters {delivered(detector)} of {len(expected)}")
        if running.done():  # a crash
            running.result()
    finally:
        sampler.cancel()
        running.cancel()
        await asyncio.gather(running, sampler, return_exceptions=True)
    result: dict[str, Any] = {
        "flood": flood,
        "requests": summary["requests"],
        "rss_growth_mib": round((peak - rss_start) / 2**20, 1),
        "dead_letters_counted": detector.counts["dead_letters"],
        "latency_batches": {
            k: v for k, v in detector.counts.items() if k.startswith(("latency_b", "prediction_b"))
        },
    }
    if backlog:
        result["drain_s"] = round(all_sent_at - ready_at, 2)
        result["drain_records_per_s"] = round((flood + 2 * summary["requests"]) / result["drain_s"])
    else:
        result["detection_s"] = round(breach_ts - summary["t0"], 3)
        result["after_window_end_s"] = round(breach_ts - window_end, 3)
    if flood and not backlog:
        result["all_sent_after_t0_s"] = round(all_sent_at - summary["t0"], 1)
        # as fast as the flood came, at least (the producer is the slower side when it is)
        result["dead_letters_per_s"] = round(flood / (all_sent_at - summary["flood_from"]))
    if flood:
        result |= await _check_dead_letters(settings, expected)
        kinds: dict[str, int] = {}
        for doc in expected.values():
            kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
        result["kinds"] = dict(sorted(kinds.items()))
    return result


async def run(trials: int = TRIALS, flood: int = FLOOD) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "tansu.log") as broker:
        idle: list[dict[str, Any]] = []
        flooded: list[dict[str, Any]] = []
        for i in range(trials):
            idle.append(await trial(broker.bootstrap, 0, 100 + i, Path(tmp)))
            flooded.append(await trial(broker.bootstrap, flood, 200 + i, Path(tmp)))
            print(
                f"  trial {i + 1}/{trials}: idle {idle[-1]['detection_s']} s, flood "
                f"{flooded[-1]['detection_s']} s ({flooded[-1]['dead_lettered']:,} dead letters)",
                flush=True,
            )
        backlog = await trial(broker.bootstrap, flood, 300, Path(tmp), backlog=True)
        print(f"  backlog: {backlog['drain_records_per_s']:,} records/s", flush=True)
    idle_p50 = float(np.median([t["detection_s"] for t in idle]))
    flood_p50 = float(np.median([t["detection_s"] for t in flooded]))
    checked = [*flooded, backlog]
    result = {
        "flood_records": flood,
        "trials": trials,
        "rate_rps": RATE,
        "idle_detection_p50_s": round(idle_p50, 3),
        "flood_detection_p50_s": round(flood_p50, 3),
        "ratio": round(flood_p50 / idle_p50, 2),
        "target_ratio": 2.0,
        "backlog_records_per_s": backlog["drain_records_per_s"],
        "malformed_sent": len(checked) * flood,
        "dead_lettered": sum(t["dead_lettered"] for t in checked),
        "missing": sum(t["missing"] for t in checked),
        "duplicates": sum(t["duplicates"] for t in checked),
        "wrong": sum(t["wrong"] for t in checked),
        "valid_dead_lettered": sum(t["not_malformed"] for t in checked),
        "crashes": 0,  # a crash of the detector raises out of trial()
        "rss_growth_max_mib": max(t["rss_growth_mib"] for t in [*idle, *checked]),
        "idle": idle,
        "flood": flooded,
        "backlog": backlog,
    }
    result["faults"] = [
        f"{result[name]} {name}"
        for name in ("missing", "duplicates", "wrong", "valid_dead_lettered")
        if result[name]
    ]
    if result["rss_growth_max_mib"] * 2**20 >= RSS_BOUND:
        result["faults"].append(f"RSS grew {result['rss_growth_max_mib']} MiB")
    return result


def main(trials: int = TRIALS, flood: int = FLOOD) -> dict[str, Any]:
    """Run, write results/fuzz.json, and fail (after writing it) on any fault: a dead letter
    missing, doubled or wrong, a valid record dead-lettered, RSS past its bound. A detector
    that crashed raises out of its trial."""
    kept = structlog.get_config()
    with tempfile.NamedTemporaryFile("w", prefix="rollguard-fuzz-", suffix=".log") as logs:
        configure_logging("info", "json", stream=logs)  # as in production, one line per event
        try:
            result = asyncio.run(run(trials, flood))
        finally:
            structlog.configure(**kept)
    write("fuzz", result)
    if result["faults"]:
        raise AssertionError(f"fuzz: {', '.join(result['faults'])} (benchmarks/results/fuzz.json)")
    return result


def report(r: dict[str, Any]) -> str:
    idle = ", ".join(f"{t['detection_s']:.2f}" for t in r["idle"])
    flooded = ", ".join(f"{t['detection_s']:.2f}" for t in r["flood"])
    return (
        f"fuzz: {r['malformed_sent']:,} malformed records ({r['trials'] + 1} x "
        f"{r['flood_records']:,}, {len(r['flood'][0]['kinds'])} kinds) among real traffic: "
        f"{r['dead_lettered']:,} "
        f"dead-lettered, {r['missing']} missing, {r['duplicates']} twice, {r['wrong']} with a "
        f"wrong reason/size/hash, {r['valid_dead_lettered']} valid ones dead-lettered, "
        f"{r['crashes']} crashes; RSS growth at most {r['rss_growth_max_mib']} MiB; dead letters "
        f"{min(t['dead_letters_per_s'] for t in r['flood']):,}/s or more\n"
        f"dead-letter flood: bad deploy detected p50 {r['flood_detection_p50_s']} s under the "
        f"flood ({flooded}) against {r['idle_detection_p50_s']} s idle ({idle}), ratio "
        f"{r['ratio']} (target <= 2); a backlog of {r['flood_records']:,} malformed records "
        f"among real traffic worked through at {r['backlog_records_per_s']:,} records/s"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["produce"]:
        asyncio.run(produce(json.loads(sys.argv[2])))
    else:
        trials = int(sys.argv[1]) if len(sys.argv) > 1 else TRIALS
        flood = int(sys.argv[2]) if len(sys.argv) > 2 else FLOOD
        print(report(main(trials, flood)))
