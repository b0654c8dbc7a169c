"""The instrumentation SDK (rollguard.sdk) as a model server uses it: a FastAPI server on
loopback with the middleware and the decorator, its live version followed off the
deployments topic, its events read by the real detector (which breaches the bad version);
a sync server's thread-backed twin; and a broker that is not there, a bad value and a full
queue, none of which slows, blocks or breaks a request."""

from __future__ import annotations

import asyncio
import importlib.util
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, HTTPException

from rollguard import topics
from rollguard.events import Breach, LatencyEvent, PredictionEvent
from rollguard.policy import PolicySet
from rollguard.sdk import Monitor, SyncMonitor
from rollguard.sdk.asgi import monitored
from rollguard.settings import RollguardSettings
from rollguard_services.detector.app import Detector
from rollguard_services.detector.settings import DetectorSettings
from tests.api.conftest import ROOT
from tests.conftest import TopicReader, free_port, run_until, scaled, until
from tests.factories import manifest

pytestmark = pytest.mark.broker


def _server(monitor: Monitor, error_rate: float) -> FastAPI:
    """docs/examples/model_server.py, whose model fails ``error_rate`` of its requests."""
    spec = importlib.util.spec_from_file_location(
        "model_server", ROOT / "docs/examples/model_server.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    rng = random.Random(7)

    def failing(features: dict[str, float]) -> float:  # the model's bad days
        if rng.random() < error_rate:
            raise HTTPException(500, "the model failed")
        return float(example.score(features))

    app: FastAPI = example.build(monitor, failing)
    return app


async def _serving(app: FastAPI) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn says so by this flag only
        await asyncio.sleep(0.02)
    return server, task, f"http://127.0.0.1:{port}"


async def test_a_fastapi_server_instrumented_in_ten_lines_feeds_the_detector(
    topics_ready: RollguardSettings,
    publish_signed: Callable[..., Awaitable[None]],
    reader: TopicReader,
) -> None:
    await publish_signed(topics.DEPLOYMENTS.name, manifest("v1", status="known_good"))
    await publish_signed(topics.DEPLOYMENTS.name, manifest("v2", status="live"))
    # Not a trusted key: the monitor must not follow it (the live version stays v2).
    forged = manifest("v9", status="live").model_copy(update={"key_id": "k", "signature": "x"})
    await publish_signed(topics.DEPLOYMENTS.name, forged)
    monitor = Monitor("m", settings=topics_ready)
    await monitor.start()
    await asyncio.wait_for(monitor.live.wait(), scaled(20))
    assert (monitor.model_version, monitor.system_version) == ("v2", "sys-v2")
    server, serving, url = await _serving(_server(monitor, error_rate=0.3))
    statuses: list[int] = []
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            for second in range(3):  # ~150 requests a second: enough for the error-rate test
                sent = time.monotonic()
                answers = await asyncio.gather(
                    *(
                        client.post(
                            "/predict",
                            json={"x": float(i)},
                            headers={"X-Request-ID": f"r{second}-{i}"},
                        )
                        for i in range(150)
                    )
                )
                statuses += [a.status_code for a in answers]
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - sent)))
        await until(lambda: monitor.stats["sent"] + monitor.dropped() >= monitor.stats["queued"])
    finally:
        server.should_exit = True
        await serving
        await monitor.stop()
    served = statuses.count(200)
    assert statuses.count(500) > 60 and served > 200  # the model failed ~30 %
    assert monitor.dropped() == 0, monitor.stats

    latency = [
        LatencyEvent.model_validate_json(r.value)
        for r in await reader.read(topics.LATENCY.name, until=lambda r: len(r) >= 450)
    ]
    predictions = [
        PredictionEvent.model_validate_json(r.value)
        for r in await reader.read(topics.PREDICTIONS.name, until=lambda r: len(r) >= served)
    ]
    assert len(latency) == 450 and len(predictions) == served
    assert {e.model_version for e in latency + predictions} == {"v2"}
    assert sum(e.status == "error" for e in latency) == statuses.count(500)
    # The middleware's request id is the prediction's: a request's events join.
    assert {p.request_id for p in predictions} <= {e.request_id for e in latency}
    for one in predictions:  # request r<s>-<i> was sent x = i
        x = float(one.request_id.rsplit("-", 1)[1])
        assert one.features == {"x": x} and one.prediction == pytest.approx(0.3 * x + 0.1)

    # The real detector reads what the SDK sent and breaches the bad version.
    detector = Detector(topics_ready, PolicySet(), DetectorSettings(group_id="det-sdk"))
    await run_until(detector, lambda: detector.counts["breaches"] >= 1, 60)
    (breach, *_) = [
        Breach.model_validate_json(r.value)
        for r in await reader.read(topics.BREACHES.name, until=lambda r: len(r) >= 1)
    ]
    assert (breach.model_version, breach.detector) == ("v2", "error_rate")


