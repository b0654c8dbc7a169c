"""A model server instrumented for rollguard: FastAPI, the SDK's middleware and decorator.

    ROLLGUARD_STATE_DIR=.rollguard python docs/examples/model_server.py   # beside `rollguard up`
    curl -s localhost:8000/predict -H 'content-type: application/json' -d '{"x": 1.5}'

It follows the live version of model ``fraud`` off the deployments topic, and reports every
request's latency (an error for a 5xx) and every prediction with its features.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from rollguard.sdk import Monitor
from rollguard.sdk.asgi import MonitorMiddleware, monitored


def score(features: dict[str, float]) -> float:
    return 0.3 * features["x"] + 0.1  # your model here


def build(monitor: Monitor, model: Callable[[dict[str, float]], float] = score) -> FastAPI:
    app = FastAPI(lifespan=monitor.lifespan)  # sends in the background; flushed at shutdown
    app.add_middleware(MonitorMiddleware, monitor=monitor, paths=("/predict",))

    @monitored(monitor)  # records the prediction, with the features it was given
    async def predict(features: dict[str, float]) -> float:
        return model(features)

    @app.post("/predict")
    async def serve(features: dict[str, float]) -> dict[str, float]:
        return {"score": await predict(features)}

    return app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(build(Monitor("fraud")), port=8000)
