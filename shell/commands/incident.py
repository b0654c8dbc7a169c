"""incident: one incident from the ledger, linked end to end, with its figures."""

from __future__ import annotations

import argparse
import json

from rollguard.errors import UsageError
from rollguard.settings import RollguardSettings
from rollguard_services.ledger.incidents import INCIDENT_TYPES, describe, details, find_incident
from rollguard_services.ledger.provenance import trusted_only
from rollguard_shell.commands import Subparsers, group
from rollguard_shell.commands.ledger import open_ledger, recorded_trust

_FIGURES = (
    ("mttd_s", "MTTD (bad version live → breach)"),
    ("time_to_decision_s", "breach → decision"),
    ("time_to_approval_s", "decision → last approval"),
    ("mttr_s", "MTTR (bad version live → rollback applied)"),
    ("time_to_verify_s", "bad version live → verified"),
)


def register(sub: Subparsers) -> None:
    incident = group(sub, "incident", "incidents recorded in the ledger")
    show = incident.add_parser(
        "show", help="breach → decision → approvals → command → acks → verification → invalidation"
    )
    show.add_argument("id", help="the decision id, or the rollback's command id, or a breach id")
    show.add_argument("--url", help="SQLAlchemy URL (default: ROLLGUARD_LEDGER_URL)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_show)


def _show(args: argparse.Namespace, settings: RollguardSettings) -> int:
    store = open_ledger(args, settings)
    try:
        # Only what trusted keys signed: a forged ack or command naming a real decision id
        # never joins the real incident (services/ledger/provenance.py).
        entries = trusted_only(
            store.iter_entries(event_types=INCIDENT_TYPES), recorded_trust(settings)
        )
        incident = find_incident(entries, args.id)
    finally:
        store.close()
    if incident is None:
        raise UsageError(f"no incident {args.id!r} in the ledger (decision, command or breach id)")
    if args.json:
        print(json.dumps(incident.as_json()))
        return 0
    d = incident.decision.payload
    # A manual rollback has no tier: who asked is said instead.
    why = f"[{d['tier']}]" if d.get("tier") else f"asked by {d.get('requested_by') or '?'}"
    print(
        f"incident {incident.id}  model {incident.model_id} {d.get('model_version')}  "
        f"{d.get('action')} {why}"
    )
    if incident.command_ids:
        print(f"command(s): {', '.join(incident.command_ids)}")
    for e in incident.entries:
        print(f"  seq {e.seq:>6}  {e.payload.get('ts', '?')}  {describe(e)}")
        for line in details(e):
            print(f"{'':>14}{line}")
    print("figures:")
    for key, label in _FIGURES:
        value = incident.figures.get(key)
        print(f"  {label:<45} {f'{value:.3f} s' if value is not None else '-'}")
    return 0
