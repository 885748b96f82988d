"""``ModelGate``: how many calls may run inside one model at once, and who goes first.

Every blocking model call (Whisper, Piper, Chatterbox) goes through its engine's gate, which runs it in a
worker thread so the event loop keeps serving sockets. Waiters are served by priority (lowest first), then
arrival: a class (an STT final, a user waiting for the answer, overtakes queued partials) or a deadline
(TTS asks with the time its listener would run out of audio, so the model serves the nearest gap first).
A slot is held until the thread really finishes, even when the awaiting task is cancelled, so the cap holds
under barge-in and disconnects.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
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

    @property
    def waiting(self) -> int:
        return sum(1 for *_, fut in self._waiters if not fut.done())

    async def run(self, fn: Callable[..., T], *args: Any, priority: float = NORMAL) -> T:
        await self._acquire(priority)
        loop = asyncio.get_running_loop()
        try:
            work = loop.run_in_executor(None, fn, *args)
        except BaseException:
            self._release()
            raise
        work.add_done_callback(lambda _: self._release())
        # The shield keeps the thread's future (and so the slot) alive if this task is cancelled.
        return await asyncio.shield(work)

    async def _acquire(self, priority: float) -> None:
        if self._free > 0 and not self.waiting:
            self._free -= 1
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
