"""Process-level memory settings of the server.

glibc's allocator serves a freed block of up to 32 MiB from its heap the next
time (its mmap threshold rises to the largest block freed), and a heap only
shrinks from its top. A server that handles model-sized buffers (request
bodies, decoded vectors, aggregates) in worker threads then keeps every
per-thread arena's high-water mark resident long after the buffers are gone.
A fixed threshold sends every block of 1 MiB and more straight to ``mmap``,
so freeing it gives the memory back to the system at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("secagg.memory")

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 1 << 20


def tune_allocator(mmap_threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Give large blocks back to the system when freed (glibc only; a no-op elsewhere).

    Returns:
        Whether the allocator was tuned.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    ok = bool(mallopt(_M_TRIM_THRESHOLD, 2 * mmap_threshold)) and ok
    if not ok:
        log.warning("could not tune the allocator (mallopt refused); memory use may be higher")
    return ok