async def test_no_broker_a_bad_value_and_a_full_queue_never_block_or_raise() -> None:
    nowhere = RollguardSettings(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    monitor = Monitor("m", settings=nowhere, model_version="v1", max_queue=1_000)
    await monitor.start()
    try:
        kept = [monitor.record(f"r{i}", 3.0, 0.5, features={"x": 1.0}) for i in range(5_000)]
        # 500 requests fill the queue's 1,000 (a latency and a prediction each); the rest are
        # dropped and counted, the call returning at once
        assert kept.count(True) == 500
        assert monitor.stats["dropped_queue_full"] == 4_500
        assert len(monitor._queue) <= 1_000
    finally:
        await monitor.stop(flush_s=0.5)
    assert monitor.dropped() >= 4_000


async def test_a_value_the_schema_refuses_is_dropped_counted_and_said_once(
    topics_ready: RollguardSettings,
) -> None:
    monitor = Monitor("m", settings=topics_ready, model_version="v1")
    async with monitor:
        for i in range(3):
            monitor.record_latency(f"r{i}", -5.0)  # a negative latency
        monitor.record_latency("fine", 4.0)
        await until(lambda: monitor.stats["sent"] == 1 and monitor.stats["dropped_invalid"] == 3)
    assert monitor.stats["dropped_invalid"] == 3
    assert monitor.stats["warnings"] == 1  # one telemetry_dropped line for the three


async def test_sampling_keeps_or_drops_a_request_whole(topics_ready: RollguardSettings) -> None:
    monitor = Monitor("m", settings=topics_ready, model_version="v1", sample=0.25)
    async with monitor:
        for i in range(2_000):
            monitor.record(f"req-{i}", 2.0, 0.1)
            monitor.record_outcome(f"req-{i}", 1.0)
    kept = monitor.stats["queued"]
    assert 3 * 400 <= kept <= 3 * 600  # ~25 % of 2,000 requests, three events each
    assert kept % 3 == 0  # never a latency without its prediction and outcome


def test_a_sync_server_records_from_its_threads(
    topics_ready: RollguardSettings, reader: TopicReader
) -> None:
    with SyncMonitor("m", settings=topics_ready, model_version="v1") as monitor:

        def worker(t: int) -> None:
            for i in range(100):
                monitor.record(f"t{t}-{i}", 1.5, 0.2, features={"x": float(i)})

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deadline = time.monotonic() + scaled(20)
        while monitor.stats["sent"] < 800 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats: Any = dict(monitor.stats)
    assert stats["sent"] == 800, stats
    got = asyncio.run(reader.read(topics.PREDICTIONS.name, until=lambda r: len(r) >= 400))
    assert len({PredictionEvent.model_validate_json(r.value).request_id for r in got}) == 400


async def test_what_the_caller_gets_wrong_never_stops_or_fails_it(
    topics_ready: RollguardSettings, reader: TopicReader
) -> None:
    monitor = Monitor("m", settings=topics_ready, model_version="v1")
    async with monitor:
        assert monitor.emit(manifest("v9")) is False  # no telemetry: refused, sender alive
        monitor.record(12345, 2.0, 0.3)  # type: ignore[arg-type]  # an int request id

        def broken(*args: Any, **kwargs: Any) -> dict[str, float]:
            raise KeyError("x")

        @monitored(monitor, features=broken)
        def predict(features: dict[str, float]) -> Any:
            return np.float32(0.25)  # numpy's numbers are predictions too

        assert predict({"x": 1.0}) == np.float32(0.25)  # served, whatever the telemetry

        @monitored(monitor)
        def scored(features: dict[str, float]) -> Any:
            return np.float64(0.5)

        scored({"x": 2.0})
        await until(lambda: monitor.stats["sent"] >= 5)
    # the int id's latency and prediction, predict's latency (its features could not be
    # read: no prediction), scored's latency and prediction; the manifest refused
    assert monitor.stats["dropped_invalid"] == 1 and monitor.stats["sent"] == 5
    assert any(k.startswith("dropped_unrecordable") for k in monitor.stats)
    got = [
        PredictionEvent.model_validate_json(r.value)
        for r in await reader.read(topics.PREDICTIONS.name, until=lambda r: len(r) >= 2)
    ]
    assert sorted(p.prediction for p in got) == [0.3, 0.5]


def test_a_sync_monitor_not_started_or_closed_drops_and_counts() -> None:
    monitor = SyncMonitor("m", model_version="v1")
    assert monitor.record("r1", 1.0, 0.1) is False  # before start: no RuntimeError
    assert monitor.dropped() == 1


async def test_a_record_keeps_the_version_live_when_it_was_made(
    topics_ready: RollguardSettings, reader: TopicReader
) -> None:
    monitor = Monitor("m", settings=topics_ready, follow_live=False)
    monitor.model_version, monitor.system_version = "v2", "sys-v2"
    monitor.record_latency("before", 1.0)  # queued while v2 serves, before the sender runs
    monitor.model_version, monitor.system_version = "v1", "sys-v1"  # then rolled back
    monitor.record_latency("after", 1.0)
    async with monitor:
        await until(lambda: monitor.stats["sent"] == 2)
    got = {
        e.request_id: (e.model_version, e.system_version)
        for r in await reader.read(topics.LATENCY.name, until=lambda r: len(r) >= 2)
        if (e := LatencyEvent.model_validate_json(r.value))
    }
    assert got == {"before": ("v2", "sys-v2"), "after": ("v1", "sys-v1")}
