"""Every command of the README, given what users get wrong, answers as the README's table of
exit codes says: one line on stderr starting ``rollguard: ``, no traceback, the documented code.

The cases run as subprocesses, all at once (each imports the whole CLI, some wait out a refused
connection), before the first test looks at its own. Commands that share a path with one here
are not repeated (every publisher waits for the broker as rollback does, every broker command
asks for one as rollback and run do); test_cli.py has more bad arguments and missing ledgers.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rollguard.authority import create_token
from rollguard.signing import generate_keypair
from rollguard_services.ledger.store import Incoming, LedgerStore
from tests.conftest import scaled
from tests.factories import breach

ROOT = Path(__file__).resolve().parents[2]

#: Nothing listens on port 1: every connection is refused at once, and the CLI gives up
#: after ROLLGUARD_CONNECT_TIMEOUT_S.
UNREACHABLE = {"ROLLGUARD_KAFKA_BOOTSTRAP": "127.0.0.1:1", "ROLLGUARD_CONNECT_TIMEOUT_S": "1"}
TOKEN = {"ROLLGUARD_TOKEN": "not-checked-before-the-broker"}
#: A site-packages shim that makes psycopg look uninstalled (see _world).
NO_PSYCOPG = {"PYTHONPATH": "{shim}"}
PG = "postgresql+psycopg://rollguard@127.0.0.1:1/ledger"


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    code: int
    said: str  # a part of the one line on stderr
    env: dict[str, str] = field(default_factory=dict)


CASES = [
    # a bad argument: the parser's line is like every other
    Case("deploy-check-without-model", ("deploy", "check"), 2, "required: MODEL"),
    # an unreachable broker: reading a topic (deploy check, approve), publishing, up
    Case("deploy-check-unreachable", ("deploy", "check", "m"), 3, "127.0.0.1:1", UNREACHABLE),
    Case(
        "rollback-unreachable",
        ("rollback", "m", "--as", "sre"),
        3,
        "no Kafka broker answered at 127.0.0.1:1",
        {**UNREACHABLE, **TOKEN},
    ),
    Case(
        "approve-unreachable",
        ("approve", "d-1", "--as", "sre"),
        3,
        "no Kafka broker answered at 127.0.0.1:1",
        {**UNREACHABLE, **TOKEN},
    ),
    Case("up-unreachable", ("up",), 3, "127.0.0.1:1", UNREACHABLE),
    # no broker at all: no bootstrap and no `rollguard up` on the state directory
    Case("rollback-no-broker", ("rollback", "m", "--as", "sre"), 3, "`rollguard up`", TOKEN),
    Case("run-no-broker", ("run", "ledger"), 3, "ROLLGUARD_KAFKA_BOOTSTRAP"),
    # bad settings and policies
    Case(
        "bad-service-setting",
        ("ledger", "verify", "--url", "{ledger}"),
        2,
        "ROLLGUARD_LEDGER_MAX_BATCH: Input should be a valid integer",
        {"ROLLGUARD_LEDGER_MAX_BATCH": "many"},
    ),
    Case(
        "bad-policy-before-the-broker",
        ("deploy", "check", "m"),
        2,
        "bad-policy.yaml:2: defaults.rollback.cooldown_s",
        {**UNREACHABLE, "ROLLGUARD_POLICY_PATH": "{policy}"},
    ),
    # YAML that is not YAML, or not shaped as it should be: PyYAML's several lines, or a
    # traceback, were what users got
    Case("lint-not-yaml", ("policy", "lint", "{not_yaml}"), 2, "not-yaml.yaml:3:1: not valid YAML"),
    Case(
        "tokens-file-a-list",
        ("tokens", "create", "--name", "dora", "--role", "sre"),
        2,
        "a tokens file is a mapping with a list under 'tokens'",
        {"ROLLGUARD_TOKENS_FILE": "{tokens_list}"},
    ),
    # secrets group or others may read: refused before anything starts (no broker here)
    Case(
        "signing-key-open-to-others",
        ("run", "decider"),
        2,
        "open/signing.pem is open to group or others (mode 0644); chmod 600 /",
        {**UNREACHABLE, "ROLLGUARD_SIGNING_KEY_FILE": "{open_key}"},
    ),
    Case(
        "demo-signing-key-open-to-others",
        ("demo",),
        2,
        "open/signing.pem is open to group or others (mode 0644); chmod 600 /",
        {"ROLLGUARD_SIGNING_KEY_FILE": "{open_key}"},
    ),
    Case(
        "tokens-file-open-to-others",
        ("tokens", "create", "--name", "dora", "--role", "sre"),
        2,
        "open/tokens.yaml is open to group or others (mode 0644); chmod 600 /",
        {"ROLLGUARD_TOKENS_FILE": "{open_tokens}"},
    ),
    Case(
        "decider-tokens-file-open-to-others",
        ("run", "decider"),
        2,
        "open/tokens.yaml is open to group or others (mode 0644); chmod 600 /",
        {**UNREACHABLE, "ROLLGUARD_TOKENS_FILE": "{open_tokens}"},
    ),
    # ledgers that are not there, URLs that are not URLs
    Case(
        "verify-garbage-url",
        ("ledger", "verify", "--url", "garbage"),
        2,
        "--url is not a database URL",
    ),
    Case(
        "show-garbage-url", ("ledger", "show", "--url", "garbage"), 2, "--url is not a database URL"
    ),
    Case(
        "export-garbage-url",
        ("ledger", "export", "--url", "garbage"),
        2,
        "--url is not a database URL",
    ),
    Case("incident-garbage-url", ("incident", "show", "x", "--url", "garbage"), 2, "is not a"),
    Case(
        "garbage-ledger-setting",
        ("ledger", "show"),
        2,
        "ROLLGUARD_LEDGER_URL is not a database URL",
        {"ROLLGUARD_LEDGER_URL": "postgres//rollguard:secret@db"},
    ),
    Case(
        "unknown-database",
        ("ledger", "verify", "--url", "oracle+nosuch://db/x"),
        2,
        "unknown database 'oracle+nosuch'",
    ),
    Case(
        "up-garbage-ledger-setting",
        ("up",),
        2,
        "ROLLGUARD_LEDGER_URL is not a database URL",
        {"ROLLGUARD_LEDGER_URL": "garbage"},
    ),
    # an optional dependency that is not installed
    Case(
        "verify-without-psycopg",
        ("ledger", "verify", "--url", PG),
        2,
        "driver 'psycopg' of postgresql+psycopg:// is not installed; for PostgreSQL use "
        "postgresql+psycopg:// and pip install 'rollguard[postgres]'",
        NO_PSYCOPG,
    ),
    Case(
        "run-ledger-without-psycopg",
        ("run", "ledger"),
        2,
        "pip install 'rollguard[postgres]'",
        {**NO_PSYCOPG, **UNREACHABLE, "ROLLGUARD_LEDGER_URL": PG},
    ),
    # paths that cannot be written
    Case(
        "export-to-a-missing-directory",
        ("ledger", "export", "--url", "{ledger}", "--output", "{tmp}/no/such/dir/x.jsonl"),
        2,
        "no/such/dir/x.jsonl: No such file or directory (--output)",
    ),
    Case(
        "schemas-into-a-file",
        ("schemas", "export", "--dir", "{file}/schemas"),
        2,
        "Not a directory (--dir)",
    ),
    Case(
        "keys-in-a-file",
        ("keys", "generate"),
        2,
        "cannot write",
        {"ROLLGUARD_STATE_DIR": "{file}/state"},
    ),
    Case(
        "tokens-in-a-file",
        ("tokens", "create", "--name", "dora", "--role", "sre"),
        2,
        "(ROLLGUARD_STATE_DIR)",
        {"ROLLGUARD_STATE_DIR": "{file}/state"},
    ),
    Case(
        "demo-in-a-file", ("demo",), 2, "(ROLLGUARD_STATE_DIR)", {"ROLLGUARD_STATE_DIR": "{file}/s"}
    ),
    Case("up-in-a-file", ("up",), 2, "(ROLLGUARD_STATE_DIR)", {"ROLLGUARD_STATE_DIR": "{file}/s"}),
    # checks that answer no, a ledger that does not verify
    Case(
        "verify-named-checkpoints-missing",
        ("ledger", "verify", "--url", "{ledger}", "--checkpoints", "{tmp}/typo.jsonl"),
        2,
        "typo.jsonl: no such file",
    ),
    Case(
        "verify-broken-chain",
        ("ledger", "verify", "--url", "{broken}"),
        5,
        "the ledger does not verify (at seq 2",
    ),
    Case("schemas-stale", ("schemas", "export", "--check", "--dir", "{tmp}"), 4, "stale schemas"),
]


def _env(extra: dict[str, str], state: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ROLLGUARD_") or k.startswith("ROLLGUARD_TEST_")
    }
    env["ROLLGUARD_STATE_DIR"] = str(state)
    env.update(extra)
    return env


def rollguard(
    args: tuple[str, ...], env: dict[str, str], state: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollguard_shell", *args],
        cwd=ROOT,
        env=_env(env, state),
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )


def _world(base: Path) -> dict[str, str]:
    """What the cases point at: a good ledger, a tampered one, a bad policy, a file where a
    directory is expected, a shim that hides psycopg."""
    good = base / "ledger.db"
    broken = base / "broken.db"
    for path in (good, broken):
        store = LedgerStore(f"sqlite:///{path}")
        store.append(
            [Incoming("rollguard.breaches", 0, i, breach(value=0.1 * i).encode()) for i in range(3)]
        )
        store.close()
    db = sqlite3.connect(broken)
    with db:
        db.execute("DROP TRIGGER ledger_no_update")
        db.execute("UPDATE ledger_entries SET event_id = 'forged' WHERE seq = 2")
    db.close()
    policy = base / "bad-policy.yaml"
    policy.write_text("defaults:\n  rollback: {cooldown_s: -1}\n")
    (base / "not-yaml.yaml").write_text("defaults:\n  rollback: [1, 2\n")
    (base / "tokens-list.yaml").write_text("- a\n- b\n")
    (base / "tokens-list.yaml").chmod(0o600)  # private, so that its shape is what is wrong
    generate_keypair(base / "open" / "signing.pem", base / "open" / "trusted")
    (base / "open" / "signing.pem").chmod(0o644)
    create_token(base / "open" / "tokens.yaml", "carol", "sre")
    (base / "open" / "tokens.yaml").chmod(0o644)
    a_file = base / "a-file"
    a_file.write_text("not a directory")
    shim = base / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoPsycopg:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] == 'psycopg':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _NoPsycopg())\n"
    )
    return {
        "ledger": f"sqlite:///{good}",
        "broken": f"sqlite:///{broken}",
        "missing": f"sqlite:///{base / 'typo' / 'ledger.db'}",
        "policy": str(policy),
        "not_yaml": str(base / "not-yaml.yaml"),
        "tokens_list": str(base / "tokens-list.yaml"),
        "open_key": str(base / "open" / "signing.pem"),
        "open_tokens": str(base / "open" / "tokens.yaml"),
        "file": str(a_file),
        "shim": str(shim),
    }


@pytest.fixture(scope="module")
def outcomes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    world = _world(tmp_path_factory.mktemp("world"))

    def run(case: Case) -> subprocess.CompletedProcess[str]:
        state = tmp_path_factory.mktemp(case.id)
        where = {**world, "tmp": str(state)}
        args = tuple(a.format(**where) for a in case.args)
        env = {k: v.format(**where) for k, v in case.env.items()}
        return rollguard(args, env, state)

    with ThreadPoolExecutor(max_workers=8) as pool:
        yield dict(zip((c.id for c in CASES), pool.map(run, CASES), strict=True))


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rollguard: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_one_line_and_the_documented_code(
    case: Case, outcomes: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    result = outcomes[case.id]
    line = one_line(result)
    assert case.said in line
    assert result.returncode == case.code, line
    assert "secret" not in line  # a database URL's password is never repeated


@pytest.mark.broker
def test_deploy_check_of_an_unknown_model_is_not_ready(
    kafka_bootstrap: tuple[str, bool], tmp_path: Path
) -> None:
    """'No' is 4, apart from a mistyped command (2) and a missing broker (3)."""
    env = {
        "ROLLGUARD_KAFKA_BOOTSTRAP": kafka_bootstrap[0],
        "ROLLGUARD_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
        "ROLLGUARD_CONNECT_TIMEOUT_S": str(scaled(10)),
    }
    created = rollguard(("topics", "create"), env, tmp_path)
    assert created.returncode == 0, created.stderr
    answer = rollguard(("deploy", "check", "ghost"), env, tmp_path)
    assert answer.returncode == 4, answer.stderr
    assert one_line(answer) == "rollguard: not ready: the decider knows no deployment of ghost"
