"""PostgreSQL's binary formats with numpy: COPY rows of fixed-width columns as structured
arrays (https://www.postgresql.org/docs/current/sql-copy.html), and timestamps; bulk writes
without a Python object per row.

A row dtype lists, per column, a big-endian int32 length and the value, after an int16 field
count: see `row_dtype`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
# timestamptz counts microseconds from 2000-01-01T00:00:00Z.
PG_EPOCH_MS = 946_684_800_000
CHUNK_BYTES = 128 * 1024

# Column types and their binary form.
UUID = "V16"
INT2 = ">i2"
INT4 = ">i4"
INT8 = ">i8"
FLOAT8 = ">f8"
TIMESTAMPTZ = ">i8"  # microseconds since PG_EPOCH_MS; see to_timestamptz


def row_dtype(columns: Sequence[tuple[str, str]]) -> np.dtype[np.void]:
    """The binary COPY row of (name, type) columns, none of them NULL."""
    fields: list[tuple[str, str]] = [("fields", INT2)]
    for name, kind in columns:
        fields += [(f"{name}_len", INT4), (name, kind)]
    return np.dtype(fields)


def new_rows(dtype: np.dtype[np.void], count: int) -> npt.NDArray[np.void]:
    """`count` rows with the field count and every length set; fill in the values."""
    rows = np.zeros(count, dtype=dtype)
    names = [name for name in dtype.names or () if name != "fields"]
    rows["fields"] = len(names) // 2
    for name in names:
        if name.endswith("_len"):
            rows[name] = dtype[name.removesuffix("_len")].itemsize
    return rows


def to_timestamptz(ms: npt.ArrayLike) -> npt.NDArray[np.int64]:
    return (np.asarray(ms, dtype=np.int64) - PG_EPOCH_MS) * 1000


def from_timestamptz(micros: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    result: npt.NDArray[np.int64] = micros.astype(np.int64) // 1000 + PG_EPOCH_MS
    return result


async def write(copy: psycopg.AsyncCopy, rows: npt.NDArray[np.void]) -> None:
    """Sends rows as binary COPY data in slices of the array itself (no copy of it all)."""
    await copy.write(HEADER)
    data = rows.view(np.uint8).data
    for offset in range(0, len(data), CHUNK_BYTES):
        await copy.write(data[offset : offset + CHUNK_BYTES])
    await copy.write(TRAILER)
