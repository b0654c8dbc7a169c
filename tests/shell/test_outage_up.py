"""`rollguard up --with-router` weathers a frozen broker in the middle of an incident (issue 11,
part 5): run as a user runs it (benchmarks/live_up.py), the broker frozen with SIGSTOP just
after the executor received a rollback command, for longer than the clients' 40 s request
timeout. benchmarks/freeze.py does the same five times 90 s and once 10 minutes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmarks.freeze import Freeze, freeze_once
from benchmarks.live_up import LiveUp
from tests.conftest import HEAVY, TIME_FACTOR, scaled

#: Past the clients' request timeout (40 s): their requests time out inside the freeze.
FREEZE_S = 45.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the broker in /proc")
# ~105 s when it passes; when it does not, the waits that run out before it says why add up.
@HEAVY
@pytest.mark.timeout(scaled(900))
async def test_up_weathers_a_broker_frozen_in_the_middle_of_an_incident(tmp_path: Path) -> None:
    """Frozen for 90 s, the broker made the router's send time out and the task group cancel
    every service: `rollguard up` exited 1 with a traceback; the outage was said 40 s into it
    and dated from there; the executor's live-pointer step gave up at the command's deadline.
    Now: `up` runs on with every service it started, one broker_unreachable and one
    broker_back whose outage_s is the freeze, the interrupted rollback is applied, verified
    and told once the broker is back, every control event reaches the ledger, no outbox still
    owes anything, and a later bad deploy is rolled back."""
    up = LiveUp(tmp_path, factor=TIME_FACTOR)
    async with up.running():
        await up.known_good()
        await up.finish(await up.start_incident("0"), scaled(60))
        f = await freeze_once(up, Freeze(1, "received", FREEZE_S), freezes_before=0)
    assert f.faults == [], "\n".join(f.faults)
    assert f.interrupted is not None and f.interrupted.applied_ts is not None
    assert f.later is not None and f.later.applied_ts is not None
    assert f.outage_s is not None and abs(f.outage_s - f.actual_s) <= scaled(2.0), f.line()
    # said by the watch's own requests, well before the clients' 40 s request timeout
    assert f.sigstop_to_unreachable_s is not None and f.sigstop_to_unreachable_s < 30, f.line()
