"""An incident assembled from the ledger: breach → decision → approvals → command → acks →
verification → invalidation, with the figures people ask for afterwards.

An incident is one decision and everything that follows from it. Its id is the decision's
``event_id``; the rollback's ``command_id`` (or a breach's ``event_id``) finds it too.
Figures, in seconds, all from event times:

- ``mttd_s``: first breach − when the bad version went live (from the command's
  ``from_manifest.ts``, else the decision's own ``mttd_s``)
- ``time_to_decision_s``: decision − first breach
- ``time_to_approval_s``: last approval − decision (when approvals were needed)
- ``mttr_s``: the ``applied`` ack − when the bad version went live (what users lived with)
- ``time_to_verify_s``: the ``verified`` ack − when the bad version went live
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rollguard_services.ledger.store import Entry

#: Event types an incident is made of.
INCIDENT_TYPES = (
    "Breach",
    "Alert",
    "Decision",
    "Approval",
    "RollbackCommand",
    "CommandAck",
    "OutputInvalidation",
    "SystemManifest",
)


@dataclass(frozen=True)
class Incident:
    id: str
    model_id: str | None
    decision: Entry
    command_ids: list[str]
    #: Every entry of the incident in ledger order.
    entries: list[Entry]
    figures: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model_id": self.model_id,
            "command_ids": self.command_ids,
            "figures": self.figures,
            "entries": [e.as_json() for e in self.entries],
        }


def _ts(entry: Entry) -> datetime | None:
    raw = entry.payload.get("ts")
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None


def find_incident(entries: Iterable[Entry], ident: str) -> Incident | None:
    """The incident ``ident`` names (decision id, command id or breach id); None if none."""
    pool = list(entries)
    root = _root_decision(pool, ident)
    if root is None:
        return None
    decision_ids = {root.event_id}
    command_ids: list[str] = []
    if isinstance(root.payload.get("command_id"), str):
        command_ids.append(root.payload["command_id"])
    # Follow-up decisions (an approval outcome, a verification) point at their parent; they
    # may issue the command, so iterate until nothing new joins.
    grew = True
    while grew:
        grew = False
        for e in pool:
            p = e.payload
            if e.event_type == "Decision" and p.get("parent_decision_id") in decision_ids:
                if e.event_id not in decision_ids:
                    decision_ids.add(e.event_id)
                    grew = True
                cid = p.get("command_id")
                if isinstance(cid, str) and cid not in command_ids:
                    command_ids.append(cid)
                    grew = True
            elif e.event_type == "RollbackCommand" and p.get("decision_id") in decision_ids:
                cid = p.get("command_id")
                if isinstance(cid, str) and cid not in command_ids:
                    command_ids.append(cid)
                    grew = True
    breach_ids = set(root.payload.get("breach_ids") or [])
    # The Alertmanager alerts its breaches were made of, firing and resolved: that episode
    # (fingerprint and start), not the same alert's other episodes.
    alerts = {
        (e.payload.get("fingerprint"), e.payload.get("starts_at"))
        for e in pool
        if e.event_type == "Alert" and e.payload.get("breach_id") in breach_ids
    }
    members: list[Entry] = []
    for e in pool:
        p = e.payload
        if (
            (e.event_type == "Breach" and e.event_id in breach_ids)
            or (e.event_type == "Alert" and (p.get("fingerprint"), p.get("starts_at")) in alerts)
            or (e.event_type == "Decision" and e.event_id in decision_ids)
            or (e.event_type == "Approval" and p.get("decision_id") in decision_ids)
            or (e.event_type == "RollbackCommand" and p.get("command_id") in command_ids)
            or (
                e.event_type in ("CommandAck", "OutputInvalidation")
                and p.get("command_id") in command_ids
            )
            or (
                e.event_type == "SystemManifest"
                and any(c in str(p.get("note", "")) for c in command_ids)
            )
        ):
            members.append(e)
    return Incident(
        id=root.event_id,
        model_id=root.model_id,
        decision=root,
        command_ids=command_ids,
        entries=members,
        figures=_figures(root, members),
    )


def _root_decision(pool: list[Entry], ident: str) -> Entry | None:
    decisions = [e for e in pool if e.event_type == "Decision"]
    by_id = {e.event_id: e for e in decisions}
    found = by_id.get(ident)
    if found is None:
        for e in pool:
            if e.event_type == "RollbackCommand" and e.payload.get("command_id") == ident:
                found = by_id.get(str(e.payload.get("decision_id")))
                break
    if found is None:
        found = next((d for d in decisions if d.payload.get("command_id") == ident), None)
    if found is None:
        found = next((d for d in decisions if ident in (d.payload.get("breach_ids") or [])), None)
    # A follow-up decision belongs to its parent's incident.
    seen: set[str] = set()
    while found is not None and isinstance(found.payload.get("parent_decision_id"), str):
        parent = by_id.get(found.payload["parent_decision_id"])
        if parent is None or parent.event_id in seen:
            break
        seen.add(parent.event_id)
        found = parent
    return found


def _secs(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return round((a - b).total_seconds(), 3)


def _figures(root: Entry, members: list[Entry]) -> dict[str, float]:
    breaches = sorted(t for e in members if e.event_type == "Breach" if (t := _ts(e)))
    first_breach = breaches[0] if breaches else None
    decided = _ts(root)
    live_since: datetime | None = None
    for e in members:
        if e.event_type == "RollbackCommand":
            raw = (e.payload.get("from_manifest") or {}).get("ts")
            if isinstance(raw, str):
                live_since = datetime.fromisoformat(raw)
                break

    def first_ack(status: str) -> datetime | None:
        for e in members:
            if e.event_type == "CommandAck" and e.payload.get("status") == status:
                if (
                    e.payload.get("component") not in (None, "", "verification")
                    and status == "applied"
                ):
                    continue  # a component's ack is one step, not the rollback
                return _ts(e)
        return None

    approvals = [t for e in members if e.event_type == "Approval" if (t := _ts(e))]
    out: dict[str, float | None] = {
        "mttd_s": _secs(first_breach, live_since),
        "time_to_decision_s": _secs(decided, first_breach),
        "time_to_approval_s": _secs(max(approvals), decided) if approvals else None,
        "mttr_s": _secs(first_ack("applied"), live_since),
        "time_to_verify_s": _secs(first_ack("verified"), live_since),
    }
    if out["mttd_s"] is None and isinstance(root.payload.get("metrics"), dict):
        mttd = root.payload["metrics"].get("mttd_s")
        out["mttd_s"] = float(mttd) if isinstance(mttd, int | float) else None
    return {k: v for k, v in out.items() if v is not None}


def details(entry: Entry) -> list[str]:
    """What a person needs beyond ``describe``'s line: every reason of a decision with its
    detail (the words the decider gave), an approval's comment."""
    p = entry.payload
    if entry.event_type == "Decision":
        return [f"{r.get('code')}: {r.get('detail')}" for r in p.get("reasons") or []]
    if entry.event_type == "Approval" and p.get("comment"):
        return [f"comment: {p['comment']}"]
    return []


