"""Giving freed memory back to the system when the server goes idle.

glibc keeps what Python, numpy, CTranslate2 and ONNX Runtime free in its heaps (one arena per thread that
allocated: the event loop, the decode and synthesis worker threads) rather than returning it, so one busy
minute used to leave the process at its high-water mark for good (~400 MB above idle on the CPU models).
``malloc_trim(0)`` hands the free pages of every arena back; `sockets` calls it when the last stream
closes. It takes milliseconds and runs in a thread; on a libc without it (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
