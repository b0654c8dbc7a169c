"""What others may read of the ledger, read-only: its incidents and whether its chain holds.

The API shows these (services/api); the shell hands it a ``LedgerView`` (services never
import each other). Only entries signed by a trusted key take part in an incident
(services/ledger/provenance.py), as in `rollguard incident show`. Each call opens the store,
reads and closes it: the ledger service writes beside it, and a reader holds nothing between
calls.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rollguard.settings import RollguardSettings
from rollguard.signing import Trust
from rollguard_services.ledger.audit import VerifyReport, verify_configured
from rollguard_services.ledger.incidents import (
    INCIDENT_TYPES,
    Incident,
    describe,
    details,
    find_incident,
)
from rollguard_services.ledger.provenance import trusted_only
from rollguard_services.ledger.settings import LedgerSettings
from rollguard_services.ledger.store import Entry, LedgerStore

#: How far a command got, by its executor's (or the decider's) acks: never undone by a later
#: ack of lower rank.
_RANK = {"received": 0, "verifying": 1, "applied": 2, "failed": 2, "rejected": 2, "verified": 3}

#: A hold that only repeats what is under way is not an incident of its own: the breach of a
#: model already rolling back, cooling down or locked joins nothing new.
_REPEATS = frozenset({"breach", "rollback_in_flight", "cooldown", "locked", "not_live_version"})


@dataclass(frozen=True)
class IncidentSummary:
    """One line of the incident list."""

    id: str
    model_id: str | None
    ts: str | None
    action: str
    tier: str | None
    level: int | None
    reasons: list[str]
    target_system_version: str | None
    command_id: str | None
    #: The furthest the incident got: decided, awaiting_approval, applied, failed, verified,
    #: verification_failed...
    state: str


class LedgerView:
    """The ledger as JSON documents (what the API serves as they are)."""

    def __init__(
        self, url: str, trust: Callable[[], Trust], verify: Callable[[], VerifyReport]
    ) -> None:
        self.url = url
        self._trust = trust
        self._verify = verify
        self._pool: list[Entry] = []
        self._seq = 0
        self._summaries: list[IncidentSummary] | None = None
        #: The API calls from worker threads, two dashboards at once: one reader at a time.
        self._lock = threading.Lock()

    @classmethod
    def of(cls, settings: RollguardSettings, trust: Callable[[], Trust]) -> LedgerView:
        """The ledger the settings point at, with its checkpoints (verify_configured)."""
        svc = LedgerSettings()

        def verify() -> VerifyReport:
            return verify_configured(settings, svc)[0]

        return cls(settings.resolved_ledger_url, trust, verify)

    def _entries(self) -> list[Entry]:
        """The trusted incident entries: those read before are kept, only the ones appended
        since are read (the dashboard asks every few seconds)."""
        with self._lock:
            return self._read()

    def _read(self) -> list[Entry]:
        store = LedgerStore(self.url, create=False)
        try:
            if store.head()[0] < self._seq:  # a ledger made anew under the same URL
                self._pool, self._seq, self._summaries = [], 0, None
            new = list(store.iter_entries(event_types=INCIDENT_TYPES, after_seq=self._seq))
        finally:
            store.close()
        if new:
            self._pool += trusted_only(new, self._trust())
            self._seq = max(self._seq, new[-1].seq)
            self._summaries = None
        return self._pool

    def incident(self, ident: str) -> dict[str, Any] | None:
        """The incident ``ident`` names (decision, command or breach id) with its timeline."""
        found = find_incident(self._entries(), ident)
        if found is None:
            return None
        return {
            "id": found.id,
            "model_id": found.model_id,
            "command_ids": found.command_ids,
            "figures": found.figures,
            "decision": found.decision.payload,
            "timeline": timeline(found),
        }

    def incidents(self, model_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` incidents (of ``model_id``), newest first."""
        with self._lock:
            pool = self._read()
            if self._summaries is None:  # made again only when the ledger grew
                self._summaries = summaries(pool)
            made = self._summaries
        found = [s for s in made if model_id is None or s.model_id == model_id]
        return [dataclasses.asdict(s) for s in found[:limit]]

    def head(self) -> int:
        """The newest entry's seq (0: empty): cheap, to tell whether a verification is stale."""
        store = LedgerStore(self.url, create=False)
        try:
            return store.head()[0]
        finally:
            store.close()

    def verify(self) -> dict[str, Any]:
        """The chain and its checkpoints checked now (services/ledger/audit.py)."""
        return dict(self._verify().__dict__)


