"""The applier contract: make one component's target state true, idempotently, and say what
happened.

An applier gets a ``Step`` (one component of one command, forwards or undoing) and returns an
``Effect``: data, never an exception for an expected failure. Retrying, ordering and
compensation are the executor's job, so an applier makes one attempt per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from rollguard.events import RollbackCommand

EffectStatus = Literal["applied", "failed"]


@dataclass(frozen=True)
class Effect:
    """What an applier did: ``applied`` or ``failed`` (with ``retriable``), never an exception.

    ``retry_after_s`` is the target's own word on when to try again (HTTP Retry-After).
    """

    status: EffectStatus
    detail: str
    retriable: bool = False
    retry_after_s: float | None = None


@dataclass(frozen=True)
class Step:
    """Set ``component`` of ``command.model_id`` from ``from_version`` to ``to_version``.

    ``compensation`` is True when the step undoes an earlier one after a later step failed:
    its ``to_version`` is then the version the component had before the command.
    """

    command: RollbackCommand
    component: str
    from_version: str
    to_version: str
    compensation: bool = False
    #: The only step of its command: its idempotency key is then the command id itself.
    single: bool = True

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and redeliveries, distinct for each distinct change."""
        if self.single and not self.compensation:
            return self.command.command_id
        suffix = ":compensate" if self.compensation else ""
        return f"{self.command.command_id}:{self.component}{suffix}"

    def undo(self) -> Step:
        return Step(
            self.command,
            self.component,
            from_version=self.to_version,
            to_version=self.from_version,
            compensation=True,
            single=self.single,
        )

    def document(self) -> dict[str, Any]:
        """What webhook and command appliers send: the step, and both manifests in full."""
        command = self.command
        return {
            "command_id": command.command_id,
            "idempotency_key": self.idempotency_key,
            "model_id": command.model_id,
            "level": command.level,
            "component": self.component,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "compensation": self.compensation,
            "issued_at": command.issued_at.isoformat(),
            "expires_at": command.expires_at.isoformat(),
            "from_manifest": command.from_manifest.model_dump(mode="json", by_alias=True),
            "to_manifest": command.to_manifest.model_dump(mode="json", by_alias=True),
        }


class Applier(Protocol):
    name: str

    async def apply(self, step: Step) -> Effect:
        """Set the target state of ``step``; calling it twice has the effect of once."""
        ...

    async def close(self) -> None:
        """Release clients (HTTP sessions, threads); called once when the executor stops."""
        ...
