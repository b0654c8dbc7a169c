"""The contract every service under services/ satisfies, so `up`, `run` and the demo treat
them alike."""

from __future__ import annotations

import asyncio
from typing import Protocol


class Service(Protocol):
    name: str
    #: Set once the service consumes and produces (group joined, partitions assigned).
    ready: asyncio.Event

    async def run(self) -> None:
        """Run until cancelled; release every client on the way out."""
        ...
