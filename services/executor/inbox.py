"""The executor's inbox and outbox: what it received, what it did, which acks it still owes.

One transaction records the inbox row with the ack to send; another records the effect with
its ack. Acks are published from the outbox and marked sent, so a crash between any two
steps is repaired by redelivery: the inbox says how far the command got.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from rollguard.events import CommandAck, utcnow

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

    def finish(self, command_id: str, status: str, detail: str, ack: CommandAck) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(inbox)
                .where(inbox.c.command_id == command_id)
                .values(status=status, detail=detail, finished_at=utcnow())
            )
            self._owe(conn, ack)

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
