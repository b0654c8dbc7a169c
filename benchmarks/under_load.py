"""Time to rollback under load (issue 15): bad deploy → `applied`, idle and with background
traffic from 100 healthy models sent by a load generator process of its own.

`rollguard up --with-router` as a user runs it (benchmarks/live_up.py: the router serves
demo-model at 200 requests/s). ``TRIALS`` incidents idle, then the load generator
(benchmarks/loadgen.py, confluent-kafka, another process) offers ``RATE`` events/s from 100
other models and ``TRIALS`` more incidents follow. Each incident is timed from the
manifest's own time to the first breach of the bad system version, its rollback decision,
the command and the executor's `applied` ack (every time an event's own ``ts``, all from one
machine clock); p50/p99 over the trials. The offered rate is what the generator says it
sent, second by second, and the detector's `falling_behind` warnings are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write
from benchmarks.live_up import POLICY_OVERRIDE, LiveUp, until, wall

TRIALS = int(os.environ.get("BENCH_UNDER_LOAD_TRIALS", "10"))
RATE = 20_000
MODELS = 100
STEPS = ("breach", "decision", "command", "applied")
#: The embedded broker's storage: on disk (the default: tansu and an object store process of
#: ours), and in memory (ROLLGUARD_EMBEDDED_STORAGE=memory: tansu alone).
STORAGES = ("disk", "memory")
#: What is timed ends at `applied`; the verification after it only has to end before the
#: next trial. Under load the restored version's traffic reports come late, and a verification
#: short of counted requests would lock the model (unverifiable) and end the run: any traffic
#: verifies here.
POLICY = POLICY_OVERRIDE.replace(
    "      verification_s: 5\n", "      verification_s: 5\n      verification_min_requests: 0\n"
)


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)


def _timeline(up: LiveUp, system_version: str, deployed: float) -> dict[str, float] | None:
    """Seconds from the deploy to each step of the incident of ``system_version``: its
    (first) command, the decision that made it, the first breach that decision names (else
    the first breach of the bad version since the deploy), the `applied` ack."""
    commands = up.topics.commands_for(system_version)
    if not commands:
        return None
    command = commands[0]
    decision = next(
        (d for d in up.topics.on("decisions") if d["event_id"] == command["decision_id"]), None
    )
    applied = up.topics.acks(command["command_id"], "applied")
    if decision is None or not applied:
        return None
    named = set(decision.get("breach_ids") or ())
    breaches = [b for b in up.topics.on("breaches") if b["event_id"] in named] or [
        b
        for b in up.topics.on("breaches")
        if b["model_version"] == command["model_version"] and wall(b["ts"]) >= deployed
    ]
    if not breaches:
        return None
    at = {
        "breach": min(wall(b["ts"]) for b in breaches),
        "decision": wall(decision["ts"]),
        "command": wall(command["issued_at"]),
        "applied": wall(applied[0]["ts"]),
    }
    return {step: round(at[step] - deployed, 3) for step in STEPS}


async def _trials(up: LiveUp, label: str) -> list[dict[str, float]]:
    out = []
    for i in range(TRIALS):
        incident = await up.start_incident(f"{label}{i}")
        await up.finish(incident, up.scaled(120))
        steps = _timeline(up, incident.system_version, incident.deployed_ts)
        assert steps is not None, f"{incident.system_version}: an incident step is missing"
        out.append(steps)
        shown = ", ".join(f"{k} {v:.2f}" for k, v in steps.items())
        print(f"  {label} {i + 1}/{TRIALS}: {shown} s", file=sys.stderr)
    return out


def _summary(trials: list[dict[str, float]]) -> dict[str, Any]:
    return {
        step: {
            "p50_s": _p([t[step] for t in trials], 0.5),
            "p99_s": _p([t[step] for t in trials], 0.99),
            "max_s": max(t[step] for t in trials),
        }
        for step in STEPS
    } | {
        "trials": len(trials),
        "applied_under_2s": sum(t["applied"] < 2 for t in trials),
        "applied_s": [t["applied"] for t in trials],
    }


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _storage_pid(state: Path) -> int | None:
    """The embedded broker's object store process (disk storage), if there is one."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if "rollguard.objectstore" in argv and str(state) in argv:
                    return int(entry.name)
    return None


