"""Arrow arrays to and from numpy and Python without ``pyarrow``'s pandas hooks.

``Array.to_numpy`` and ``pa.array(...)`` import pandas on first use (about 50 MB of resident
memory in a process that never uses it), so the detector reads and builds arrays through
their buffers instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa


def values(column: pa.Array, dtype: type[np.generic]) -> npt.NDArray[Any]:
    """The data buffer of a fixed-width array as numpy (null slots hold whatever is there)."""
    data = np.frombuffer(column.buffers()[1], dtype=dtype, count=column.offset + len(column))
    return data[column.offset :]


def nulls(column: pa.Array) -> npt.NDArray[np.bool_]:
    """Which slots are null, from the validity bitmap."""
    if not column.null_count:
        return np.zeros(len(column), dtype=np.bool_)
    if column.type == pa.null():
        return np.ones(len(column), dtype=np.bool_)
    bits = np.unpackbits(np.frombuffer(column.buffers()[0], dtype=np.uint8), bitorder="little")
    valid: npt.NDArray[np.bool_] = bits[column.offset : column.offset + len(column)] == 1
    return ~valid


def indices(rows: npt.NDArray[np.intp]) -> pa.Array:
    """Row numbers as an Arrow int64 array (for ``take``)."""
    data = np.ascontiguousarray(rows, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(data), [None, pa.py_buffer(data)])


def strings(items: list[str]) -> pa.Array:
    """A list of str as an Arrow string array."""
    encoded = [s.encode() for s in items]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return pa.Array.from_buffers(
        pa.string(),
        len(encoded),
        [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
    )
