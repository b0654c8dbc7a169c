"""The executor's inbox and outbox on SQLite and PostgreSQL: what a redelivery relies on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from rollguard.events import CommandAck
from rollguard_services.executor.inbox import Inbox, InboxRow, Source, StepKey, StepRow


@pytest.fixture
def inbox(database_url: str) -> Iterator[Inbox]:
    box = Inbox(database_url)
    yield box
    box.close()


def ack(command_id: str, status: str, component: str | None = None) -> CommandAck:
    return CommandAck(
        event_id=f"{command_id}:{status}" + (f":{component}" if component else ""),
        model_id="m",
        model_version="v2",
        command_id=command_id,
        status=status,  # type: ignore[arg-type]
        executor_id="e",
        component=component,
    )


def received(command_id: str, offset: int) -> InboxRow:
    return InboxRow(command_id, Source("t.commands", 0, offset), "m", "received", "")


def test_a_command_is_received_once_and_its_acks_are_owed_until_sent(inbox: Inbox) -> None:
    first = ack("c1", "received")
    inbox.receive(received("c1", 7), first)
    row = inbox.get("c1")
    assert row is not None and (row.status, row.source.offset) == ("received", 7)
    assert row == received("c1", 7)
    with pytest.raises(sa.exc.IntegrityError):  # the same command id cannot be received twice
        inbox.receive(received("c1", 8), ack("c1", "received"))
    with pytest.raises(sa.exc.IntegrityError):  # nor two commands from one offset
        inbox.receive(received("c2", 7), ack("c2", "received"))

    inbox.record_step(
        "c1",
        StepKey("model"),
        StepRow("applied", "alias set", False),
        ack("c1", "applied", "model"),
    )
    assert inbox.steps("c1")[StepKey("model")].status == "applied"
    assert inbox.steps("c1") == {StepKey("model"): StepRow("applied", "alias set", False)}
    inbox.finish("c1", "applied", "done", ack("c1", "applied"))
    inbox.owe(ack("c1", "applied"))  # owing the same ack again changes nothing
    assert [a.event_id for a in inbox.unsent()] == [
        "c1:received",
        "c1:applied:model",
        "c1:applied",
    ]
    # The owed ack itself, published byte for byte as it was owed.
    assert inbox.unsent()[0] == first and inbox.unsent()[0].encode() == first.encode()
    inbox.mark_sent("c1:received")
    assert [a.event_id for a in inbox.unsent()] == ["c1:applied:model", "c1:applied"]
    final = inbox.get("c1")
    assert final is not None and (final.status, final.detail) == ("applied", "done")
