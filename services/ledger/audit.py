"""What an auditor runs: the chain recomputed, and every signed checkpoint held against it.

The chain alone finds a changed, deleted, inserted or reordered row (its own hash or its link
no longer holds). Checkpoints add what the chain cannot see: a cut tail (a checkpoint vouches
for more entries than there are) and a chain rebuilt after a change (the hash at a
checkpoint's size is not the one that was signed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from rollguard.errors import LedgerCorrupt, UsageError
from rollguard.events import LedgerCheckpoint, utcnow
from rollguard.settings import RollguardSettings
from rollguard.signing import load_trusted_keys
from rollguard_services.ledger.checkpoints import (
    CheckpointFile,
    CheckpointRead,
    WitnessRead,
    signature_problem,
)
from rollguard_services.ledger.settings import LedgerSettings
from rollguard_services.ledger.store import LedgerStore


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    entries: int
    head_hash: str
    first_bad_seq: int | None = None
    reason: str = ""
    checkpoints_checked: int = 0
    #: Problems with the checkpoints themselves (unreadable line, untrusted or bad signature).
    checkpoint_problems: list[str] = field(default_factory=list)
    #: Not failures, but limits of what was proven (e.g. no checkpoint at all).
    warnings: list[str] = field(default_factory=list)


#: Beyond the checkpoint interval, how long an entry may wait for its first checkpoint (a
#: ledger restarted after a kill -9 checkpoints what it has at start).
CHECKPOINT_GRACE_S = 60.0


def verify_ledger(
    store: LedgerStore,
    read: CheckpointRead,
    trusted: dict[str, Ed25519PublicKey],
    witness: WitnessRead | None = None,
    *,
    checkpoint_interval_s: float | None = None,
    grace_s: float = CHECKPOINT_GRACE_S,
) -> VerifyReport:
    """The chain recomputed and held against the checkpoints of the file and, when given,
    of the witness topic: a checkpoint the witness holds and the file lacks (deleted from
    it), two checkpoints of one size that disagree (a re-signed rewrite), or entries no
    checkpoint ever covered although one was due (``checkpoint_interval_s``: a deleted
    checkpoint file) break it."""
    problems = [f"checkpoint file line {n} is not a checkpoint" for n in read.unreadable_lines]
    valid: list[LedgerCheckpoint] = []
    for cp in read.checkpoints:
        problem = signature_problem(cp, trusted)
        if problem:
            problems.append(f"checkpoint of size {cp.size} at {cp.ts.isoformat()}: {problem}")
        else:
            valid.append(cp)
    if witness is not None and witness.untrusted:
        kids = sorted({cp.key_id for cp in witness.untrusted})
        problems.append(
            f"{len(witness.untrusted)} checkpoint(s) on the witness topic are signed by key(s) "
            f"{', '.join(kids)}, which are not trusted here: the checkpoint key was replaced "
            "(keep a rotated key's public half in the trusted directory), or something else "
            "writes the witness topic"
        )
    if witness is not None:
        in_file = {(cp.size, cp.head_hash) for cp in valid}
        lost = [cp for cp in witness.checkpoints if (cp.size, cp.head_hash) not in in_file]
        lost = list({(cp.size, cp.head_hash): cp for cp in lost}.values())
        if lost:
            problems.append(
                f"{len(lost)} checkpoint(s) on the witness topic are not in the checkpoint "
                f"file (sizes {', '.join(str(c.size) for c in sorted(lost, key=_size)[:5])}"
                f"{', …' if len(lost) > 5 else ''}): checkpoints were deleted from the file"
            )
        valid += lost
    heads: dict[int, set[str]] = {}
    for cp in valid:
        heads.setdefault(cp.size, set()).add(cp.head_hash)
    for size, hashes in sorted(heads.items()):
        if len(hashes) > 1:
            problems.append(
                f"{len(hashes)} checkpoints of size {size} vouch for different head hashes: "
                "the chain was rewritten and signed again"
            )
    chain = store.verify_chain(at_sizes={cp.size for cp in valid})
    first_bad, reason = chain.first_bad_seq, chain.reason
    # What the chain vouches for: every entry up to here recomputed correctly.
    sound = chain.entries if chain.ok else (chain.first_bad_seq or 1) - 1

    matched = 0  # the largest checkpoint size whose signed head hash the chain reproduces
    for cp in sorted(valid, key=lambda c: c.size):
        if cp.size > sound:
            if chain.ok:
                bad = chain.entries + 1
                why = (
                    f"seq {bad}..{cp.size} are missing: the checkpoint of {cp.ts.isoformat()} "
                    f"vouches for {cp.size} entries, the ledger has {chain.entries}"
                )
                if first_bad is None or bad < first_bad:
                    first_bad, reason = bad, why
            break
        if chain.hashes_at.get(cp.size) == cp.head_hash:
            if len(heads[cp.size]) == 1:  # of two that disagree, the one that matches is not
                matched = cp.size  # proof: it may be the one signed again
            continue
        bad = min(matched + 1, cp.size)
        why = (
            f"an entry in seq {bad}..{cp.size} was changed and the chain re-hashed: the hash "
            f"at seq {cp.size} differs from the checkpoint of {cp.ts.isoformat()}, the last "
            f"checkpoint that matches is at seq {matched}"
        )
        if len(heads[cp.size]) > 1:
            why += f", and a checkpoint of size {cp.size} was signed again for the new chain"
        if first_bad is None or bad < first_bad:
            first_bad, reason = bad, why
        break

    warnings = []
    if witness is not None and witness.ignored:
        warnings.append(
            f"{witness.ignored} record(s) on the witness topic are not checkpoints (ignored)"
        )
    try:
        overdue = store.first_recorded_at() if not valid and chain.entries else None
    except LedgerCorrupt as exc:  # the chain has already said where, if it could
        overdue = None
        if first_bad is None:
            first_bad, reason = 1, str(exc)
    if overdue is not None and checkpoint_interval_s is not None:
        age = (utcnow() - overdue).total_seconds()
        if age > checkpoint_interval_s + grace_s and first_bad is None:
            first_bad = 1
            reason = (
                f"no checkpoint covers any of the {chain.entries} entries, the first recorded "
                f"{age:.0f} s ago (a checkpoint is due {checkpoint_interval_s:g} s after an "
                "entry): the checkpoint file was deleted or replaced (a ledger that never "
                "ran that long checkpoints when it starts again)"
            )
    if not valid and chain.entries:
        warnings.append("no valid checkpoint: a cut tail or a re-hashed chain would go unseen")
    elif valid and max(cp.size for cp in valid) < chain.entries:
        newest = max(cp.size for cp in valid)
        warnings.append(f"entries after seq {newest} are not covered by a checkpoint yet")
    return VerifyReport(
        ok=first_bad is None and not problems,
        entries=chain.entries,
        head_hash=chain.head_hash,
        first_bad_seq=first_bad,
        reason=reason if first_bad is not None else "; ".join(problems),
        checkpoints_checked=len(valid),
        checkpoint_problems=problems,
        warnings=warnings,
    )


def _size(cp: LedgerCheckpoint) -> int:
    return cp.size


def verify_configured(
    settings: RollguardSettings,
    ledger_settings: LedgerSettings,
    *,
    url: str | None = None,
    checkpoints: Path | None = None,
    trusted_dir: Path | None = None,
    witness: WitnessRead | None = None,
) -> tuple[VerifyReport, Path]:
    """Verify the ledger the settings point at, with its checkpoint file and trusted keys.

    Returns the report and the checkpoint file it read. Checkpoints with no trusted key to
    check them against are a usage error, not a pass.
    """
    svc = ledger_settings
    url = url or settings.resolved_ledger_url
    path = checkpoints or svc.resolved_checkpoint_file(url, settings.state_dir)
    trusted_dir = trusted_dir or svc.resolved_checkpoint_trusted_dir(settings.state_dir)
    trusted = load_trusted_keys(trusted_dir) if trusted_dir.is_dir() else {}
    read = CheckpointFile(path).read()
    if read.checkpoints and not trusted:
        raise UsageError(f"no trusted checkpoint keys in {trusted_dir} (--trusted-dir)")
    store = LedgerStore(url, create=False)
    try:
        return (
            verify_ledger(
                store, read, trusted, witness, checkpoint_interval_s=svc.checkpoint_interval_s
            ),
            path,
        )
    finally:
        store.close()