async def run(storage: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {"ROLLGUARD_EMBEDDED_STORAGE": "memory"} if storage == "memory" else {}
        up = LiveUp(Path(tmp), policy=POLICY, env=env)
        async with up.running():
            await up.known_good()
            print(f"  broker storage: {storage}", file=sys.stderr)
            idle = await _trials(up, "idle")
            offered: list[int] = []
            load = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "benchmarks.loadgen", up.bootstrap(), "rollguard."),
                *(str(RATE), str(MODELS)),
                stdout=asyncio.subprocess.PIPE,
            )

            async def listen() -> None:
                assert load.stdout is not None
                async for line in load.stdout:
                    with contextlib.suppress(ValueError):
                        offered.append(int(json.loads(line)["rate"]))

            listening = asyncio.create_task(listen())
            pids = {"rollguard up": up.proc.pid, "broker": up.broker_pid(), "load": load.pid}
            storage_pid = _storage_pid(up.state)
            if storage_pid is not None:
                pids["broker storage"] = storage_pid
            try:
                print(f"  load: {RATE:,} events/s offered", file=sys.stderr)
                # Five seconds of load first: the detector meets it before the first deploy.
                await until(lambda: len(offered) >= 5, 60, "the load generator said nothing")
                warned_before = len(up.log.named("falling_behind"))
                cpu_before = {k: _cpu_s(p) for k, p in pids.items()}
                began = time.monotonic()
                loaded = await _trials(up, "load")
                took = time.monotonic() - began
                cpu = {k: round((_cpu_s(p) - cpu_before[k]) / took, 2) for k, p in pids.items()}
                behind = [e for e in up.log.named("falling_behind")[warned_before:]]
            finally:
                load.terminate()
                await load.wait()
                listening.cancel()
                await asyncio.gather(listening, return_exceptions=True)
    steady = offered[5:] or offered
    return {
        "rate_offered_events_per_s": {
            "target": RATE,
            "median": round(statistics.median(steady)),
            "min": min(steady),
        },
        "background_models": MODELS,
        "idle": _summary(idle),
        "loaded": _summary(loaded),
        "falling_behind_warnings_under_load": len(behind),
        "worst_behind_s_under_load": max((e["behind_s"] for e in behind), default=0.0),
        "cores_used_under_load": cpu,
        "target_p99_applied_s": 2.0,
    }


def main() -> dict[str, Any]:
    result = {"storage": {storage: asyncio.run(run(storage)) for storage in STORAGES}}
    write("under_load", result)
    return result


def report(result: dict[str, Any]) -> str:
    lines = [
        "bad deploy → applied under load (p50 / p99 / max over trials, seconds; target p99 "
        "< 2 s idle and under load), embedded broker with each storage:"
    ]
    for storage, r in result["storage"].items():
        offered = r["rate_offered_events_per_s"]
        lines.append(
            f"  {storage} storage, load {offered['median']:,} events/s offered (min "
            f"{offered['min']:,}) from {r['background_models']} healthy models by a separate "
            "process:"
        )
        for name in ("idle", "loaded"):
            t = r[name]
            steps = ", ".join(
                f"{step} {t[step]['p50_s']:.2f}/{t[step]['p99_s']:.2f}/{t[step]['max_s']:.2f}"
                for step in STEPS
            )
            lines.append(f"    {name}: {steps}; {t['applied_under_2s']}/{t['trials']} under 2 s")
        cores = ", ".join(f"{k} {v:.2f}" for k, v in r["cores_used_under_load"].items())
        lines.append(
            f"    under load: falling_behind {r['falling_behind_warnings_under_load']} times "
            f"(worst {r['worst_behind_s_under_load']} s behind); cores used: {cores}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(main()))
