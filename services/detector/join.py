"""Predictions waiting for their outcome: the ground-truth join state of one model, bounded.

Held in generations of at most ``limit / GENERATIONS`` predictions each, column by column.
A full generation is closed and a new one opened; when the state holds more than ``limit``
predictions, or the newest prediction of the oldest generation is older than the TTL, that
whole generation is dropped. Dropping whole generations frees memory in one piece instead of
churning one dict entry per event, so the state's memory stays flat once it is full; the
price is that between ``limit - limit / GENERATIONS`` and ``limit`` predictions are held, and
a prediction may wait up to one generation's span longer than the TTL.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

GENERATIONS = 8


@dataclass(frozen=True)
class Waiting:
    """A prediction that met its outcome: which version made it, what it said, its segments."""

    version: str
    prediction: float | str
    segments: dict[str, str | None]


@dataclass
class _Generation:
    index: dict[str, int] = field(default_factory=dict)
    versions: list[str] = field(default_factory=list)
    predictions: list[Any] = field(default_factory=list)
    segments: dict[str, list[str | None]] = field(default_factory=dict)
    newest: float = 0.0

    def __len__(self) -> int:
        return len(self.versions)


class PendingJoin:
    """request_id → prediction, for predictions whose outcome has not arrived yet."""

    def __init__(self) -> None:
        self._generations: deque[_Generation] = deque()

    def __len__(self) -> int:
        """Predictions still waiting (matched ones no longer count)."""
        return sum(len(g.index) for g in self._generations)

    def add(
        self,
        request_ids: list[str],
        version: str,
        predictions: list[Any],
        segments: dict[str, list[str | None]],
        now: float,
        limit: int,
    ) -> int:
        """Remember one batch of a version's predictions; returns how many old ones gave up."""
        size = max(1, -(-limit // GENERATIONS))
        done = 0
        while done < len(request_ids):
            if not self._generations or len(self._generations[-1]) >= size:
                self._generations.append(_Generation())
            gen = self._generations[-1]
            take = min(size - len(gen), len(request_ids) - done)
            start = len(gen)
            gen.index.update(
                zip(request_ids[done : done + take], range(start, start + take), strict=True)
            )
            gen.versions.extend(repeat(version, take))
            gen.predictions.extend(predictions[done : done + take])
            for name in segments.keys() | gen.segments.keys():
                column = gen.segments.setdefault(name, [None] * start)
                labels = segments.get(name)
                column.extend(labels[done : done + take] if labels else repeat(None, take))
            gen.newest = now
            done += take
        evicted = 0
        while sum(map(len, self._generations)) > limit:
            evicted += len(self._generations.popleft().index)
        return evicted

    def pop(self, request_id: str) -> Waiting | None:
        """The prediction ``request_id`` made (the latest, if it was sent twice), forgotten."""
        for gen in reversed(self._generations):
            i = gen.index.pop(request_id, None)
            if i is not None:
                return Waiting(
                    gen.versions[i],
                    gen.predictions[i],
                    {name: labels[i] for name, labels in gen.segments.items()},
                )
        return None

    def expire(self, now: float, ttl: float) -> int:
        """Drop generations whose newest prediction waited longer than ``ttl``."""
        expired = 0
        while self._generations and now - self._generations[0].newest > ttl:
            expired += len(self._generations.popleft().index)
        return expired
