"""Giving freed memory back to the system when the server goes idle.

glibc keeps what Python, numpy, CTranslate2 and ONNX Runtime free in its heaps rather than returning it,
and gives each thread that allocates its own arena (up to 8 per core: the event loop, the decode, synthesis
and encoding workers), so one busy minute used to leave the process at its high-water mark for good
(~400 MB above idle on the CPU models). Two remedies, both no-ops on a libc without them (musl, macOS):

- ``limit_arenas`` (at start-up, before any worker thread): one arena per core. Threads share arenas, so
  memory one thread frees is reused by the others instead of piling up in arenas of their own.
- ``release_free_memory``: ``malloc_trim(0)`` hands the free pages of every arena back; `sockets` calls it
  when the last stream closes, and `app` every ``memory_trim_interval_s`` while streams stay open. It takes
  milliseconds and runs in a thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)


_M_ARENA_MAX = -8  # mallopt parameter, from glibc's malloc.h


@functools.cache
def _libc_function(name: str) -> ctypes._CFuncPtr | None:
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def _malloc_trim() -> ctypes._CFuncPtr | None:
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
    return trim


def limit_arenas(count: int) -> bool:
    """At most ``count`` malloc arenas (glibc's default is 8 per core); False where the C library cannot."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, max(1, count)))


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
