"""Who signed each ledger entry, and whether that key is trusted for it (issue 13).

The ledger records every record that reaches a control topic, forged ones too: that something
arrived is a fact worth keeping. Each entry's payload is the event as it arrived, its ``key_id``
and ``signature`` with it, so the signature is checked again when the ledger is read, against
the trusted keys of now (``rollguard.signing.Trust``), a key retired since counting for what
was recorded before its retirement: an entry signed by no such key of a role allowed to sign
its type is *untrusted*. ``incident show`` leaves untrusted entries out of
an incident (a forged applied ack or a forged command reusing a real decision id never joins
the real incident), and ``ledger verify`` counts them apart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydantic import ValidationError

from rollguard import topics
from rollguard.events import Signed
from rollguard.signing import Trust
from rollguard_services.ledger.store import Entry

#: The signed event class of every ledgered event type.
_CLASSES: dict[str, type[Signed]] = {
    t.event.__name__: t.event  # type: ignore[misc]  # narrowed by the issubclass
    for t in topics.LEDGERED
    if issubclass(t.event, Signed)
}


@dataclass(frozen=True)
class Provenance:
    key_id: str
    #: The role of the key among the trusted ones (None: not a trusted key).
    role: str | None
    trusted: bool
    #: Why not, when not: unsigned, unknown_key, retired_key, wrong_role, bad_signature,
    #: unreadable.
    reason: str = ""


def provenance(entry: Entry, trust: Trust) -> Provenance:
    key_id = str(entry.payload.get("key_id", ""))
    cls = _CLASSES.get(entry.event_type)
    if cls is None:
        return Provenance(key_id, None, False, "unreadable")
    try:
        event = cls.model_validate(entry.payload)
    except ValidationError:
        return Provenance(key_id, None, False, "unreadable")
    known = trust.keys.get(key_id)
    gone = trust.retired.get(key_id)
    role = known[0] if known else gone.role if gone else None
    verdict = trust.check_recorded(event, entry.recorded_at_utc())
    trusted = verdict.ok and bool(event.signature)
    return Provenance(key_id, role, trusted, "" if trusted else verdict.reason)


def trusted_only(entries: Iterable[Entry], trust: Trust) -> Iterator[Entry]:
    """The entries signed by a key trusted for them, in order."""
    return (e for e in entries if provenance(e, trust).trusted)


def untrusted_counts(entries: Iterable[Entry], trust: Trust) -> Counter[str]:
    """Untrusted entries, by ``<event type>: <reason>``."""
    out: Counter[str] = Counter()
    for entry in entries:
        found = provenance(entry, trust)
        if not found.trusted:
            out[f"{entry.event_type}: {found.reason}"] += 1
    return out
