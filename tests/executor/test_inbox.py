"""The executor's inbox and outbox on SQLite and PostgreSQL: what a redelivery relies on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from rollguard.events import CommandAck
from rollguard_services.executor.inbox import Inbox


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


def test_a_command_is_received_once_and_its_acks_are_owed_until_sent(inbox: Inbox) -> None:
    inbox.receive("c1", ("t.commands", 0, 7), "m", "received", "", ack("c1", "received"))
    row = inbox.get("c1")
    assert row is not None and (row.status, row.offset) == ("received", 7)
    with pytest.raises(sa.exc.IntegrityError):  # the same command id cannot be received twice
        inbox.receive("c1", ("t.commands", 0, 8), "m", "received", "", ack("c1", "received"))
    with pytest.raises(sa.exc.IntegrityError):  # nor two commands from one offset
        inbox.receive("c2", ("t.commands", 0, 7), "m", "received", "", ack("c2", "received"))

    inbox.record_step(
        "c1", "model", False, ("applied", "alias set", False), ack("c1", "applied", "model")
    )
    assert inbox.steps("c1")[("model", False)].status == "applied"
    inbox.finish("c1", "applied", "done", ack("c1", "applied"))
    inbox.owe(ack("c1", "applied"))  # owing the same ack again changes nothing
    assert [a for a, _ in inbox.unsent()] == ["c1:received", "c1:applied:model", "c1:applied"]
    inbox.mark_sent("c1:received")
    assert [a for a, _ in inbox.unsent()] == ["c1:applied:model", "c1:applied"]
    final = inbox.get("c1")
    assert final is not None and (final.status, final.detail) == ("applied", "done")
