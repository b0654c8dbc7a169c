"""The notifier's outbox: one row per (channel, notification key), so a redelivered event
never posts twice, and what was accepted but not yet sent survives a restart.

Also remembers each incident's tier and whether PagerDuty was paged for it, because acks
carry neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from rollguard.database import create_tables, engine_for
from rollguard.errors import RollguardError
from rollguard.events import Tier, utcnow
from rollguard_services.notifier.notifications import Notification

metadata = sa.MetaData()

messages = sa.Table(
    "notifier_messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("key", sa.String(300), nullable=False),
    sa.Column("notification", sa.LargeBinary, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending / sent / failed / skipped
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("http_status", sa.Integer),
    sa.Column("error", sa.Text, nullable=False, default=""),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("done_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("channel", "key", name="uq_notifier_channel_key"),
)

incidents = sa.Table(
    "notifier_incidents",
    metadata,
    sa.Column("ref", sa.String(128), primary_key=True),
    sa.Column("decision_id", sa.String(128)),
    sa.Column("tier", sa.String(16)),
    sa.Column("paged", sa.Boolean, nullable=False, default=False),
)


class OutboxError(RollguardError):
    """The outbox database cannot be read or written."""

    retriable = True


@dataclass(frozen=True)
class IncidentInfo:
    ref: str
    decision_id: str | None
    tier: Tier | None
    paged: bool


@dataclass(frozen=True)
class Pending:
    id: int
    notification: Notification


class Outbox:
    def __init__(self, url: str) -> None:
        try:
            self.engine = engine_for(url)
            create_tables(self.engine, metadata)
        except sa.exc.SQLAlchemyError as exc:
            raise OutboxError(f"cannot open the notifier outbox: {exc}") from exc

    def enqueue(
        self, planned: list[tuple[Notification, list[str], IncidentInfo | None]]
    ) -> list[tuple[str, Notification]]:
        """Store what is new, in one transaction; returns the (channel, notification) added.

        ``IncidentInfo`` given with a notification is remembered (first one wins, except that
        ``paged`` only ever turns on).
        """
        added: list[tuple[str, Notification]] = []
        now = utcnow()
        with self.engine.begin() as conn:
            for n, channels, info in planned:
                if info is not None:
                    self._remember(conn, info)
                for channel in channels:
                    exists = conn.execute(
                        sa.select(messages.c.id).where(
                            messages.c.channel == channel, messages.c.key == n.key
                        )
                    ).first()
                    if exists:
                        continue
                    conn.execute(
                        sa.insert(messages).values(
                            channel=channel,
                            key=n.key,
                            notification=n.model_dump_json().encode(),
                            status="pending",
                            attempts=0,
                            error="",
                            created_at=now,
                        )
                    )
                    added.append((channel, n))
        return added

    @staticmethod
    def _remember(conn: sa.Connection, info: IncidentInfo) -> None:
        row = conn.execute(sa.select(incidents).where(incidents.c.ref == info.ref)).first()
        if row is None:
            conn.execute(
                sa.insert(incidents).values(
                    ref=info.ref, decision_id=info.decision_id, tier=info.tier, paged=info.paged
                )
            )
        elif info.paged and not row.paged:
            conn.execute(sa.update(incidents).where(incidents.c.ref == info.ref).values(paged=True))

    def incident(self, ref: str) -> IncidentInfo | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(incidents).where(incidents.c.ref == ref)).first()
        if row is None:
            return None
        return IncidentInfo(row.ref, row.decision_id, row.tier, bool(row.paged))

    def pending(self, channel: str, limit: int = 50) -> list[Pending]:
        """Oldest first: a channel's messages go out in the order they were accepted."""
        query = (
            sa.select(messages.c.id, messages.c.notification)
            .where(messages.c.channel == channel, messages.c.status == "pending")
            .order_by(messages.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [Pending(r.id, Notification.model_validate_json(r.notification)) for r in rows]

    def finish(
        self, message_id: int, status: str, attempts: int, http_status: int | None, error: str
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(messages)
                .where(messages.c.id == message_id)
                .values(
                    status=status,
                    attempts=attempts,
                    http_status=http_status,
                    error=error[:2000],
                    done_at=utcnow(),
                )
            )

    def statuses(self) -> dict[tuple[str, str], int]:
        """(channel, status) → count."""
        query = sa.select(messages.c.channel, messages.c.status, sa.func.count()).group_by(
            messages.c.channel, messages.c.status
        )
        with self.engine.connect() as conn:
            return {(r[0], r[1]): int(r[2]) for r in conn.execute(query)}

    def close(self) -> None:
        self.engine.dispose()
