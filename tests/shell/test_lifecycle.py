"""Processes the CLI starts are cleaned up: the demo on Ctrl-C, `up` on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _start(
    args: list[str], state: Path, extra: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLGUARD_")}
    env.update({"ROLLGUARD_STATE_DIR": str(state), **(extra or {})})
    return subprocess.Popen(
        [sys.executable, "-m", "rollguard_shell.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A background job inherits SIGINT ignored, and Python then never raises
        # KeyboardInterrupt; give the child the disposition an interactive terminal gives.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(path: Path, pattern: str, timeout_s: float = 30) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            found = re.search(pattern, path.read_text(errors="replace"))
            if found:
                return found
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} never appeared in {path}")


def _processes_listening(url: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "tansu" in cmdline and url in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find processes")
def test_demo_interrupted_stops_everything_it_started(tmp_path: Path) -> None:
    proc = _start(["demo"], tmp_path)
    try:
        url = _wait_for(tmp_path / "demo" / "broker.log", r"listening on: (tcp://\S+)").group(1)
        _wait_for(tmp_path / "demo.log", r"rollguard\.executor")  # services are running
        assert _processes_listening(url)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert "interrupted" in err
    assert _processes_listening(url) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find processes")
def test_up_logs_where_it_connects_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    proc = _start(["up"], tmp_path, {"ROLLGUARD_LOG_FORMAT": "json"})
    try:
        url = _wait_for(tmp_path / "broker.log", r"listening on: (tcp://\S+)").group(1)
        deadline = time.monotonic() + 30
        # give the services time to start and say so
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert '"event": "running"' in err and url.removeprefix("tcp://") in err
    assert '"event": "shutting_down"' in err
    assert _processes_listening(url) == []


def _cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLGUARD_")}
    env["ROLLGUARD_STATE_DIR"] = str(state)
    return subprocess.run(
        [sys.executable, "-m", "rollguard_shell.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find processes")
def test_the_cli_finds_the_broker_of_a_running_up(tmp_path: Path) -> None:
    """Issue: with the embedded broker's address in ROLLGUARD_KAFKA_BOOTSTRAP, deploy record
    died on InitProducerId (idempotence was off only when the CLI started the broker). Now
    `up` records its broker in the state directory, other commands find it, and idempotence
    is what the broker accepts."""
    import orjson

    proc = _start(["up"], tmp_path, {"ROLLGUARD_LOG_FORMAT": "json"})
    record = tmp_path / "broker.json"
    try:
        _wait_for(record, r'"bootstrap"', timeout_s=60)
        bootstrap = orjson.loads(record.read_bytes())["bootstrap"]
        recorded = _cli(
            tmp_path,
            *("deploy", "record", "--model-id", "m", "--system-version", "s1", "--model", "v1"),
            *("--feature-pipeline", "fp", "--config", "c", "--infra", "i", "--status", "live"),
        )
        assert recorded.returncode == 0, recorded.stderr
        assert "Traceback" not in recorded.stderr
        # The refused producer id is said once, structured; not as aiokafka's own ERROR line.
        assert "ERROR:aiokafka" not in recorded.stderr, recorded.stderr
        assert "idempotence_refused" in recorded.stderr
        assert "recorded m s1 (v1) as live" in recorded.stdout
        second = _cli(tmp_path, "up")
        assert second.returncode == 2 and "already running" in second.stderr
        assert "Traceback" not in second.stderr
        # The manifest reached the ledger that `up` runs: the CLI used up's broker.
        deadline = time.monotonic() + 30
        shown = _cli(tmp_path, "ledger", "show")
        while "deployment s1 (model v1)" not in shown.stdout and time.monotonic() < deadline:
            time.sleep(0.5)
            shown = _cli(tmp_path, "ledger", "show")
        assert "deployment s1 (model v1) → live" in shown.stdout, shown.stdout + shown.stderr
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert not record.exists()  # a stopped up leaves no address behind
    assert '"event": "idempotence_refused"' in err  # asked the broker, once, and said so
    assert _processes_listening(f"tcp://{bootstrap}") == []
    # With no up running, the CLI says what to do in one line.
    orphan = _cli(tmp_path, "rollback", "m", "--as", "sre")
    assert orphan.returncode == 2 and "rollguard up" in orphan.stderr
