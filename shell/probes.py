"""/healthz, /readyz and /metrics for a `rollguard run SERVICE` process (ROLLGUARD_PROBE_PORT),
what Kubernetes probes and Prometheus ask (deploy/kubernetes). The API serves the same paths
itself, for every service of its process (`rollguard up`).

Alive: the event loop answers. Ready: every service of the process has joined its group and
holds its partitions (``Service.ready``), and the broker answers (rollguard.outage).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from aiohttp import web

from rollguard.logs import get_logger
from rollguard.metrics import READY, exposition
from rollguard.outage import OUTAGES
from rollguard.service import Service

log = get_logger("rollguard_shell.probes")


def readiness(services: Sequence[Service]) -> dict[str, bool]:
    parts = {s.name: s.ready.is_set() for s in services}
    for name, ok in parts.items():
        READY.labels(name).set(1 if ok else 0)
    parts["broker"] = OUTAGES.down_since is None  # rollguard.outage.watch says when it is away
    return parts


def _app(services: Sequence[Service]) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"detail": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        parts = readiness(services)
        waiting = sorted(n for n, ok in parts.items() if not ok)
        if waiting:
            return web.json_response({"detail": f"not ready: {', '.join(waiting)}"}, status=503)
        return web.json_response({"detail": "ready", "services": sorted(parts)})

    async def metrics(request: web.Request) -> web.Response:
        readiness(services)
        body, content_type = exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.add_routes(
        [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)]
    )
    return app


@contextlib.asynccontextmanager
async def serving(services: Sequence[Service], host: str, port: int | None) -> AsyncIterator[None]:
    """Serve the probes of ``services`` on ``host:port`` for the duration (None: not at all)."""
    if port is None:
        yield
        return
    runner = web.AppRunner(_app(services), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("probes", url=f"http://{host}:{port}", paths=["/healthz", "/readyz", "/metrics"])
    try:
        yield
    finally:
        await runner.cleanup()