def summaries(entries: Iterable[Entry]) -> list[IncidentSummary]:
    """Every incident of ``entries`` in one pass, newest first: a root decision (no parent)
    that is more than a repeat, with how far it got from its follow-ups and acks."""
    decisions: dict[str, Entry] = {}
    state_of_command: dict[str, str] = {}
    for e in entries:
        p = e.payload
        if e.event_type == "Decision":
            decisions[e.event_id] = e
        elif e.event_type == "CommandAck" and p.get("component") in (None, "", "verification"):
            status, cid = str(p.get("status")), str(p.get("command_id"))
            # Never backwards: the first final word counts (a replayed copy's "rejected"
            # after "applied" is not the outcome), and only "verified" goes past "applied".
            if _RANK.get(status, 0) > _RANK.get(state_of_command.get(cid, ""), -1):
                state_of_command[cid] = status

    def root(e: Entry) -> Entry:
        seen = {e.event_id}
        while (parent := decisions.get(str(e.payload.get("parent_decision_id")))) is not None:
            if parent.event_id in seen:
                break
            seen.add(parent.event_id)
            e = parent
        return e

    latest: dict[str, Entry] = {}  # root id -> the newest decision of its incident
    for e in decisions.values():
        said = {str(r.get("code")) for r in e.payload.get("reasons") or []}
        if said == {"approval_rejected"} and root(e).event_id != e.event_id:
            continue  # a refused approval (a second click, the wrong role) changes nothing
        latest[root(e).event_id] = e
    out = []
    for root_id, last in latest.items():
        first = decisions[root_id]
        p = first.payload
        codes = [str(r.get("code")) for r in p.get("reasons") or []]
        if p.get("action") == "hold" and set(codes) <= _REPEATS:
            continue
        command = next(
            (
                str(d.payload["command_id"])
                for d in (first, last)
                if isinstance(d.payload.get("command_id"), str)
            ),
            None,
        )
        out.append(
            IncidentSummary(
                id=root_id,
                model_id=first.model_id,
                ts=p.get("ts"),
                action=str(p.get("action")),
                tier=p.get("tier"),
                level=p.get("level"),
                reasons=codes,
                target_system_version=p.get("target_system_version"),
                command_id=command,
                state=_state(first, last, state_of_command.get(command or "")),
            )
        )
    return sorted(out, key=lambda s: s.ts or "", reverse=True)


def _state(first: Entry, last: Entry, ack: str | None) -> str:
    codes = {str(r.get("code")) for r in last.payload.get("reasons") or []}
    for bad in ("verification_failed", "unverifiable", "command_unacknowledged", "data_shift"):
        if bad in codes:
            return bad
    if ack is not None:
        return ack
    if "observe_mode" in codes:
        return "would_roll_back"  # observe mode: what enforce would have done, not done
    if "awaiting_approval" in codes:
        return "awaiting_approval"
    if "approval_expired" in codes:
        return "approval_expired"
    if last is first:
        return "held" if first.payload.get("action") == "hold" else "decided"
    return str(last.payload.get("action"))


def timeline(incident: Incident) -> list[dict[str, Any]]:
    """The incident's entries as a person reads them: when, what, in words, with details."""
    return [
        {
            "seq": e.seq,
            "ts": e.payload.get("ts"),
            "event_type": e.event_type,
            "event_id": e.event_id,
            "summary": describe(e),
            "details": details(e),
        }
        for e in incident.entries
    ]
