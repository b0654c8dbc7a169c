"""Checkpoints witnessed on the broker (issue 13, part 5): an attacker who can write the whole
state directory (the database, the checkpoint file, the checkpoint key itself) is caught by
the checkpoints the ledger published on the ledger-checkpoints topic.

The ledger service really runs against the broker and publishes its checkpoints; each attack
is then made on a copy of what it left, and verified with the witness and without it. The
matrix printed says what each way of verifying reports.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from rollguard import topics
from rollguard.settings import RollguardSettings
from rollguard.signing import generate_keypair, load_signer, load_trusted_keys
from rollguard_services.ledger.app import Ledger
from rollguard_services.ledger.audit import VerifyReport, verify_ledger
from rollguard_services.ledger.checkpoints import (
    CheckpointFile,
    WitnessRead,
    sign_checkpoint,
    witnessed,
)
from rollguard_services.ledger.settings import LedgerSettings
from rollguard_services.ledger.store import LedgerStore, entries, row_hash
from tests.conftest import run_until, scaled
from tests.factories import breach
from tests.ledger.test_tamper import _as_row, owner, row

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]

#: Long enough for the three entries of a round to be stored before their checkpoint.
INTERVAL_S = 1.0


def _rehash_from(conn: sa.Connection, k: int, n: int) -> None:
    prev = row(conn, k - 1).hash if k > 1 else "0" * 64
    for seq in range(k, n + 1):
        r = row(conn, seq)
        digest = row_hash(prev, _as_row({**r._mapping, "prev_hash": prev}))
        conn.execute(
            sa.update(entries).where(entries.c.seq == seq).values(prev_hash=prev, hash=digest)
        )
        prev = digest


class StateDir:
    """What the ledger left in the state directory, and an attacker's copy of it."""

    def __init__(self, settings: RollguardSettings, svc: LedgerSettings) -> None:
        self.settings = settings
        self.svc = svc
        self.db = Path(settings.resolved_ledger_url.removeprefix("sqlite:///"))
        self.cps = svc.resolved_checkpoint_file(settings.resolved_ledger_url, settings.state_dir)
        self.key = svc.resolved_checkpoint_key_file(settings.state_dir)
        self.saved = settings.state_dir.parent / "pristine"

    @property
    def trusted(self) -> dict[str, Ed25519PublicKey]:
        """The checkpoint keys, as the ledger made them on first start."""
        return load_trusted_keys(self.svc.resolved_checkpoint_trusted_dir(self.settings.state_dir))

    def save(self) -> None:
        self.saved.mkdir()
        shutil.copy2(self.db, self.saved / "ledger.db")
        shutil.copy2(self.cps, self.saved / "cps.jsonl")
        shutil.copytree(self.key.parent, self.saved / "keys")

    @property
    def store(self) -> LedgerStore:
        return LedgerStore(self.settings.resolved_ledger_url, create=False)

    def restore(self) -> None:
        shutil.copy2(self.saved / "ledger.db", self.db)
        shutil.copy2(self.saved / "cps.jsonl", self.cps)
        keys = self.key.parent
        shutil.rmtree(keys)
        shutil.copytree(self.saved / "keys", keys)

    def verify(self, witness: WitnessRead | None) -> VerifyReport:
        store = self.store
        try:
            read = CheckpointFile(self.cps).read()
            return verify_ledger(
                store, read, self.trusted, witness, checkpoint_interval_s=INTERVAL_S, grace_s=0
            )
        finally:
            store.close()

    # ---- attacks: each one as whoever can write the state directory, key included

    def rewrite_and_resign(self) -> None:
        """Change entry 2, re-hash the chain after it, sign a new checkpoint file."""
        store = self.store
        try:
            n = store.count()
            with owner(store) as conn:
                conn.execute(sa.update(entries).where(entries.c.seq == 2).values(model_id="forged"))
                _rehash_from(conn, 2, n)
            signer = load_signer(self.key)
            old = CheckpointFile(self.cps).read().checkpoints
            self.cps.unlink()
            for cp in old:
                head = store.hash_at(cp.size)
                assert head is not None
                CheckpointFile(self.cps).append(sign_checkpoint(signer, cp.size, head, cp.ts))
        finally:
            store.close()

    def truncate_to_an_older_checkpoint(self) -> None:
        """Cut the entries after the first checkpoint and the checkpoint lines after it."""
        kept = min(CheckpointFile(self.cps).read().checkpoints, key=lambda c: c.size)
        store = self.store
        try:
            with owner(store) as conn:
                conn.execute(sa.delete(entries).where(entries.c.seq > kept.size))
        finally:
            store.close()
        lines = self.cps.read_bytes().splitlines(keepends=True)
        self.cps.write_bytes(
            b"".join(line for line in lines if f'"size":{kept.size},' in line.decode())
        )

    def replace_the_key(self) -> None:
        """Rewrite as above, but with a checkpoint key of one's own: the old public key out
        of the trusted directory, a new pair in (what the ledger also does on a first start
        without a key)."""
        trusted_dir = self.svc.resolved_checkpoint_trusted_dir(self.settings.state_dir)
        for old in trusted_dir.glob("*.pub"):
            old.unlink()
        self.key.unlink()
        generate_keypair(self.key, trusted_dir)
        self.rewrite_and_resign()

    def delete_checkpoints(self) -> None:
        self.cps.unlink()

    def truncate_the_table(self) -> None:
        """Every entry deleted, and the checkpoint file with them (a fresh-looking ledger)."""
        store = self.store
        try:
            with owner(store) as conn:
                conn.execute(sa.delete(entries))
        finally:
            store.close()
        self.cps.unlink()


