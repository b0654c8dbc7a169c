"""ledger: read and check the tamper-evident ledger."""

from __future__ import annotations

import argparse

from rollguard.commands import Subparsers, group
from rollguard.settings import RollguardSettings


def register(sub: Subparsers) -> None:
    ledger = group(sub, "ledger", "the tamper-evident ledger")
    verify = ledger.add_parser("verify", help="check every link of the hash chain")
    verify.add_argument("--url", help="SQLAlchemy URL (default: ROLLGUARD_LEDGER_URL)")
    verify.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace, settings: RollguardSettings) -> int:
    from services.ledger.store import LedgerStore

    store = LedgerStore(args.url or settings.resolved_ledger_url)
    try:
        report = store.verify()
    finally:
        store.close()
    if report.ok:
        print(f"ledger ok: {report.entries} entries, head {report.head_hash[:16]}")
        return 0
    print(f"ledger BROKEN at seq {report.first_bad_seq}: {report.reason}")
    return 1
