"""The pipelined hot loop across a rebalance: every prediction folded once, none twice."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from rollguard import topics
from rollguard.bus import make_producer
from rollguard.events import PredictionEvent, utcnow
from rollguard.policy import PolicySet
from rollguard.settings import RollguardSettings
from rollguard_services.detector.app import Batches, Detector, Parsed
from rollguard_services.detector.settings import DetectorSettings
from tests.conftest import scaled

pytestmark = pytest.mark.broker

MODELS = 6  # model_id is the key: six keys spread over the topic's partitions


async def _produce(settings: RollguardSettings, first: int, n: int, pause_s: float) -> None:
    producer = make_producer(settings, control=False)
    await producer.start()
    try:
        topic = settings.topic(topics.PREDICTIONS.name)
        start = utcnow() - timedelta(seconds=30)
        for chunk in range(first, first + n, 500):
            sent = []
            for i in range(chunk, min(chunk + 500, first + n)):
                event = PredictionEvent(
                    ts=start + timedelta(milliseconds=i),
                    model_id=f"m{i % MODELS}",
                    model_version="v1",
                    request_id=f"r{i}",
                    prediction=float(i % 97),
                    features={"f0": float(i % 13)},
                )
                sent.append(await producer.send(topic, event.encode(), key=event.key))
            await asyncio.gather(*sent)
            await asyncio.sleep(pause_s)
    finally:
        await producer.stop()


class Busy(Detector):
    """A detector whose fold takes a while, so a rebalance finds a fold in flight and a
    fetched batch waiting behind it."""

    async def process(self, batches: Batches, parsed: Parsed | None = None) -> None:
        if batches:
            await asyncio.sleep(0.03)
        await super().process(batches, parsed)


async def test_a_member_joining_mid_stream_folds_nothing_twice(
    topics_ready: RollguardSettings,
    keys: str,
) -> None:
    svc = DetectorSettings(group_id="rebalance", seed=1, max_batch=200)
    first, second = Busy(topics_ready, PolicySet(), svc), Busy(topics_ready, PolicySet(), svc)
    folded = lambda: first.counts["prediction_events"] + second.counts["prediction_events"]  # noqa: E731
    tasks = [asyncio.create_task(first.run())]
    try:
        await _produce(topics_ready, 0, 4_000, pause_s=0.0)
        await asyncio.wait_for(first.ready.wait(), scaled(30))
        # Traffic keeps coming while the second member joins and the group rebalances.
        producing = asyncio.create_task(_produce(topics_ready, 4_000, 16_000, pause_s=0.1))
        await asyncio.sleep(0.5)
        tasks.append(asyncio.create_task(second.run()))
        await producing
        deadline = asyncio.get_running_loop().time() + scaled(60)
        while folded() < 20_000 and asyncio.get_running_loop().time() < deadline:
            for task in tasks:
                if task.done():
                    task.result()
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # anything folded twice would show up by now
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert second.counts["prediction_events"] > 0, "the second member never got a partition"
    assert first.revocations.count >= 1
    assert folded() == 20_000, (dict(first.counts), dict(second.counts))
