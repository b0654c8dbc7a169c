"""The applier contract: make a target state true, idempotently, and say what happened."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from rollguard.events import RollbackCommand


@dataclass(frozen=True)
class Effect:
    """What an applier did: ``applied`` or ``failed`` (with ``retriable``), never an exception."""

    status: Literal["applied", "failed"]
    detail: str
    retriable: bool = False


class Applier(Protocol):
    name: str

    async def apply(self, command: RollbackCommand) -> Effect:
        """Set the target state of ``command``; calling it twice has the effect of once."""
        ...