ATTACKS: dict[str, Callable[[StateDir], None]] = {
    "rewrite + re-sign with the key": StateDir.rewrite_and_resign,
    "replace the key, rewrite, re-sign": StateDir.replace_the_key,
    "truncate to an older checkpoint": StateDir.truncate_to_an_older_checkpoint,
    "delete the checkpoint file": StateDir.delete_checkpoints,
    "truncate the table (and checkpoints)": StateDir.truncate_the_table,
}


@pytest.fixture
def served(
    topics_ready: RollguardSettings, publish: Callable[..., Awaitable[None]]
) -> Iterator[tuple[StateDir, Callable[..., Awaitable[None]]]]:
    svc = LedgerSettings(group_id="witness", checkpoint_interval_s=INTERVAL_S)
    yield StateDir(topics_ready, svc), publish


async def _witness(state: StateDir) -> WitnessRead:
    """The witness topic as ``ledger verify`` reads it, bounded: a hang fails here, named."""
    return await asyncio.wait_for(witnessed(state.settings, state.trusted), scaled(60))


async def _ledger_with_two_checkpoints(
    state: StateDir, publish: Callable[..., Awaitable[None]]
) -> None:
    for round_ in range(2):
        for i in range(3):
            await publish(topics.BREACHES.name, breach(value=0.1 * i + round_))
        ledger = Ledger(state.settings, state.svc)
        size = 3 * (round_ + 1)
        await run_until(ledger, lambda svc=ledger, n=size: svc._checkpointed_size == n)
    published = await _witness(state)
    assert sorted({c.size for c in published.checkpoints}) == [3, 6], published


