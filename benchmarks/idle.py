"""What an idle installation costs (issue 15): `rollguard up` with MODELS models known and no
traffic, CPU of its whole process tree (the services, the embedded broker, its object store)
over WINDOW_S seconds after a settling time, from /proc (Linux).

The models are deployed the way `rollguard deploy record` does it (signed manifests on the
deployments topic, v1 known good and v2 live), by a producer of this process. ROUNDS rounds,
median.

    python -m benchmarks.idle
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from benchmarks.common import write
from benchmarks.signing import _manifest
from rollguard import topics
from rollguard.bus import client_options
from rollguard.settings import RollguardSettings
from rollguard.signing import signer_of

MODELS = 100
SETTLE_S = 20.0
WINDOW_S = 30.0
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
TICK = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    out = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            out += _tree(int(child))
    return out


def _cpu_ticks(pids: list[int]) -> dict[str, int]:
    """utime + stime per process name."""
    out: dict[str, int] = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0) + int(fields[11]) + int(fields[12])
    return out


def _bootstrap(pid: int, timeout_s: float = 60) -> str:
    """The embedded broker's address, from the command line of the broker `up` started."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in _tree(pid):
            try:
                args = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            for a, b in itertools.pairwise(args):
                if a == b"--listener-url":
                    return b.decode().removeprefix("tcp://")
        time.sleep(0.5)
    raise RuntimeError("the embedded broker did not start")


async def _deploy(bootstrap: str, state: Path, models: int) -> None:
    settings = RollguardSettings(kafka_bootstrap=bootstrap, state_dir=state)
    deployer = signer_of(settings, "deployer")
    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    try:
        for i in range(models):
            model_id = f"idle-{i:03d}"
            for version, status in (("v1", "known_good"), ("v2", "live")):
                value = deployer.sign(_manifest(version, status, model_id)).encode()
                await producer.send(
                    settings.topic(topics.DEPLOYMENTS.name), value, key=model_id.encode()
                )
        await producer.flush()
    finally:
        await producer.stop()


def one_round(models: int, env: dict[str, str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("rollguard")), "up"],
            env={**os.environ, **env, "ROLLGUARD_STATE_DIR": str(state)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            asyncio.run(_deploy(_bootstrap(proc.pid), state, models))
            time.sleep(SETTLE_S)
            before = _cpu_ticks(_tree(proc.pid))
            time.sleep(WINDOW_S)
            after = _cpu_ticks(_tree(proc.pid))
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
    per = {k: (after.get(k, 0) - v) / TICK / WINDOW_S * 100 for k, v in before.items()}
    return {"total_pct": sum(per.values()), **{f"{k}_pct": v for k, v in per.items()}}


def main(models: int = MODELS) -> dict[str, Any]:
    rounds = [one_round(models, {}) for _ in range(ROUNDS)]
    keys = sorted({k for r in rounds for k in r})
    result = {
        "models": models,
        "window_s": WINDOW_S,
        "rounds": [{k: round(r.get(k, 0.0), 1) for k in keys} for r in rounds],
        "median": {k: round(statistics.median(r.get(k, 0.0) for r in rounds), 1) for k in keys},
        "target_pct": 3.0,
    }
    write("idle", result)
    return result


def report(result: dict[str, Any]) -> str:
    m = result["median"]
    parts = ", ".join(f"{k.removesuffix('_pct')} {v} %" for k, v in m.items() if k != "total_pct")
    return (
        f"idle rollguard up ({result['models']} models known, no traffic, median of "
        f"{len(result['rounds'])}): {m['total_pct']} % of a core ({parts}; target < "
        f"{result['target_pct']} %)"
    )


if __name__ == "__main__":
    print(report(main()))
