"""The executor's inbox and outbox: what it received, what it did, which events it still owes.

One transaction records the inbox row with the ack to send; one per step records the step's
effect with its ack; a last one records the outcome with its ack and, when applied, the
invalidation. Acks and invalidations are published from the outbox and marked sent, so a
crash between any two steps is repaired by redelivery: the inbox says how far the command got,
and only the remaining steps run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from rollguard.events import CommandAck, OutputInvalidation, utcnow

metadata = sa.MetaData()

inbox = sa.Table(
    "executor_inbox",
    metadata,
    sa.Column("command_id", sa.String(128), primary_key=True),
    sa.Column("topic", sa.String(255), nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("model_id", sa.String(256), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text, nullable=False, default=""),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("topic", "partition", "offset", name="uq_inbox_source"),
)

outbox = sa.Table(
    "executor_outbox",
    metadata,
    sa.Column("ack_id", sa.String(128), primary_key=True),
    sa.Column("owed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("command_id", sa.String(128), nullable=False, index=True),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
)


steps = sa.Table(
    "executor_steps",
    metadata,
    sa.Column("command_id", sa.String(128), primary_key=True),
    sa.Column("component", sa.String(64), primary_key=True),
    sa.Column("compensation", sa.Boolean, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text, nullable=False, default=""),
    sa.Column("retriable", sa.Boolean, nullable=False, default=False),
    sa.Column("done_at", sa.DateTime(timezone=True), nullable=False),
)

# A table of its own rather than a column on executor_outbox: inboxes created before
# invalidations existed keep working, since create_all adds missing tables only.
invalidations_outbox = sa.Table(
    "executor_invalidations",
    metadata,
    sa.Column("event_id", sa.String(128), primary_key=True),
    sa.Column("command_id", sa.String(128), nullable=False, index=True),
    sa.Column("owed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
)


@dataclass(frozen=True)
class StepRow:
    """A step's recorded outcome: what redelivery skips (applied) or resumes from (failed)."""

    status: str
    detail: str
    retriable: bool


@dataclass(frozen=True)
class InboxRow:
    command_id: str
    topic: str
    partition: int
    offset: int
    status: str
    detail: str


class Inbox:
    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        if parsed.drivername.startswith("sqlite") and parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(url)
        metadata.create_all(self.engine)

    def get(self, command_id: str) -> InboxRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(inbox).where(inbox.c.command_id == command_id)
            ).one_or_none()
        if row is None:
            return None
        return InboxRow(
            row.command_id, row.topic, row.partition, row.offset, row.status, row.detail
        )

    def receive(
        self,
        command_id: str,
        source: tuple[str, int, int],
        model_id: str,
        status: str,
        detail: str,
        ack: CommandAck,
    ) -> None:
        """Record a new command (``received`` or ``rejected``) and the ack it is owed."""
        topic, partition, offset = source
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(inbox).values(
                    command_id=command_id,
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    model_id=model_id,
                    status=status,
                    detail=detail,
                    received_at=now,
                    finished_at=now if status == "rejected" else None,
                )
            )
            self._owe(conn, ack)

    def record_step(
        self,
        command_id: str,
        component: str,
        compensation: bool,
        outcome: tuple[str, str, bool],
        ack: CommandAck | None,
    ) -> None:
        """Record one step's (status, detail, retriable) with the ack it owes, atomically."""
        status, detail, retriable = outcome
        with self.engine.begin() as conn:
            conn.execute(
                sa.delete(steps).where(
                    steps.c.command_id == command_id,
                    steps.c.component == component,
                    steps.c.compensation == compensation,
                )
            )
            conn.execute(
                sa.insert(steps).values(
                    command_id=command_id,
                    component=component,
                    compensation=compensation,
                    status=status,
                    detail=detail,
                    retriable=retriable,
                    done_at=utcnow(),
                )
            )
            if ack is not None:
                self._owe(conn, ack)

    def steps(self, command_id: str) -> dict[tuple[str, bool], StepRow]:
        """Recorded steps by (component, compensation)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(steps).where(steps.c.command_id == command_id)).all()
        return {
            (r.component, bool(r.compensation)): StepRow(r.status, r.detail, bool(r.retriable))
            for r in rows
        }

    def finish(
        self,
        command_id: str,
        status: str,
        detail: str,
        ack: CommandAck,
        invalidation: OutputInvalidation | None = None,
    ) -> None:
        """Record the outcome with its final ack and, for an applied rollback, the invalidation."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(inbox)
                .where(inbox.c.command_id == command_id)
                .values(status=status, detail=detail, finished_at=utcnow())
            )
            self._owe(conn, ack)
            if invalidation is not None:
                conn.execute(
                    sa.insert(invalidations_outbox).values(
                        event_id=invalidation.event_id,
                        command_id=command_id,
                        owed_at=utcnow(),
                        payload=invalidation.encode(),
                    )
                )

    def unsent_invalidations(self) -> list[tuple[str, bytes]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(invalidations_outbox.c.event_id, invalidations_outbox.c.payload)
                .where(invalidations_outbox.c.sent_at.is_(None))
                .order_by(invalidations_outbox.c.owed_at, invalidations_outbox.c.event_id)
            ).all()
        return [(r.event_id, r.payload) for r in rows]

    def mark_invalidation_sent(self, event_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(invalidations_outbox)
                .where(invalidations_outbox.c.event_id == event_id)
                .values(sent_at=utcnow())
            )

    def owe(self, ack: CommandAck) -> None:
        with self.engine.begin() as conn:
            self._owe(conn, ack)

    def _owe(self, conn: sa.Connection, ack: CommandAck) -> None:
        exists = conn.execute(
            sa.select(outbox.c.ack_id).where(outbox.c.ack_id == ack.event_id)
        ).first()
        if exists is None:
            conn.execute(
                sa.insert(outbox).values(
                    ack_id=ack.event_id,
                    command_id=ack.command_id,
                    payload=ack.encode(),
                    owed_at=utcnow(),
                )
            )

    def unsent(self) -> list[tuple[str, bytes]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(outbox.c.ack_id, outbox.c.payload)
                .where(outbox.c.sent_at.is_(None))
                .order_by(outbox.c.owed_at, outbox.c.ack_id)
            ).all()
        return [(r.ack_id, r.payload) for r in rows]

    def mark_sent(self, ack_id: str, at: datetime | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(outbox).where(outbox.c.ack_id == ack_id).values(sent_at=at or utcnow())
            )

    def close(self) -> None:
        self.engine.dispose()
