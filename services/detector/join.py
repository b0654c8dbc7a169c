"""Predictions waiting for their outcome: the ground-truth join state of one model, bounded.

Column by column and in generations. Request ids stay Arrow strings (about 12 bytes a
prediction, against some 200 for a Python str in a dict with a tuple of values), and
outcomes are looked up a batch at a time with Arrow's hash kernel (``index_in``), so
remembering a batch of predictions costs no Python object per event.

A generation holds at most ``limit / GENERATIONS`` predictions. When the state holds more
than ``limit``, or the newest prediction of the oldest generation is older than the TTL,
that whole generation is dropped: memory is freed in one piece and stays flat once the state
is full. The price: between ``limit - limit / GENERATIONS`` and ``limit`` predictions are
held, and a prediction may wait up to one generation's span longer than the TTL.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from rollguard_services.detector import arrow

GENERATIONS = 8


@dataclass(frozen=True)
class Waiting:
    """A prediction that met its outcome: which version made it, what it said, its segments."""

    version: str
    prediction: float | str
    segments: dict[str, str | None]


@dataclass
class _Chunk:
    """Predictions of one version from one batch."""

    ids: pa.Array
    version: str
    predictions: npt.NDArray[Any]  # float64, or object for labels
    segments: dict[str, npt.NDArray[np.object_]]


@dataclass
class _Generation:
    chunks: list[_Chunk] = field(default_factory=list)
    size: int = 0
    newest: float = 0.0
    matched: set[int] = field(default_factory=set)
    _ids: pa.Array | None = None
    _starts: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(1, dtype=np.int64))

    @property
    def waiting(self) -> int:
        return self.size - len(self.matched)

    def add(self, chunk: _Chunk, now: float) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk.ids)
        self.newest = now
        self._ids = None

    def newest_first(self) -> pa.Array:
        """Every request id of the generation, newest first, in one array (rebuilt after an
        add): ``index_in`` answers the first occurrence, which is then the latest."""
        if self._ids is None:
            ids = pa.concat_arrays([c.ids for c in self.chunks])
            self._ids = ids.take(arrow.indices(np.arange(len(ids) - 1, -1, -1)))
            self._starts = np.cumsum([0] + [len(c.ids) for c in self.chunks], dtype=np.int64)
        return self._ids

    def at(self, j: int) -> Waiting:
        k = int(np.searchsorted(self._starts, j, side="right")) - 1
        chunk, i = self.chunks[k], j - int(self._starts[k])
        prediction = chunk.predictions[i]
        return Waiting(
            chunk.version,
            prediction if isinstance(prediction, str) else float(prediction),
            {name: labels[i] for name, labels in chunk.segments.items()},
        )


class PendingJoin:
    """request_id → prediction, for predictions whose outcome has not arrived yet."""

    def __init__(self) -> None:
        self._generations: deque[_Generation] = deque()

    def __len__(self) -> int:
        """Predictions still waiting (matched ones no longer count)."""
        return sum(g.waiting for g in self._generations)

    def add(
        self,
        request_ids: pa.Array,
        version: str,
        predictions: npt.NDArray[np.float64] | list[Any],
        segments: dict[str, list[str | None]],
        now: float,
        limit: int,
    ) -> int:
        """Remember one batch of a version's predictions; returns how many old ones gave up."""
        size = max(1, -(-limit // GENERATIONS))
        values = (
            predictions
            if isinstance(predictions, np.ndarray)
            else np.array(predictions, dtype=object)
        )
        labels = {name: np.array(v, dtype=object) for name, v in segments.items()}
        done = 0
        while done < len(request_ids):
            if not self._generations or self._generations[-1].size >= size:
                self._generations.append(_Generation())
            gen = self._generations[-1]
            end = done + min(size - gen.size, len(request_ids) - done)
            part = slice(done, end)
            chunk = _Chunk(
                request_ids.slice(done, end - done),
                version,
                values[part],
                {name: v[part] for name, v in labels.items()},
            )
            gen.add(chunk, now)
            done = end
        evicted = 0
        while sum(g.size for g in self._generations) > limit:
            evicted += self._generations.popleft().waiting
        return evicted

    def match(self, request_ids: list[str]) -> list[Waiting | None]:
        """The prediction each request id made, consumed (an id matches once). An id
        predicted twice is answered by the later prediction; the earlier one is not
        reachable any more (as if overwritten) and gives up with its generation."""
        found: list[Waiting | None] = [None] * len(request_ids)
        if not request_ids or not self._generations:
            return found
        needles = arrow.strings(request_ids)
        open_ = np.ones(len(request_ids), dtype=np.bool_)
        for gen in reversed(self._generations):
            hits = pc.index_in(needles, value_set=gen.newest_first())
            where = gen.size - 1 - arrow.values(hits, np.int32).astype(np.int64)
            for i in np.flatnonzero(~arrow.nulls(hits) & open_).tolist():
                j = int(where[i])
                open_[i] = False  # the latest prediction with this id answers, or nothing
                if j in gen.matched:
                    continue
                gen.matched.add(j)
                found[i] = gen.at(j)
            if not open_.any():
                break
        return found

    def expire(self, now: float, ttl: float) -> int:
        """Drop generations whose newest prediction waited longer than ``ttl``."""
        expired = 0
        while self._generations and now - self._generations[0].newest > ttl:
            expired += self._generations.popleft().waiting
        return expired
