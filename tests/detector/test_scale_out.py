"""Issue 15, scale-out: two detector processes in one consumer group share the models (each
model's events are keyed to one partition, so one process); the one holding a bad model is
SIGKILLed, the other takes its partitions over and breaches the bad model again after a
short warm-up (its windows in progress went with the killed process).

Real processes (`rollguard run detector`) on topics of four partitions, fed live traffic by
a producer of the test's own, the detector key checked on every breach published.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from rollguard import topics
from rollguard.bus import make_producer, provision_topics
from rollguard.events import Breach, LatencyEvent, utcnow
from rollguard.settings import RollguardSettings
from rollguard.signing import ensure_keys, trust_of
from tests.conftest import (
    HEAVY,
    TopicReader,
    group_split,
    held_partitions,
    scaled,
    service_env,
)
from tests.executor.test_crash import ROLLGUARD

pytestmark = [pytest.mark.broker, HEAVY, pytest.mark.timeout(scaled(300))]

PARTITIONS = 4
MODELS = [f"m{i}" for i in range(8)]
BAD = set(MODELS[:4])  # 30 % errors against the default policy's 5 %
RATE = 600  # events/s over all models: 75 a model, over the error-rate window's minimum 50


def said(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def breached(log: Path, since: str = "") -> dict[str, list[str]]:
    """model → the timestamps of the breaches this detector logged (after ``since``)."""
    out: defaultdict[str, list[str]] = defaultdict(list)
    for d in said(log):
        if d.get("event") == "breach" and d["timestamp"] > since:
            out[d["model_id"]].append(d["timestamp"])
    return out


def assigned_at(log: Path) -> str:
    return max(d["timestamp"] for d in said(log) if d.get("event") == "partitions_assigned")


async def test_two_detectors_share_the_models_and_the_survivor_takes_a_killed_ones_over(
    settings: RollguardSettings, tmp_path: Path
) -> None:
    s = settings.model_copy(update={"partitions": PARTITIONS})
    await provision_topics(s)
    ensure_keys(s)
    latency = s.topic(topics.LATENCY.name)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs: list[asyncio.subprocess.Process] = []
    stop = asyncio.Event()
    sent = 0

    async def traffic() -> None:
        nonlocal sent
        producer = make_producer(s, control=False)
        await producer.start()
        rng = random.Random(15)
        try:
            while not stop.is_set():
                futures = []
                for _ in range(RATE // 10):
                    model = MODELS[sent % len(MODELS)]
                    error = rng.random() < (0.3 if model in BAD else 0.01)
                    event = LatencyEvent(
                        ts=utcnow(),
                        model_id=model,
                        model_version="v1",
                        request_id=f"r{sent}",
                        latency_ms=20.0,
                        status="error" if error else "ok",
                    )
                    futures.append(await producer.send(latency, event.encode(), key=event.key))
                    sent += 1
                await asyncio.gather(*futures)
                await asyncio.sleep(0.1)
        finally:
            await producer.stop()

    feeding = asyncio.create_task(traffic())
    loop = asyncio.get_running_loop()

    async def wait(condition: Any, what: str, timeout_s: float) -> None:
        deadline = loop.time() + scaled(timeout_s)
        while not condition():
            assert not feeding.done(), "the load generator stopped"
            if loop.time() > deadline:
                tails = "\n".join(log.read_text(errors="replace")[-2500:] for log in logs)
                raise AssertionError(f"{what} within {timeout_s}s\n{tails}")
            await asyncio.sleep(0.3)

    try:
        for name, log in zip("ab", logs, strict=True):
            (tmp_path / name).mkdir()
            with log.open("wb") as out:
                procs.append(
                    await asyncio.create_subprocess_exec(
                        *(str(ROLLGUARD), "run", "detector"),
                        env=service_env(s),
                        stdout=out,
                        stderr=out,
                        start_new_session=True,
                        cwd=tmp_path / name,
                    )
                )

        await wait(
            lambda: group_split(logs, PARTITIONS, latency), "both detectors holding partitions", 120
        )
        # Every bad model breached, by one detector each, once the group settled (one that
        # started first judged every model until the other joined); no good model by either.
        settled = max(assigned_at(log) for log in logs)
        await wait(
            lambda: set().union(*(breached(log, settled) for log in logs)) >= BAD,
            "every bad model",
            60,
        )
        assert set().union(*map(breached, logs)) == BAD, "a good model breached"
        by = [breached(log, settled) for log in logs]
        assert not set(by[0]) & set(by[1]), "a model judged by both detectors"
        assert by[0] and by[1], "one detector did all the work"
        # Kill the one holding m0; the other holds every partition and breaches m0 again.
        victim = 0 if "m0" in by[0] else 1
        survivor = logs[1 - victim]
        os.killpg(procs[victim].pid, signal.SIGKILL)
        await procs[victim].wait()
        killed_at = utcnow().isoformat().replace("+00:00", "Z")
        await wait(
            lambda: (
                held_partitions(survivor.read_text(errors="replace"), latency)
                == list(range(PARTITIONS))
            ),
            "the survivor holding every partition",
            60,
        )
        await wait(
            lambda: any(ts > killed_at for ts in breached(survivor).get("m0", [])),
            "the survivor breaching the killed detector's bad model",
            60,
        )
    finally:
        stop.set()
        await asyncio.gather(feeding, return_exceptions=True)
        for p in procs:
            if p.returncode is None:
                os.killpg(p.pid, signal.SIGTERM)
                await p.wait()
    published = [
        Breach.model_validate_json(r.value)
        for r in await TopicReader(s).read(topics.BREACHES.name, until=lambda r: False, timeout_s=1)
    ]
    assert {b.model_id for b in published} == BAD
    trust = trust_of(s)
    assert all(trust.check(b).ok for b in published), "every breach signed by a detector key"
