"""glibc malloc settings for the ingest process, applied before anything allocates much.

Ingest allocates and frees many short-lived buffers of 16 KiB to a few MiB (decoded batches,
COPY data) from the event loop and grpc's threads. With glibc's defaults the mmap threshold
rises to the largest buffer freed so far, after which those buffers come from the heap,
fragment it and are rarely returned; and every thread may get its own arena. Both make the
resident set grow well beyond what is actually held. A fixed mmap threshold, an earlier trim
and two arenas keep the peak close to the live data.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD_BYTES = 64 * 1024
TRIM_THRESHOLD_BYTES = 1024 * 1024
ARENAS = 2


def tune_malloc() -> bool:
    """Applies the settings above; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = all(
        mallopt(option, value) == 1
        for option, value in (
            (M_ARENA_MAX, ARENAS),
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        )
    )
    if not applied:
        log.info("malloc tuning not applied")
    return applied