def describe(entry: Entry) -> str:
    """One line a person can read for an entry."""
    p = entry.payload
    t = entry.event_type
    if t == "SystemManifest":
        return f"deployment {p.get('system_version')} (model {p.get('model_version')}) → {p.get('status')}"
    if t == "Breach":
        return (
            f"breach {p.get('detector')}: {p.get('statistic')}={p.get('value')} > "
            f"{p.get('threshold')} n={p.get('n')} [{p.get('tier')}] on {p.get('model_version')}"
        )
    if t == "Alert":
        became = f" → breach [{p.get('tier')}]" if p.get("breach_id") else f" ({p.get('outcome')})"
        return (
            f"alert {p.get('alertname')} {p.get('status')} from Alertmanager on "
            f"{p.get('model_version') or '-'}{became}"
        )
    if t == "Decision":
        codes = ", ".join(str(r.get("code")) for r in p.get("reasons") or [])
        level = f" level {p['level']}" if p.get("level") else ""
        return (
            f"decision {p.get('action')}{level} → {p.get('target_system_version') or '-'} ({codes})"
        )
    if t == "Approval":
        return f"approval by role {p.get('role')} of decision {str(p.get('decision_id'))[:12]}"
    if t == "RollbackCommand":
        frm = (p.get("from_manifest") or {}).get("system_version")
        to = (p.get("to_manifest") or {}).get("system_version")
        return f"command {str(p.get('command_id'))[:12]} level {p.get('level')}: {frm} → {to}"
    if t == "CommandAck":
        comp = f" [{p['component']}]" if p.get("component") else ""
        detail = f": {p['detail']}" if p.get("detail") else ""
        return f"ack {p.get('status')}{comp} by {p.get('executor_id')}{detail}"
    if t == "OutputInvalidation":
        return f"invalidation of {', '.join(p.get('bad_versions') or [])} from {p.get('valid_from')} to {p.get('valid_to')}"
    if t == "DrillRun":
        said = "passed" if p.get("passed") else f"FAILED: {p.get('reason')}"
        return f"drill {p.get('scenario')} on {p.get('model_id')}: {said}"
    if t == "unparsed":
        return "unparsed message (kept as base64)"
    return t
