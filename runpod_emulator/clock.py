"""Time for the emulator: every decision reads it from a ``Clock`` passed in, never from ``time.time()``.

The server uses ``SystemClock``. Tests hand ``create_app``/``EmulatorServer`` a ``FakeClock`` and move it
forward to check boot delays, model-load delays and exact billing amounts without sleeping. Only the
wall-clock pacing of the server itself (the boot watcher's poll, the ``timeout`` fault's delay) uses real time,
because those exist to be felt by a real client.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock that only moves when told to. Safe to move from a test thread while the server reads it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += seconds
            return self._now
