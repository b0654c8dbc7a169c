"""Switch time measured through the broker: pointer event consumed → first request served by
the restored version, over many switches, at the default traffic settings and a finer tick."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from rollguard import topics
from rollguard.settings import RollguardSettings
from rollguard_services.router.app import RouterService
from rollguard_services.router.serving import Switch, switch_report
from rollguard_services.router.settings import RouterSettings, SyntheticModelSpec
from tests.conftest import scaled, until
from tests.factories import manifest, signed

pytestmark = pytest.mark.broker

SWITCHES = 40


@pytest.mark.parametrize(("rate_rps", "tick_s"), [(200.0, 0.02), (1000.0, 0.005)])
async def test_switch_time_over_many_switches(
    topics_ready: RollguardSettings,
    publish: Callable[..., Awaitable[None]],
    figure: Callable[[str], None],
    keys: str,
    rate_rps: float,
    tick_s: float,
) -> None:
    service = RouterService(
        topics_ready,
        RouterSettings(
            model_id="m",
            rate_rps=rate_rps,
            tick_s=tick_s,
            versions={"v1": SyntheticModelSpec(), "v2": SyntheticModelSpec()},
            seed=1,
        ),
    )
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.ready.wait(), scaled(30))
        for i in range(SWITCHES):
            version = "v1" if i % 2 == 0 else "v2"
            await publish(
                topics.DEPLOYMENTS.name, signed(manifest(version, status="live"), topics_ready)
            )
            await until(
                lambda n=i + 1: (
                    len(service.router.switches) == n
                    and service.router.switches[-1].switch_ms is not None
                ),
                timeout_s=10,
            )
            assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    switches = service.router.switches
    assert [s.to_version for s in switches] == ["v1", "v2"] * (SWITCHES // 2)
    report = service.switch_report()
    assert report["switches"] == SWITCHES
    # How long a switch takes is a figure (printed below), not a limit: wall-clock limits
    # belong in benchmarks, and a busy machine misses them (CI12: p50 29.6 ms at a 5 ms tick).
    # What must hold is that each switch was timed from its own consume to its first request.
    assert all(
        s.first_served_at is not None and s.first_served_at >= s.consumed_at for s in switches
    )
    assert report["switch_ms_max"] >= report["switch_ms_p50"] >= 0
    figure(
        f"router switch time at {rate_rps:g} rps, tick {tick_s * 1000:g} ms:\n"
        + json.dumps({k: round(v, 2) for k, v in report.items()})
    )


def test_switch_report_leaves_out_switches_not_served_yet() -> None:
    done = Switch("v1", "s1", consumed_at=10.0, first_served_at=10.004)
    waiting = Switch("v2", "s2", consumed_at=11.0)
    report = switch_report([done, waiting])
    assert report["switches"] == 1
    assert report["switch_ms_max"] == pytest.approx(4.0)
    assert "propagation_ms_p50" not in report
