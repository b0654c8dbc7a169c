"""Broker freezes under traffic: `rollguard up --with-router` weathers them (issue 11, part 5).

`rollguard up --with-router` runs on a fresh state directory as a user runs it
(benchmarks/live_up.py: JSON logs, a policy directory, a webhook receiver for the notifier) with
v1 recorded known good; then the embedded broker is frozen (SIGSTOP of the tansu process,
SIGCONT after the freeze) several times, by default five times 90 s and once 10 min. A freeze
starts, in turn, just after the executor received a rollback command, between incidents, or just
after the decider decided a rollback. After each one it checks that:

- `up` still runs, no service started again or stopped, nothing but JSON was said;
- the log has exactly one ``broker_unreachable`` and one ``broker_back`` for the freeze;
- nothing owed was lost: the incident the freeze interrupted completes (a second command if
  the first expired before the executor took it), it and the later one each have a rollback
  applied once with its acks (received, applied, verified), invalidation and notifications
  (decided, applied, verified), every control event on the ledgered topics is in the ledger,
  and no ack, invalidation or notification is left in an outbox;
- a bad deploy after the freeze is rolled back.

It prints per freeze ``outage_s`` as reported against the freeze itself, the time from SIGCONT
to ``broker_back`` and from SIGSTOP to ``broker_unreachable``, and from each bad deploy to its
rollback applied; results in benchmarks/results/freeze.json. Exit status 1 if any check failed.

    python -m benchmarks.freeze                       # 5 x 90 s and one of 10 min: ~25 min
    python -m benchmarks.freeze --freezes 2 --freeze-s 30 --long-s 0      # a quick look

`make bench` runs it when ROLLGUARD_BENCH_FREEZE=1 (it is long). Linux only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import write
from benchmarks.live_up import Incident, LiveUp, until, wall

#: Where a freeze starts, in turn.
MOMENTS = ("received", "idle", "decision")


@dataclass
class Freeze:
    number: int
    moment: str
    seconds: float
    stopped_at: float = 0.0  # wall clock
    continued_at: float = 0.0
    outage_s: float | None = None
    sigcont_to_back_s: float | None = None
    sigstop_to_unreachable_s: float | None = None
    interrupted: Incident | None = None
    later: Incident | None = None
    #: ``broker_client_errors`` lines: a client's error while the broker answered (not faults).
    client_errors: int = 0
    faults: list[str] = field(default_factory=list)

    @property
    def actual_s(self) -> float:
        return round(self.continued_at - self.stopped_at, 1)

    def line(self) -> str:
        parts = [
            f"freeze {self.number} ({self.seconds:.0f} s, {self.moment}): outage_s reported "
            f"{self.outage_s} vs {self.actual_s} actual",
            f"SIGCONT → broker_back {self.sigcont_to_back_s} s",
            f"SIGSTOP → broker_unreachable {self.sigstop_to_unreachable_s} s",
        ]
        if self.interrupted is not None:
            parts.append(f"interrupted deploy → applied {self.interrupted.to_applied_s} s")
        parts.append(f"later deploy → applied {self.later.to_applied_s if self.later else None} s")
        if self.client_errors:
            parts.append(f"{self.client_errors} broker_client_errors")
        if self.faults:
            parts.append("FAULTS: " + "; ".join(self.faults))
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "moment": self.moment,
            "freeze_s": self.actual_s,
            "outage_s_reported": self.outage_s,
            "sigcont_to_broker_back_s": self.sigcont_to_back_s,
            "sigstop_to_broker_unreachable_s": self.sigstop_to_unreachable_s,
            "interrupted_deploy_to_applied_s": (
                self.interrupted.to_applied_s if self.interrupted else None
            ),
            "later_deploy_to_applied_s": self.later.to_applied_s if self.later else None,
            "broker_client_errors": self.client_errors,
            "faults": self.faults,
        }


async def _moment(up: LiveUp, moment: str, since: int) -> None:
    """Wait for the executor's ``received`` or the decider's rollback ``decision``."""

    def reached() -> bool:
        if moment == "received":
            found = up.log.named("received", since)
            return any(e.get("logger_name") == "rollguard.executor" for e in found)
        return any(e.get("action") == "rollback" for e in up.log.named("decision", since))

    await until(reached, up.scaled(60), f"never saw {moment}")


async def freeze_once(up: LiveUp, f: Freeze, freezes_before: int) -> Freeze:
    """One freeze at its moment, the broker back, a later incident, and the checks."""
    since, others, first = len(up.log.read()), len(up.log.other), len(up.incidents)
    if f.moment != "idle":
        f.interrupted = await up.start_incident(f"{f.number}-during")
        await _moment(up, f.moment, since)
    pid = up.broker_pid()
    f.stopped_at = time.time()
    os.kill(pid, signal.SIGSTOP)
    try:
        # `up` must not end while the broker is frozen: look every half second.
        with contextlib.suppress(TimeoutError):
            await until(lambda: up.proc.poll() is not None, f.seconds, "")
    finally:
        os.kill(pid, signal.SIGCONT)
        f.continued_at = time.time()
    if up.proc.poll() is not None:
        f.faults.append(f"rollguard up exited {up.proc.returncode} during the freeze")
        return f
    try:
        [back] = await until(
            lambda: up.log.named("broker_back", since), up.scaled(120), "no broker_back"
        )
        f.outage_s = back.get("outage_s")
        f.sigcont_to_back_s = round(wall(back["timestamp"]) - f.continued_at, 1)
    except TimeoutError as exc:
        f.faults.append(str(exc))
    if lost := up.log.named("broker_unreachable", since):
        f.sigstop_to_unreachable_s = round(wall(lost[0]["timestamp"]) - f.stopped_at, 1)
    if f.interrupted is not None:
        try:
            await up.finish(f.interrupted, up.scaled(120))
        except TimeoutError as exc:
            f.faults.append(f"interrupted incident: {exc}")
    try:
        f.later = await up.finish(await up.start_incident(f"{f.number}-after"), up.scaled(120))
    except TimeoutError as exc:
        f.faults.append(f"later incident: {exc}")
    f.faults += up.still_whole(since, others)
    f.client_errors = len(up.log.named("broker_client_errors", since))
    for name in ("broker_unreachable", "broker_back"):
        if (n := len(up.log.named(name, since))) != 1:
            f.faults.append(f"{n} {name} for this freeze")
        if (total := len(up.log.named(name))) != freezes_before + 1:
            f.faults.append(f"{total} {name} in all after {freezes_before + 1} freezes")
    f.faults += await up.nothing_owed_lost(up.incidents[first:])
    return f


async def run(freezes: int, freeze_s: float, long_s: float, base: Path) -> dict[str, Any]:
    plan = [(freeze_s, MOMENTS[i % len(MOMENTS)]) for i in range(freezes)]
    if long_s > 0:
        plan.append((long_s, "received"))
    done: list[Freeze] = []
    up = LiveUp(base)
    async with up.running():
        await up.known_good()
        first = await up.finish(await up.start_incident("0"), up.scaled(60))
        faults = up.still_whole() + await up.nothing_owed_lost()
        print(f"before any freeze: bad deploy → applied {first.to_applied_s} s; faults {faults}")
        for number, (seconds, moment) in enumerate(plan, 1):
            f = await freeze_once(up, Freeze(number, moment, seconds), len(done))
            done.append(f)
            print(f.line(), flush=True)
            if up.proc.poll() is not None:
                break
    return {
        "before_freezes_deploy_to_applied_s": first.to_applied_s,
        "freezes": [f.as_dict() for f in done],
        "ok": not faults and len(done) == len(plan) and not any(f.faults for f in done),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--freezes", type=int, default=5, help="how many freezes of --freeze-s")
    parser.add_argument("--freeze-s", type=float, default=90.0)
    parser.add_argument("--long-s", type=float, default=600.0, help="then one this long; 0: none")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        raise SystemExit("benchmarks.freeze finds the broker in /proc: Linux only")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # our reader is frozen out too
    with contextlib.ExitStack() as stack:
        base = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        result = asyncio.run(run(args.freezes, args.freeze_s, args.long_s, base))
    write("freeze", result)
    print(
        f"freeze: {'ok' if result['ok'] else 'FAULTS'}; results in benchmarks/results/freeze.json"
    )
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
