"""The executor's inbox and outbox: what it received, what it did, which events it still owes.

One transaction records the inbox row with the ack to send; one per step records the step's
effect with its ack; a last one records the outcome with its ack and, when applied, the
invalidation. Each is stored signed (the executor signs before it owes) and published as the
bytes stored, then marked sent, so a crash between any two steps is repaired by redelivery:
the inbox says how far the command got, and only the remaining steps run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Literal, TypeVar, get_args

import sqlalchemy as sa

from rollguard.database import create_tables, engine_for
from rollguard.events import CommandAck, OutputInvalidation, utcnow
from rollguard_services.executor.appliers.base import Effect, EffectStatus

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


#: Where a command is: ``received`` until it finishes ``applied`` or ``failed``; ``rejected``
#: at receive, never acted on.
CommandStatus = Literal["received", "applied", "failed", "rejected"]
FinalStatus = Literal["applied", "failed"]


@dataclass(frozen=True)
class Source:
    """Where a command was read: its first (topic, partition, offset) is its only one."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class InboxRow:
    command_id: str
    source: Source
    model_id: str
    status: CommandStatus
    detail: str


@dataclass(frozen=True)
class StepKey:
    """One step of a command: a component, forwards or undoing (``compensation``)."""

    component: str
    compensation: bool = False


@dataclass(frozen=True)
class StepRow:
    """A step's recorded outcome: what redelivery skips (applied) or resumes from (failed)."""

    status: EffectStatus
    detail: str
    retriable: bool

    @classmethod
    def of(cls, effect: Effect) -> StepRow:
        return cls(effect.status, effect.detail, effect.retriable)


_Owed = TypeVar("_Owed", CommandAck, OutputInvalidation)


@dataclass(frozen=True)
class Owed(Generic[_Owed]):
    """An event still to publish, with the bytes stored when it became owed: those are what
    is sent, so an event re-sent after a crash is the signed one, byte for byte."""

    event: _Owed
    payload: bytes


_Status = TypeVar("_Status", bound=str)


def _known(value: str, allowed: tuple[_Status, ...]) -> _Status:
    """``value`` as one of the statuses the inbox writes; anything else is a broken database."""
    for status in allowed:
        if status == value:
            return status
    raise ValueError(f"executor inbox holds status {value!r}, not one of {allowed}")


_COMMAND_STATUSES: tuple[CommandStatus, ...] = get_args(CommandStatus)
_EFFECT_STATUSES: tuple[EffectStatus, ...] = get_args(EffectStatus)


class Inbox:
    def __init__(self, url: str) -> None:
        self.engine = engine_for(url)
        create_tables(self.engine, metadata)

    def get(self, command_id: str) -> InboxRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(inbox).where(inbox.c.command_id == command_id)
            ).one_or_none()
        if row is None:
            return None
        return InboxRow(
            row.command_id,
            Source(row.topic, row.partition, row.offset),
            row.model_id,
            _known(row.status, _COMMAND_STATUSES),
            row.detail,
        )

    def receive(self, row: InboxRow, ack: CommandAck) -> None:
        """Record a new command (``received`` or ``rejected``) and the ack it is owed.

        Raises IntegrityError when the command id, or its source, is in the inbox already.
        """
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(inbox).values(
                    command_id=row.command_id,
                    topic=row.source.topic,
                    partition=row.source.partition,
                    offset=row.source.offset,
                    model_id=row.model_id,
                    status=row.status,
                    detail=row.detail,
                    received_at=now,
                    finished_at=now if row.status == "rejected" else None,
                )
            )
            self._owe(conn, ack)

    def record_step(
        self, command_id: str, key: StepKey, outcome: StepRow, ack: CommandAck | None
    ) -> None:
        """Record one step's outcome with the ack it owes, atomically; a step recorded before
        (its effect redone after a crash) is replaced."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.delete(steps).where(
                    steps.c.command_id == command_id,
                    steps.c.component == key.component,
                    steps.c.compensation == key.compensation,
                )
            )
            conn.execute(
                sa.insert(steps).values(
                    command_id=command_id,
                    component=key.component,
                    compensation=key.compensation,
                    status=outcome.status,
                    detail=outcome.detail,
                    retriable=outcome.retriable,
                    done_at=utcnow(),
                )
            )
            if ack is not None:
                self._owe(conn, ack)

    def steps(self, command_id: str) -> dict[StepKey, StepRow]:
        """The recorded steps of a command."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(steps).where(steps.c.command_id == command_id)).all()
        return {
            StepKey(r.component, bool(r.compensation)): StepRow(
                _known(r.status, _EFFECT_STATUSES), r.detail, bool(r.retriable)
            )
            for r in rows
        }

    def finish(
        self,
        command_id: str,
        status: FinalStatus,
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

    def unsent_invalidations(self) -> list[OutputInvalidation]:
        """Owed invalidations, oldest first."""
        return [owed.event for owed in self.owed_invalidations()]

    def owed_invalidations(self) -> list[Owed[OutputInvalidation]]:
        """Owed invalidations with their stored bytes, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(invalidations_outbox.c.payload)
                .where(invalidations_outbox.c.sent_at.is_(None))
                .order_by(invalidations_outbox.c.owed_at, invalidations_outbox.c.event_id)
            ).all()
        return [Owed(OutputInvalidation.model_validate_json(r.payload), r.payload) for r in rows]

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

    def unsent(self) -> list[CommandAck]:
        """Owed acks, oldest first."""
        return [owed.event for owed in self.owed()]

    def owed(self) -> list[Owed[CommandAck]]:
        """Owed acks with their stored bytes, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(outbox.c.payload)
                .where(outbox.c.sent_at.is_(None))
                .order_by(outbox.c.owed_at, outbox.c.ack_id)
            ).all()
        return [Owed(CommandAck.model_validate_json(r.payload), r.payload) for r in rows]

    def mark_sent(self, ack_id: str, at: datetime | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(outbox).where(outbox.c.ack_id == ack_id).values(sent_at=at or utcnow())
            )

    def close(self) -> None:
        self.engine.dispose()
