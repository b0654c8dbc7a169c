"""ledger: check, read and export the tamper-evident ledger."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rollguard.authority import TokenRegistry
from rollguard.bus import wait_for_broker
from rollguard.errors import BrokerUnavailable, ConfigError, ExitCode, LedgerCorrupt, UsageError
from rollguard.settings import RollguardSettings
from rollguard.signing import Trust, load_trusted_keys, trust_of
from rollguard_services.ledger.audit import verify_configured
from rollguard_services.ledger.checkpoints import WitnessRead, witnessed
from rollguard_services.ledger.incidents import INCIDENT_TYPES, describe, details, find_incident
from rollguard_services.ledger.provenance import provenance, trusted_only, untrusted_counts
from rollguard_services.ledger.settings import LedgerSettings
from rollguard_services.ledger.store import LedgerStore
from rollguard_shell.commands import Subparsers, database_url, group, require_broker, writing


def register(sub: Subparsers) -> None:
    ledger = group(sub, "ledger", "the tamper-evident ledger")
    verify = ledger.add_parser(
        "verify", help="check every link of the hash chain and every signed checkpoint"
    )
    verify.add_argument("--url", help="SQLAlchemy URL (default: ROLLGUARD_LEDGER_URL)")
    verify.add_argument("--checkpoints", type=Path, help="checkpoint file (JSON lines)")
    verify.add_argument(
        "--trusted-dir", type=Path, help="public keys that may sign checkpoints (*.pub)"
    )
    verify.add_argument(
        "--witness",
        choices=["auto", "require", "off"],
        default="auto",
        help="hold the checkpoints against the ledger-checkpoints topic: auto (when a broker "
        "is configured and answers, else a warning), require (exit 3 without it), off",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(handler=_verify)

    show = ledger.add_parser("show", help="print a readable timeline")
    _filters(show)
    show.add_argument("--json", action="store_true", help="one JSON object per entry")
    show.set_defaults(handler=_show)

    export = ledger.add_parser("export", help="write every entry, with its hashes")
    _filters(export)
    export.add_argument("--format", choices=["jsonl"], default="jsonl")
    export.add_argument("--output", type=Path, help="file to write (default: stdout)")
    export.set_defaults(handler=_export)


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="SQLAlchemy URL (default: ROLLGUARD_LEDGER_URL)")
    parser.add_argument("--model-id")
    parser.add_argument("--model-version")
    parser.add_argument(
        "--since", help="ISO time (UTC if no offset) or a duration ago: 30m, 2h, 7d"
    )
    parser.add_argument("--incident", help="only this incident: decision id or command id")


def parse_since(text: str, now: datetime | None = None) -> datetime:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        try:
            return (now or datetime.now(UTC)) - timedelta(seconds=float(match.group(1)) * unit)
        except (OverflowError, ValueError):
            raise UsageError(f"--since {text!r}: further back than a date can be") from None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r}: give an ISO time or a duration like 30m") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def recorded_trust(settings: RollguardSettings) -> Trust:
    """The keys the ledger's entries are read against: the trusted keys, those retired since
    (for what was recorded before), and the people of the tokens file (requests and
    approvals are signed by the key each person's token derives)."""
    return TokenRegistry.load(settings.resolved_tokens_file).trust(
        trust_of(settings, history=True), history=True
    )


def ledger_url(args: argparse.Namespace, settings: RollguardSettings) -> str:
    """The ledger's URL, from --url or the settings, checked before anything opens it."""
    if args.url:
        return database_url(args.url, "--url")
    if settings.ledger_url:
        return database_url(settings.ledger_url, "ROLLGUARD_LEDGER_URL")
    return settings.resolved_ledger_url


def open_ledger(args: argparse.Namespace, settings: RollguardSettings) -> LedgerStore:
    """The ledger as it is, read-only: LedgerMissing (exit 2) if there is none."""
    return LedgerStore(ledger_url(args, settings), create=False)


def selected(args: argparse.Namespace, settings: RollguardSettings) -> list[Any]:
    """Entries matching the filters, in seq order."""

    since = parse_since(args.since) if args.since else None
    store = open_ledger(args, settings)
    try:
        if args.incident:
            pool = store.iter_entries(args.model_id, event_types=INCIDENT_TYPES)
            incident = find_incident(trusted_only(pool, recorded_trust(settings)), args.incident)
            if incident is None:
                raise UsageError(f"no incident {args.incident!r} in the ledger")
            entries = incident.entries
            if since is not None:
                entries = [e for e in entries if e.recorded_at_utc() >= since]
        else:
            entries = store.entries(args.model_id, since=since)
    finally:
        store.close()
    if args.model_version:
        entries = [e for e in entries if e.payload.get("model_version") == args.model_version]
    return entries


def _verify(args: argparse.Namespace, settings: RollguardSettings) -> int:
    # Named explicitly, a checkpoint file or key directory that is not there is a typo, never
    # "ok, 0 checkpoints": the defaults may be absent (a ledger without checkpoints yet).
    if args.checkpoints is not None and not args.checkpoints.is_file():
        raise UsageError(f"--checkpoints {args.checkpoints}: no such file")
    if args.trusted_dir is not None and not args.trusted_dir.is_dir():
        raise UsageError(f"--trusted-dir {args.trusted_dir}: no such directory")
    svc = LedgerSettings()
    url = ledger_url(args, settings)
    trusted_dir = args.trusted_dir or svc.resolved_checkpoint_trusted_dir(settings.state_dir)
    copy = "--url" if args.url else "--checkpoints" if args.checkpoints else ""
    witness, unread = _witness(args.witness, settings, trusted_dir, copy)
    report, path = verify_configured(
        settings,
        svc,
        url=url,
        checkpoints=args.checkpoints,
        trusted_dir=args.trusted_dir,
        witness=witness,
    )
    if unread:
        report.warnings[0:0] = [unread]
    unreadable = False
    try:
        untrusted = _untrusted(args, settings)
    except LedgerCorrupt as exc:  # who signed what cannot be read from a corrupt entry
        untrusted, unreadable = None, True
        report = dataclasses.replace(
            report,
            ok=False,
            first_bad_seq=report.first_bad_seq,
            reason=report.reason or str(exc),
            warnings=[*report.warnings, f"who signed each entry was not checked: {exc}"],
        )
    if args.json:
        print(json.dumps({**report.__dict__, "untrusted": untrusted}))
    else:
        cps = f"{report.checkpoints_checked} checkpoint(s) from {path}"
        if report.ok:
            print(f"ledger ok: {report.entries} entries, head {report.head_hash[:16]}, {cps}")
        elif report.first_bad_seq is not None:
            print(f"ledger BROKEN at seq {report.first_bad_seq}: {report.reason}")
        else:
            print(f"ledger checkpoints BROKEN: {report.reason}")
        for problem in report.checkpoint_problems:
            print(f"  checkpoint problem: {problem}")
        for warning in report.warnings:
            print(f"  warning: {warning}")
        if untrusted is None and not unreadable:
            keys = settings.resolved_trusted_keys_dir
            print(f"  note: no trusted keys at {keys}: who signed each entry was not checked")
        elif untrusted:  # recorded as they arrived; never part of an incident
            print(f"untrusted entries (no trusted key signed them): {sum(untrusted.values())}")
            for what, n in sorted(untrusted.items()):
                print(f"  {n:>6}  {what}")
    if report.ok:
        return ExitCode.OK
    where = f"at seq {report.first_bad_seq}" if report.first_bad_seq is not None else "checkpoints"
    print(f"rollguard: the ledger does not verify ({where}; see the report)", file=sys.stderr)
    return ExitCode.NOT_VERIFIED


def _witness(
    mode: str, settings: RollguardSettings, trusted_dir: Path, copy: str = ""
) -> tuple[WitnessRead | None, str]:
    """The witness topic's checkpoints (None when not read) and, when not, why not. A copy
    (``copy``: the option that names it) is verified on its own unless asked."""
    if mode == "off":
        return None, ""
    if mode == "auto" and copy:
        return None, (
            f"{copy} names a copy, verified on its own (a copy may be behind the witness): "
            "--witness require holds it against the topic"
        )
    if settings.embedded:
        if mode == "require":
            require_broker(settings)
        return None, "no broker configured (ROLLGUARD_KAFKA_BOOTSTRAP): the witness was not read"
    trusted = load_trusted_keys(trusted_dir) if trusted_dir.is_dir() else {}

    async def read() -> WitnessRead:
        await wait_for_broker(settings.model_copy(update={"connect_timeout_s": 5.0}))
        return await witnessed(settings, trusted, timeout_s=30.0)

    try:
        return asyncio.run(read()), ""
    except BrokerUnavailable as exc:
        if mode == "require":
            raise
        return None, f"the witness was not read ({exc})"


def _untrusted(args: argparse.Namespace, settings: RollguardSettings) -> Counter[str] | None:
    """The entries no key trusted for them signed, by event type and reason; None where
    there are no trusted keys to check them with (a ledger copied away from its keys)."""
    try:
        trust = recorded_trust(settings)
    except ConfigError:
        return None
    store = open_ledger(args, settings)
    try:
        return untrusted_counts(store.iter_entries(), trust)
    finally:
        store.close()


def _show(args: argparse.Namespace, settings: RollguardSettings) -> int:

    entries = selected(args, settings)
    try:  # who signed each entry, where the trusted keys are here to tell
        trust: Trust | None = recorded_trust(settings)
    except ConfigError:
        trust = None
    for e in entries:
        found = provenance(e, trust) if trust is not None else None
        if args.json:
            signed = None if found is None else {**dataclasses.asdict(found)}
            print(json.dumps({**e.as_json(), "provenance": signed}))
        else:
            version = e.payload.get("model_version") or "-"
            mark = f"  [UNTRUSTED: {found.reason}]" if found and not found.trusted else ""
            print(
                f"{e.seq:>6}  {e.as_json()['recorded_at']}  {e.model_id or '-'} {version}  "
                f"{describe(e)}{mark}"
            )
            for line in details(e):
                print(f"{'':>8}{line}")
    if not entries and not args.json:
        print("no entries match", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace, settings: RollguardSettings) -> int:

    if args.incident or args.model_version or args.model_id or args.since:
        rows = [e.as_json() for e in selected(args, settings)]
    else:
        store = open_ledger(args, settings)
        try:
            rows = [e.as_json() for e in store.iter_entries()]
        finally:
            store.close()
    if args.output is None:
        for row in rows:
            sys.stdout.write(json.dumps(row, sort_keys=True) + "\n")
        return ExitCode.OK
    with writing("--output"), open(args.output, "w") as out:
        for row in rows:
            out.write(json.dumps(row, sort_keys=True) + "\n")
    print(f"wrote {len(rows)} entries to {args.output}", file=sys.stderr)
    return ExitCode.OK