async def test_an_attacker_with_the_state_directory_is_caught_by_the_witness(
    served: tuple[StateDir, Callable[..., Awaitable[None]]], figure: Callable[[str], None]
) -> None:
    state, publish = served
    await asyncio.wait_for(_ledger_with_two_checkpoints(state, publish), scaled(120))
    state.save()
    assert state.verify(await _witness(state)).ok
    await asyncio.sleep(2 * INTERVAL_S)  # every checkpoint that was due is due

    rows = []
    for name, attack in ATTACKS.items():
        state.restore()
        attack(state)
        offline = state.verify(None)
        witness = state.verify(await _witness(state))
        rows.append((name, offline, witness))
    state.restore()

    lines = [
        "ledger tamper matrix, attacker writes the state directory (key included):",
        f"  {'attack':<38} {'file only':<12} with the witness",
    ]
    for name, offline, witness in rows:
        said = "BROKEN" if not witness.ok else "ok (missed)"
        lines.append(f"  {name:<38} {'BROKEN' if not offline.ok else 'ok (missed)':<12} {said}")
        lines.append(f"      {witness.reason[:150]}")
    caught = sum(not w.ok for _, _, w in rows)
    lines.append(f"  with the witness: {caught} of {len(rows)} reported")
    figure("\n".join(lines))
    assert caught == len(rows), [(n, w.reason) for n, _, w in rows if w.ok]
    reasons = {name: witness.reason for name, _, witness in rows}
    assert "signed again" in reasons["rewrite + re-sign with the key"]
    assert "seq 4..6 are missing" in reasons["truncate to an older checkpoint"]
    assert "not trusted here" in rows[1][2].reason
    truncated = rows[2][2]
    assert any("deleted from the file" in p for p in truncated.checkpoint_problems)
    # Without the witness, only the deleted file is seen (its entries were due a checkpoint).
    assert [not offline.ok for _, offline, _ in rows] == [False, False, False, True, False]


def _cli(state: StateDir, *args: str, broker: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "ROLLGUARD_STATE_DIR": str(state.settings.state_dir),
        "ROLLGUARD_TOPIC_PREFIX": state.settings.topic_prefix,
        "ROLLGUARD_ENABLE_IDEMPOTENCE": str(state.settings.enable_idempotence).lower(),
    }
    if broker:
        env["ROLLGUARD_KAFKA_BOOTSTRAP"] = str(state.settings.kafka_bootstrap)
    return subprocess.run(
        [sys.executable, "-m", "rollguard_shell", "ledger", "verify", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=scaled(90),
    )


async def test_ledger_verify_reads_the_witness_and_a_restarted_ledger_refuses_a_cut_chain(
    served: tuple[StateDir, Callable[..., Awaitable[None]]],
) -> None:
    state, publish = served
    await asyncio.wait_for(_ledger_with_two_checkpoints(state, publish), scaled(120))
    fine = await asyncio.to_thread(_cli, state)
    assert fine.returncode == 0 and fine.stdout.startswith("ledger ok: 6 entries"), fine

    state.truncate_to_an_older_checkpoint()
    offline = await asyncio.to_thread(_cli, state, "--witness", "off")
    assert offline.returncode == 0 and "witness" not in offline.stdout  # what the file says
    cut = await asyncio.to_thread(_cli, state)
    assert cut.returncode == 5, cut
    assert "ledger BROKEN at seq 4" in cut.stdout and "deleted from the file" in cut.stdout

    # Started again on the cut chain, the ledger refuses to extend it: the witness
    # remembers 6 entries although the file now says 3.
    ledger = Ledger(state.settings, state.svc)
    await run_until(ledger, lambda: ledger.status == "stalled")
    assert "vouches for 6" in ledger.stall_reason, ledger.stall_reason

    # The checkpoint key deleted: the ledger makes a new one at start, and refuses to sign
    # over a history the witness holds under the old one.
    state.key.unlink()
    shutil.rmtree(state.svc.resolved_checkpoint_trusted_dir(state.settings.state_dir))
    fresh = Ledger(state.settings, state.svc)
    await run_until(fresh, lambda: fresh.status == "stalled")
    assert "checkpoint key was replaced" in fresh.stall_reason, fresh.stall_reason

    # Asked to, without a broker: one line, exit 3.
    alone = await asyncio.to_thread(_cli, state, "--witness", "require", broker=False)
    assert alone.returncode == 3 and len(alone.stderr.strip().splitlines()) == 1, alone
