"""A full `rollguard demo`, as a user runs it under the usual umask: what it leaves on disk is
private (state directory 0700, databases and keys 0600), and no secret it made or was given
(private keys, a role token and its hash) is in its output, its logs, its broker's log, the
records of its topics or its ledger."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rollguard.authority import person_signer
from tests.conftest import HEAVY, scaled

ROOT = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@dataclass(frozen=True)
class Demo:
    root: Path  # made by the test; the demo makes everything below it
    state: Path
    tokens_file: Path
    token: str
    result: subprocess.CompletedProcess[bytes]


def _rollguard(
    args: list[str], env: dict[str, str], timeout_s: float
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "rollguard_shell", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=timeout_s,
        check=False,
        preexec_fn=lambda: os.umask(0o022),  # what most shells give, whatever the CI's is
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    root = tmp_path_factory.mktemp("secrets")
    state = root / "new" / "state"  # neither there yet
    tokens_file = root / "etc" / "tokens.yaml"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ROLLGUARD_") or k.startswith("ROLLGUARD_TEST_")
    }
    env.update({"ROLLGUARD_TOKENS_FILE": str(tokens_file), "ROLLGUARD_LOG_FORMAT": "json"})
    made = _rollguard(
        ["tokens", "create", "--name", "dora", "--role", "sre"],
        {**env, "ROLLGUARD_STATE_DIR": str(root / "tokens-state")},
        scaled(60),
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.decode().strip().splitlines()[-1]
    # The demo's decider reads the tokens file, and the token is in its environment.
    env.update({"ROLLGUARD_STATE_DIR": str(state), "ROLLGUARD_TOKEN": token})
    result = _rollguard(
        ["demo", "--json", "--warmup", "1.5", "--timeout", str(scaled(30))], env, scaled(240)
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    assert json.loads(result.stdout)["rollback_applied"] is True
    return Demo(root, state, tokens_file, token, result)


def _secrets_of_key(pem_path: Path) -> list[str]:
    """Every form a private key could leak in: its PEM body lines, its raw bytes in hex and
    base64."""
    pem = pem_path.read_bytes()
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, Ed25519PrivateKey)
    body = [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]
    return [*body, *_raw_forms(private)]


def _raw_forms(private: Ed25519PrivateKey) -> list[str]:
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return [
        raw.hex(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ]


def _secrets(demo: Demo) -> dict[str, list[str]]:
    keys = sorted(demo.state.rglob("*.pem"))
    found = {str(p.relative_to(demo.state)): _secrets_of_key(p) for p in keys}
    # The token, and the key it derives (what signs the person's requests and approvals).
    found["token"] = [demo.token, *_raw_forms(person_signer(demo.token).private)]
    return found


def _haystacks(demo: Demo) -> dict[str, bytes]:
    """What the demo said and wrote, but its secrets themselves: stdout, stderr, every file of
    its state directory (logs, the broker's log and its topics' records, the databases, the
    checkpoints) and the ledger's payloads (a payload can span SQLite pages)."""
    stacks = {"stdout": demo.result.stdout, "stderr": demo.result.stderr}
    for path in sorted(demo.state.rglob("*")):
        if path.is_file() and path.suffix != ".pem":
            stacks[str(path.relative_to(demo.state))] = path.read_bytes()
    ledger = sqlite3.connect(demo.state / "demo" / "ledger.db")
    try:
        payloads = [row[0] for row in ledger.execute("SELECT payload FROM ledger_entries")]
    finally:
        ledger.close()
    stacks["ledger payloads"] = b"\n".join(payloads)
    return stacks


@HEAVY
@pytest.mark.timeout(scaled(300))
def test_the_demo_leaves_no_secret_in_its_output_logs_topics_or_ledger(demo: Demo) -> None:
    secrets = _secrets(demo)
    # the secrets are real: the decider's key and the ledger's at least, each seen where it is
    assert {"keys/signing.pem", "keys/ledger.pem"} <= set(secrets), sorted(secrets)
    for name, forms in secrets.items():
        source = demo.tokens_file if name == "token" else demo.state / name
        if name != "token":
            assert forms[0] in source.read_text()
    # the tokens file names the person by the public key the token derives, nothing more
    assert person_signer(demo.token).key_id in demo.tokens_file.read_text()
    stacks = _haystacks(demo)
    # and what is searched is the whole run: logs of every service, records of every topic
    demo_log = stacks["demo.log"].decode()
    assert len(demo_log.splitlines()) > 20 and '"logger_name"' in demo_log
    assert b"RollbackCommand" in stacks["ledger payloads"]
    assert any(name.startswith("demo/broker-data/") for name in stacks), sorted(stacks)
    leaks = [
        f"{name} in {where}"
        for name, forms in secrets.items()
        for form in forms
        for where, stack in stacks.items()
        if form.encode() in stack
    ]
    assert leaks == []


@pytest.mark.timeout(scaled(300))
def test_the_demo_s_state_directory_databases_and_keys_are_private(demo: Demo) -> None:
    directories = [demo.root / "new", demo.state, demo.state / "demo", demo.state / "keys"]
    assert [f"{mode(d):04o}" for d in directories] == ["0700"] * len(directories)
    databases = [
        demo.state / "demo" / "ledger.db",
        demo.state / "demo" / "executor.db",
        demo.state / "notifier.db",
    ]
    journals = [
        p for p in demo.state.rglob("*.db-*") if p.name.endswith(("-journal", "-wal", "-shm"))
    ]
    keys = sorted(demo.state.rglob("*.pem"))
    assert len(keys) >= 2
    private = [*databases, *journals, *keys, demo.tokens_file]
    assert {str(p.relative_to(demo.root)): f"{mode(p):04o}" for p in private} == {
        str(p.relative_to(demo.root)): "0600" for p in private
    }
    assert mode(demo.tokens_file.parent) == 0o700
