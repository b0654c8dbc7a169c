"""The instrumentation SDK's cost to a model server (issue 17): added latency per request and
the events one process can emit.

Latency: docs/examples/model_server.py's FastAPI app, called through ASGI in this process (no
network: the HTTP stack would add the same to both and hide the difference), paced at 1k and
10k requests/s for ``SECONDS`` each, instrumented (the middleware and the decorator, the
Monitor sending to an embedded broker on the same loop) against the same app with no
instrumentation, rounds alternating. Each request's latency is call → response sent; the
figures are p50/p99 of each and their difference. A pace the process cannot hold is reported
as the rate it reached. Emit: ``Monitor.record`` in a loop for ``SECONDS``, the events sent
per second (a latency and a prediction per request).
"""

from __future__ import annotations

import asyncio
import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI

from benchmarks.common import write
from rollguard.broker import EmbeddedBroker
from rollguard.bus import provision_topics
from rollguard.sdk import Monitor
from rollguard.settings import RollguardSettings

ROOT = Path(__file__).resolve().parents[1]
RATES = (1_000, 10_000)
SECONDS = 5.0
ROUNDS = 3


def _example() -> Any:
    spec = importlib.util.spec_from_file_location(
        "model_server", ROOT / "docs/examples/model_server.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plain(example: Any) -> FastAPI:
    """The same server without rollguard."""
    app = FastAPI()

    @app.post("/predict")
    async def serve(features: dict[str, float]) -> dict[str, float]:
        return {"score": example.score(features)}

    return app


async def _call(app: Any, body: bytes, i: int) -> float:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"x-request-id", f"r{i}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "scheme": "http",
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    started = time.perf_counter()
    await app(scope, receive, send)
    return (time.perf_counter() - started) * 1e6


async def _paced(app: Any, rate: int) -> tuple[list[float], float]:
    """Latencies (µs) of requests started ``rate`` a second for SECONDS; the rate reached."""
    loop = asyncio.get_running_loop()
    total = int(rate * SECONDS)
    body = orjson.dumps({"x": 1.5})
    tasks: list[asyncio.Task[float]] = []
    start = loop.time()
    for i in range(total):
        due = start + i / rate
        if (wait := due - loop.time()) > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(_call(app, body, i)))
    latencies = list(await asyncio.gather(*tasks))
    return latencies, total / (loop.time() - start)


def _stats(us: list[float]) -> dict[str, float]:
    return {
        "p50_us": round(float(np.percentile(us, 50)), 1),
        "p99_us": round(float(np.percentile(us, 99)), 1),
    }


async def _run() -> dict[str, Any]:
    example = _example()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "tansu.log") as broker:
        settings = RollguardSettings(
            kafka_bootstrap=broker.bootstrap, topic_prefix="bench.", enable_idempotence=False
        )
        await provision_topics(settings)
        out: dict[str, Any] = {}
        for rate in RATES:
            plain_us: list[float] = []
            inst_us: list[float] = []
            reached = {"plain": [], "instrumented": []}  # type: dict[str, list[float]]
            dropped = 0
            for _ in range(ROUNDS):
                us, got = await _paced(_plain(example), rate)
                plain_us += us
                reached["plain"].append(got)
                monitor = Monitor("bench", settings=settings, model_version="v1")
                await monitor.start()
                us, got = await _paced(example.build(monitor), rate)
                inst_us += us
                reached["instrumented"].append(got)
                await monitor.stop()
                dropped += monitor.dropped()
            plain, inst = _stats(plain_us), _stats(inst_us)
            out[f"{rate}_rps"] = {
                "plain": plain,
                "instrumented": inst,
                "added_p50_us": round(inst["p50_us"] - plain["p50_us"], 1),
                "added_p99_us": round(inst["p99_us"] - plain["p99_us"], 1),
                "p50_ratio": round(inst["p50_us"] / plain["p50_us"], 2),
                "p99_ratio": round(inst["p99_us"] / plain["p99_us"], 2),
                "rate_reached": {k: round(min(v)) for k, v in reached.items()},
                "dropped": dropped,
            }
        monitor = Monitor("bench", settings=settings, model_version="v1", max_queue=200_000)
        await monitor.start()
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < SECONDS:
            for _ in range(1_000):
                monitor.record(f"e{n}", 2.0, 0.5, features={"x": 1.0})
                n += 1
            await asyncio.sleep(0)
        await monitor.stop(flush_s=60)
        elapsed = time.perf_counter() - started
        out["emit"] = {
            "events_sent_per_s": round(monitor.stats["sent"] / elapsed),
            "requests_recorded": n,
            "dropped": monitor.dropped(),
        }
    return out


def main() -> dict[str, Any]:
    result = asyncio.run(_run())
    write("sdk", result)
    return result


def report(r: dict[str, Any]) -> str:
    lines = []
    for rate in RATES:
        x = r[f"{rate}_rps"]
        lines.append(
            f"sdk at {rate} req/s: p50 {x['plain']['p50_us']} → {x['instrumented']['p50_us']} µs "
            f"(+{x['added_p50_us']}, x{x['p50_ratio']}), p99 {x['plain']['p99_us']} → "
            f"{x['instrumented']['p99_us']} µs (+{x['added_p99_us']}, x{x['p99_ratio']}); rate "
            f"reached {x['rate_reached']}, dropped {x['dropped']}"
        )
    e = r["emit"]
    lines.append(f"sdk emit: {e['events_sent_per_s']:,} events/s sent from one process")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(main()))
