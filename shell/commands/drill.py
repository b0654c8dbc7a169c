"""drill: inject faults into drill models against a running installation (rollguard.drills)."""

from __future__ import annotations

import argparse
import json
import sys

from rollguard.drills import SCENARIOS
from rollguard.errors import ExitCode
from rollguard.settings import RollguardSettings
from rollguard_shell.commands import Subparsers, require_broker


def register(sub: Subparsers) -> None:
    drill = sub.add_parser(
        "drill",
        help="prove the rollback works: inject a fault into a drill model and time the chain",
        description="Each scenario runs on its own drill model (rollguard-drill-<scenario>), "
        "through the SDK as a model server would: a good version served, a bad one deployed, "
        "then breach, decision, applied and verified acks are waited for and timed. Exit 0 "
        "when every scenario passed, 1 when one failed (the reason printed).",
    )
    drill.add_argument(
        "--scenario",
        action="append",
        choices=[*SCENARIOS, "all"],
        help="repeatable; default all",
    )
    drill.add_argument(
        "--timeout", type=float, default=180.0, help="seconds per scenario (default 180)"
    )
    drill.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="pass once applied, without waiting for the verification window",
    )
    drill.add_argument("--warmup", type=float, default=2.0, help="seconds of good traffic first")
    drill.add_argument("--json", action="store_true", help="one JSON object per scenario")
    drill.set_defaults(handler=_drill)


def _drill(args: argparse.Namespace, settings: RollguardSettings) -> int:
    from rollguard.bus import wait_for_broker
    from rollguard_shell.drill import Result, run_drills
    from rollguard_shell.stopping import run_stoppable

    require_broker(settings)
    from rollguard.logs import configure_logging

    # The drill's own lines are its progress; the SDK's and clients' info lines would bury
    # them (ROLLGUARD_LOG_LEVEL=debug shows them all the same).
    quiet = "warning" if settings.log_level == "info" else settings.log_level
    configure_logging(quiet, settings.log_format)
    names = args.scenario or ["all"]
    chosen = list(SCENARIOS.values()) if "all" in names else [SCENARIOS[n] for n in names]

    def say(line: str) -> None:
        print(f"drill: {line}", file=sys.stderr, flush=True)

    async def go() -> list[Result]:
        await wait_for_broker(settings)
        say(f"{len(chosen)} scenario(s): {', '.join(s.name for s in chosen)}")
        return await run_drills(
            settings,
            chosen,
            timeout_s=args.timeout,
            verify=args.verify,
            warmup_s=args.warmup,
            say=say,
        )

    results = run_stoppable(go())
    for r in results:
        if args.json:
            print(json.dumps(r.as_dict()))
            continue
        f = r.figures
        shown = "  ".join(
            f"{label} {f[key]:.2f} s"
            for key, label in (
                ("mttd_s", "MTTD"),
                ("time_to_decision_s", "decision"),
                ("time_to_rollback_s", "rollback"),
                ("time_to_verified_s", "verified"),
            )
            if key in f
        )
        state = "passed" if r.passed else f"FAILED: {r.reason}"
        print(f"{r.scenario:<18} {state}")
        print(f"  {shown}  blast radius {int(f.get('blast_radius', 0))} requests")
    return ExitCode.OK if all(r.passed for r in results) else ExitCode.FAILED
