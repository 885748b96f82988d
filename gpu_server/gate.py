"""``ModelGate``: how many calls may run inside one model at once, and who goes first.

Every blocking model call (Whisper, Piper, Chatterbox) goes through its engine's gate, which runs it in a
worker thread so the event loop keeps serving sockets. Waiters are served by priority (lowest first), then
arrival: a class (an STT final, a user waiting for the answer, overtakes queued partials) or a time (TTS asks
with the latest time its piece can start and still be ready before its listener runs out of audio).
A slot is held until the thread really finishes, even when the awaiting task is cancelled, so the cap holds
under barge-in and disconnects.

The gate also learns how long its calls take per unit of work (a call says how much it has, e.g. TTS: the
characters of its piece), as a moving average of what they took with the model shared as it is now, so a
caller can set its priority from the expected time of its call (``expected_s``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

URGENT = 0  # STT finals
NORMAL = 1  # TTS chunks
BACKGROUND = 2  # STT partials: skipped or merged when the model is busy


class ModelGate:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a model gate needs a capacity of at least 1")
        self.capacity = capacity
        self._free = capacity
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._per_unit: float | None = None  # seconds per unit of work, moving average
        self._idle = asyncio.Event()  # set while no call holds a slot
        self._idle.set()

    @property
    def busy(self) -> bool:
        """A call holds a slot."""
        return self._free < self.capacity

    async def idle(self) -> None:
        """Return once no call holds a slot (threads of abandoned calls included)."""
        await self._idle.wait()

    def expected_s(self, work: float, default_per_unit: float) -> float:
        """How long a call with ``work`` units is expected to take (``default_per_unit`` until one is seen)."""
        return work * (default_per_unit if self._per_unit is None else self._per_unit)

    @property
    def waiting(self) -> int:
        """Callers queued for a slot (TTS cuts shorter pieces while there are some)."""
        return self._queued()

    def _queued(self) -> int:
        return sum(1 for *_, fut in self._waiters if not fut.done())

    async def run(self, fn: Callable[..., T], *args: Any, priority: float = NORMAL, work: float = 0.0) -> T:
        """``fn(*args)`` in a worker thread once a slot is free; ``work`` > 0: learn its time per unit."""
        await self._acquire(priority)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            call = loop.run_in_executor(None, fn, *args)
        except BaseException:
            self._release()
            raise

        def finished(call: asyncio.Future[T]) -> None:
            self._release()
            if work > 0 and not call.cancelled() and call.exception() is None:
                took = (time.monotonic() - started) / work
                self._per_unit = took if self._per_unit is None else self._per_unit + 0.2 * (took - self._per_unit)

        call.add_done_callback(finished)
        # The shield keeps the thread's future (and so the slot) alive if this task is cancelled.
        return await asyncio.shield(call)

    async def _acquire(self, priority: float) -> None:
        if self._free > 0 and not self._queued():
            self._free -= 1
            self._idle.clear()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # the slot was handed to us just as we were cancelled: pass it on
            raise

    def _release(self) -> None:
        while self._waiters:
            *_, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1
        if self._free == self.capacity:
            self._idle.set()
