"""Time to rollback in the demo with every control event signed against the same demo with
signing off (issue 13's figure), as a ratio over repeated trials.

"Off" is rollguard before issue 13: only rollback commands are signed (``Signer.sign`` leaves
every other event unsigned) and consumers take unsigned events (``ROLLGUARD_SIGNED_EVENTS=
warn``). Each trial is a whole ``run_demo`` in a fresh process and state directory; the two
modes alternate, so a machine that slows down mid-run slows both.

    python -m benchmarks.demo_signing [--trials 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import write

FIGURES = ("time_to_decision_s", "time_to_rollback_s", "time_to_verified_s")


def _one(mode: str, state: Path) -> dict[str, Any]:
    """One demo in this process, signing ``mode`` (on/off); its figures."""
    from rich.console import Console

    from rollguard import events as ev
    from rollguard.settings import RollguardSettings
    from rollguard.signing import Signer
    from rollguard_shell.demo import run_demo

    updates: dict[str, Any] = {}
    if mode == "off":
        signed = Signer.sign

        def commands_only(self: Signer, event: Any) -> Any:
            return signed(self, event) if isinstance(event, ev.RollbackCommand) else event

        Signer.sign = commands_only  # type: ignore[method-assign]
        updates["signed_events"] = "warn"
    base = RollguardSettings(state_dir=state, log_level="error", **updates)
    with open(os.devnull, "w") as quiet:
        report = asyncio.run(run_demo(base, console=Console(file=quiet), live_display=False))
    return {k: getattr(report, k) for k in (*FIGURES, "rollback_applied", "rollback_verified")}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(trials: int = 5) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for trial in range(trials):
        for mode in ("on", "off") if trial % 2 == 0 else ("off", "on"):
            with tempfile.TemporaryDirectory(prefix=f"rollguard-demo-{mode}-") as state:
                done = subprocess.run(
                    [sys.executable, "-m", "benchmarks.demo_signing", "--one", mode, state],
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=False,
                )
            if done.returncode != 0:
                raise RuntimeError(f"demo ({mode}) failed: {done.stderr[-2000:]}")
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(
                f"  demo signing {mode}: {runs[mode][-1]['time_to_rollback_s']:.2f} s to rollback"
            )
    out: dict[str, Any] = {"trials": trials}
    for mode, results in runs.items():
        assert all(r["rollback_applied"] and r["rollback_verified"] for r in results), results
        out[mode] = {
            figure: {
                "p50": round(statistics.median(r[figure] for r in results), 3),
                "p99": round(_pct([r[figure] for r in results], 0.99), 3),
            }
            for figure in FIGURES
        }
    out["ratio_on_to_off_p50"] = round(
        out["on"]["time_to_rollback_s"]["p50"] / out["off"]["time_to_rollback_s"]["p50"], 3
    )
    write("demo_signing", out)
    return out


def report(out: dict[str, Any]) -> str:
    on, off = out["on"]["time_to_rollback_s"], out["off"]["time_to_rollback_s"]
    return (
        f"demo time to rollback over {out['trials']} trials each: signed p50 {on['p50']:.2f} s "
        f"(p99 {on['p99']:.2f}), unsigned p50 {off['p50']:.2f} s (p99 {off['p99']:.2f}); "
        f"ratio {out['ratio_on_to_off_p50']}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--one", nargs=2, metavar=("MODE", "STATE"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.one[0], Path(args.one[1]))))
    else:
        print(report(main(args.trials)))
