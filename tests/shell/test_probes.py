"""`rollguard run SERVICE` with ROLLGUARD_PROBE_PORT: the /healthz, /readyz and /metrics that
the Kubernetes manifests probe and Prometheus scrapes, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from rollguard.bus import provision_topics
from rollguard.settings import RollguardSettings
from tests.conftest import HEAVY, free_port, scaled, service_env

pytestmark = [pytest.mark.broker, HEAVY, pytest.mark.timeout(scaled(180))]

ROLLGUARD = Path(sys.executable).with_name("rollguard")


async def test_a_service_run_alone_serves_its_probes_and_metrics(
    settings: RollguardSettings, tmp_path: Path
) -> None:
    await provision_topics(settings)
    port = free_port()
    log = tmp_path / "ledger.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(ROLLGUARD),
            "run",
            "ledger",
            env=service_env(settings, ROLLGUARD_PROBE_PORT=str(port)),
            stdout=out,
            stderr=out,
            start_new_session=True,
            cwd=tmp_path,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            deadline = asyncio.get_running_loop().time() + scaled(60)
            ready = None
            while asyncio.get_running_loop().time() < deadline:
                try:
                    ready = await http.get("/readyz")
                    if ready.status_code == 200:
                        break
                    assert ready.status_code == 503 and "not ready" in ready.json()["detail"]
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.3)
            assert ready is not None and ready.status_code == 200, log.read_text()[-2000:]
            assert set(ready.json()["services"]) == {"ledger", "broker"}
            assert (await http.get("/healthz")).json() == {"detail": "alive"}
            text = (await http.get("/metrics")).text
            assert 'rollguard_service_ready{service="ledger"} 1.0' in text
            assert "rollguard_ledger_entries_total" in text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        await proc.wait()
    assert proc.returncode == 143
