"""A `rollguard up` as a user runs it (its own embedded broker, SQLite ledger) with its API on
a port of its own, and the CLI beside it: what the API, schemathesis and browser tests use."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import scaled

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Up:
    state: Path
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLGUARD_")}
        env.update(ROLLGUARD_STATE_DIR=str(self.state), **extra)
        return env

    def cli(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        """A `rollguard` command on the same state directory, as from another shell."""
        return subprocess.run(
            [sys.executable, "-m", "rollguard_shell.cli", *args],
            cwd=ROOT,
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=scaled(120),
            check=False,
        )

    def token(self, name: str, role: str) -> str:
        made = self.cli("tokens", "create", "--name", name, "--role", role)
        assert made.returncode == 0, made.stderr
        return made.stdout.strip().splitlines()[-1]

    def deploy(self, model: str, system: str, version: str, status: str) -> None:
        done = self.cli(
            "deploy", "record", "--model-id", model, "--system-version", system,
            "--model", version, "--feature-pipeline", "f1", "--config", "c1", "--infra", "i1",
            "--status", status,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    def wait(self, what: str, check: object, timeout_s: float = 30) -> object:
        """Poll ``check()`` until it returns something truthy."""
        deadline = time.monotonic() + scaled(timeout_s)
        while True:
            got = check()  # type: ignore[operator]
            if got:
                return got
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{what} within {timeout_s}s\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def logged(self, event: str) -> list[dict[str, object]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{") and f'"{event}"' in line:
                doc = json.loads(line)
                if doc.get("event") == event:
                    out.append(doc)
        return out


def start_up(state: Path, **extra: str) -> Up:
    log = state.parent / "up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLGUARD_")}
    env.update(
        ROLLGUARD_STATE_DIR=str(state),
        ROLLGUARD_LOG_FORMAT="json",
        ROLLGUARD_API_PORT="0",
        ROLLGUARD_EMBEDDED_STORAGE="memory",
        **extra,
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollguard_shell.cli", "up"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    up = Up(state=state, url="", proc=proc, log=log)
    listening = up.wait("the API listening", lambda: up.logged("listening"), 120)
    up.url = str(listening[0]["url"])  # type: ignore[index]
    up.wait("every service ready", lambda: _ready(up.url), 60)
    return up


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stop_up(up: Up) -> int:
    if up.proc.poll() is None:
        os.killpg(up.proc.pid, signal.SIGINT)  # Ctrl-C, as a user stops it
        try:
            return up.proc.wait(timeout=scaled(30))
        except subprocess.TimeoutExpired:
            os.killpg(up.proc.pid, signal.SIGKILL)
            up.proc.wait()
    return up.proc.returncode


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    running = start_up(tmp_path / "state")
    try:
        yield running
    finally:
        stop_up(running)
