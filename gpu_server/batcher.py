"""``DecodeBatcher``: the Whisper decodes of every STT connection, run together in batches.

One decode per call wastes most of the model: a decoder step costs about the same for one sequence as
for several (on two CPU cores a batch of three costs ~60 ms per item instead of ~105; on a GPU the gap
is far larger). So streams do not call the engine; they submit a `DecodeRequest` here and await it.
Batches form by themselves: while one batch runs, requests pile up, and the next batch takes them all
(up to ``max_batch``). An idle server therefore adds no waiting, and a busy one gets cheaper per stream.

Order: the most urgent request first (finals before partials, see `gate`), then whatever shares its beam
size, by priority and arrival. ``workers`` batches may run at once (CTranslate2 ``num_workers``).
A request whose caller was cancelled (client gone) is dropped if it has not started.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Self

from gpu_server.engines import DecodeRequest, Transcriber, Transcription

log = logging.getLogger(__name__)


class DecodeBatcher:
    def __init__(self, transcriber: Transcriber, *, max_batch: int = 8, workers: int = 1) -> None:
        self._transcriber = transcriber
        self.max_batch = max_batch
        self._workers = workers
        self._pending: list[tuple[int, int, DecodeRequest, asyncio.Future[Transcription]]] = []
        self._order = itertools.count()
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.batches = 0  # for tests and the bench: how many model calls, for how many requests
        self.decoded = 0

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"stt-batcher-{i}") for i in range(self._workers)
        ]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        for *_, future in self._pending:
            future.cancel()

    async def transcribe(self, request: DecodeRequest, *, priority: int) -> Transcription:
        if not self._tasks or all(t.done() for t in self._tasks):
            raise RuntimeError("the decode batcher is not running")
        future: asyncio.Future[Transcription] = asyncio.get_running_loop().create_future()
        self._pending.append((priority, next(self._order), request, future))  # _take sorts
        self._ready.set()
        return await future

    def _take(self) -> list[tuple[DecodeRequest, asyncio.Future[Transcription]]]:
        live = [item for item in self._pending if not item[3].done()]
        live.sort()
        batch, rest = [], []
        for item in live:
            if len(batch) < self.max_batch and (not batch or item[2].beam_size == batch[0][0].beam_size):
                batch.append((item[2], item[3]))
            else:
                rest.append(item)
        self._pending = rest
        if not self._pending:
            self._ready.clear()
        return batch

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            batch = self._take()
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(self._transcriber.transcribe_batch, [r for r, _ in batch])
            except Exception as e:
                # Fail this batch's callers with the reason, keep serving the next ones.
                log.exception("Whisper batch of %d failed", len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batches += 1
            self.decoded += len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
