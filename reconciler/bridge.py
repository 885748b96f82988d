"""Speech streams of a companion session that move from the bridge to the pod without a seam.

While a session's lease is pending, its speech runs on the *bridge*: the local CPU gpu_server the companion
library keeps warm (`local_server`). When the pod turns ready the streams move there, each at its own
utterance boundary, so nothing is cut, lost, or heard twice:

- ``BridgedStt`` (one `/ws/stt` stream): audio goes to the bridge and is also kept, from just after the last
  final, in a client-side buffer. Once a pod connection is open and started, the move happens at the next
  point where the bridge has no utterance in progress: right after a final, or at once if the bridge has
  reported no speech since its last final. The cut is the last final's end plus a margin (past the audio
  the server decoded into that final, before its endpoint fired); everything buffered from the cut on is
  replayed to the pod, faster than real time, then live audio follows. Whatever the bridge says after the
  cut is dropped, so an utterance it had only begun is transcribed once, by the pod. Times of the pod's
  messages are shifted by the cut, so every event is on one clock: seconds of audio given to ``send``.
- ``BridgedTts`` (one `/ws/tts` connection per server): each ``speak`` is voiced entirely by one server,
  chosen when it starts; the route changes only between ``speak`` calls, so a reply is never cut or
  re-voiced mid-sentence.

Events carry the ``Server`` that produced them. Audio into a bridged STT stream is PCM16 mono
(``pcm_s16le``) at the stream's ``sample_rate``: raw Opus could not be cut and replayed at an arbitrary
sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from gpu_server import protocol

if TYPE_CHECKING:  # at run time imported where used: it needs numpy and PyAV, the speech extra
    from gpu_server.client import SttConnection, TtsConnection

log = logging.getLogger(__name__)

REPLAY_CHUNK_S = 0.2  # replayed audio goes to the pod in chunks this long, as fast as it takes them
MAX_BUFFER_S = 60.0  # audio kept for a replay at most: an utterance is far shorter (the server splits at 25 s)
CUT_MARGIN_S = 0.25  # after a final's end: past the server's 0.2 s tail, before its 0.5 s endpoint
# The pod is ready but the bridge still reports an utterance in progress: after this long, move anyway. It
# happens when the bridge's VAD took a noise for speech and nothing came of it (no partial, no final). Moving
# mid-utterance loses nothing either (the pod gets everything from the cut), it only re-does partials.
MOVE_DEADLINE_S = 10.0
CONNECT_RETRY_S = 2.0
CONNECT_ATTEMPTS = 5


class Server(StrEnum):
    POD = "pod"  # the lease's pod
    BRIDGE = "bridge"  # the local CPU gpu_server, while the lease is pending
    FALLBACK = "fallback"  # the local CPU gpu_server, for good: no pod came


@dataclass(frozen=True)
class Route:
    """Where a stream's WebSockets go. ``token`` is read at each connect: heartbeats refresh the pod's."""

    server: Server
    endpoints: dict[str, str]
    token: Callable[[], str]
    pod_id: str | None = None


@dataclass(frozen=True)
class SttEvent:
    """What a bridged STT stream says: ``type`` is ``speech_started``, ``partial``, ``final`` or ``error``.

    ``start``/``end`` (and ``t`` of ``speech_started`` as ``start``) are seconds on the stream's own clock,
    the audio given to ``send``, whichever server heard it; ``message`` is the server's message as sent,
    on that server's clock. ``utterance`` counts from 1; a final ends its utterance."""

    type: str
    text: str
    start: float | None
    end: float | None
    server: Server
    utterance: int
    at: float
    message: protocol.Message = field(repr=False)

    @property
    def end_of_turn(self) -> bool:
        """A final that ends the speaker's turn (False for a part of a long turn that goes on; see DESIGN)."""
        return isinstance(self.message, protocol.Final) and self.message.end_of_turn


_CLOSED = object()


class BridgedStt:
    """One session's `/ws/stt` stream; use through ``VoiceSession.stt()``.

    ``pod`` settles to the pod's route when the lease is ready, or to None when no pod will come (the stream
    then stays where it is). ``on_switch(utterance)`` is called once the stream is on the pod, with the
    number of the first utterance the pod transcribes; ``on_close()`` once the stream is gone."""

    def __init__(
        self, route: Route, *, pod: asyncio.Future[Route | None] | None = None, sample_rate: int = 16000,
        language: str = "en", endpoint_ms: int | None = None, name: str = "stt",
        on_switch: Callable[[int], None] | None = None, on_close: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.sample_rate = sample_rate
        self._start = protocol.SttStart(sample_rate, "pcm_s16le", language, endpoint_ms)
        margin = CUT_MARGIN_S if endpoint_ms is None else min(CUT_MARGIN_S, 0.8 * endpoint_ms / 1000)
        self._margin = int(margin * sample_rate)
        self._route = route
        self._pod = pod
        self._on_switch, self._on_close = on_switch, on_close
        self.server = route.server
        self.switched_at: int | None = None  # first utterance the pod transcribed
        self.moved = asyncio.Event()  # set once the stream is on the pod
        self.finals = 0
        self._conn: SttConnection | None = None
        self._offset = 0  # stream sample where the current connection's audio starts
        self._sent = 0  # samples given to send()
        self._buffer: bytearray | None = None  # audio from _buffer_start on, while a move may still come
        self._buffer_start = 0
        self._last_final_end = 0  # stream sample
        self._in_utterance = False
        self._ready_pod: SttConnection | None = None
        self._pod_route: Route | None = None
        self._finishing = False
        self._send_lock = asyncio.Lock()
        self._inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._out: asyncio.Queue[SttEvent | object] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._readers: dict[SttConnection, asyncio.Task[None]] = {}
        self._closed = False

    # ---- lifecycle

    async def open(self) -> BridgedStt:
        self._conn = await self._connect(self._route)
        if self._pod is not None and self._route.server is Server.BRIDGE:
            self._buffer = bytearray()
            self._spawn(self._prepare_pod(), f"{self.name}-pod-connect")
        self._spawn(self._pump(), f"{self.name}-pump")
        return self

    async def __aenter__(self) -> BridgedStt:
        try:
            return await self.open()
        except BaseException:
            await self.aclose()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection and task this stream opened; idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks) + list(self._readers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in {c for c in (self._conn, self._ready_pod, *self._readers) if c is not None}:
            await close_quietly(conn)
        self._readers.clear()
        self._out.put_nowait(_CLOSED)
        if self._on_close is not None:
            self._on_close()

    # ---- audio in

    async def send(self, pcm: bytes) -> None:
        """PCM16 mono at ``sample_rate``, any length; sent on to whichever server has the stream now."""
        if len(pcm) % 2:
            raise ValueError("pcm_s16le audio must have an even number of bytes")
        async with self._send_lock:
            if self._finishing or self._closed or self._conn is None:
                raise RuntimeError(f"{self.name}: audio after finish() or close")
            if self._buffer is not None:
                self._buffer += pcm
                excess = len(self._buffer) // 2 - int(MAX_BUFFER_S * self.sample_rate)
                if excess > 0:
                    del self._buffer[: excess * 2]
                    self._buffer_start += excess
            self._sent += len(pcm) // 2
            await self._conn.send_audio(pcm)

    async def finish(self) -> None:
        """No more audio: the server sends the last final, then the events end."""
        async with self._send_lock:
            if self._finishing or self._conn is None:
                return
            self._finishing = True
            self._buffer = None
            ready, self._ready_pod = self._ready_pod, None
            if ready is not None:
                await self._drop(ready)
            await self._conn.send_stop()

    @property
    def sent_s(self) -> float:
        return self._sent / self.sample_rate

    # ---- events out

    def __aiter__(self) -> AsyncIterator[SttEvent]:
        return self.events()

    async def events(self) -> AsyncIterator[SttEvent]:
        """Events until the stream ends (after ``finish()``, or when its server closes it)."""
        while True:
            item = await self._out.get()
            if item is _CLOSED:
                self._out.put_nowait(_CLOSED)  # later readers end too
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    # ---- internals

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: %s failed", self.name, task.get_name(), exc_info=task.exception())
            self._out.put_nowait(task.exception())  # surfaced to whoever reads the events

    async def _connect(self, route: Route) -> SttConnection:
        from gpu_server.client import SttConnection

        conn = SttConnection(route.endpoints["stt"], route.token())
        await conn.__aenter__()
        try:
            await conn.ws.send(protocol.encode(self._start))
        except BaseException:
            await close_quietly(conn)
            raise
        self._readers[conn] = asyncio.create_task(self._read(conn), name=f"{self.name}-read-{route.server}")
        return conn

    async def _read(self, conn: SttConnection) -> None:
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):
            async for raw in conn.ws:
                if isinstance(raw, str):
                    await self._inbox.put(("msg", conn, protocol.parse_stt_server(raw), time.monotonic()))
        await self._inbox.put(("closed", conn))

    async def _prepare_pod(self) -> None:
        """Wait for the pod, open and start a connection there, and hand it to the pump."""
        assert self._pod is not None
        route = await asyncio.shield(self._pod)
        if route is None:
            await self._inbox.put(("no_pod",))
            return
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            try:
                conn = await self._connect(route)
            except Exception as e:
                log.warning("%s: cannot reach pod %s yet (%s: %s); attempt %d of %d", self.name, route.pod_id,
                            type(e).__name__, e, attempt, CONNECT_ATTEMPTS)
                await asyncio.sleep(CONNECT_RETRY_S)
                continue
            await self._inbox.put(("pod", conn, route))
            return
        log.error("%s: pod %s unreachable: the stream stays on the bridge", self.name, route.pod_id)

    async def _deadline(self, conn: SttConnection) -> None:
        await asyncio.sleep(MOVE_DEADLINE_S)
        await self._inbox.put(("deadline", conn))

    async def _pump(self) -> None:
        """The one place events are delivered and moves happen, so both see the same order of messages."""
        while True:
            item = await self._inbox.get()
            kind = item[0]
            if kind == "pod":
                _, conn, route = item
                if self._finishing or self._closed:
                    await self._drop(conn)
                    continue
                self._ready_pod, self._pod_route = conn, route
                if not self._in_utterance:
                    await self._move()
                else:
                    self._spawn(self._deadline(conn), f"{self.name}-move-deadline")
            elif kind == "deadline":
                if self._ready_pod is item[1]:
                    log.warning("%s: no utterance boundary %.0f s after the pod was ready; moving now",
                                self.name, MOVE_DEADLINE_S)
                    await self._move()
            elif kind == "no_pod":
                self._buffer = None
                self.server = Server.FALLBACK
            elif kind == "closed":
                conn = item[1]
                if conn is self._conn:
                    if not self._finishing:  # the server went away under the stream: say so
                        code = conn.ws.close_code
                        msg = protocol.Error(code="closed", message=f"the {self.server} closed the stream ({code})")
                        self._deliver(msg, time.monotonic())
                    self._out.put_nowait(_CLOSED)
                    return
            elif item[1] is self._conn:  # a message of the current connection; others' are dropped
                if self._deliver(item[2], item[3]) and self._ready_pod is not None:
                    await self._move()

    def _deliver(self, msg: protocol.Message, at: float) -> bool:
        """Pass one message on (shifted to the stream's clock); True at an utterance boundary."""
        offset = self._offset / self.sample_rate
        number = self.finals + 1
        if isinstance(msg, protocol.SpeechStarted):
            self._in_utterance = True
            event = SttEvent("speech_started", "", msg.t + offset, None, self.server, number, at, msg)
        elif isinstance(msg, protocol.Partial):
            self._in_utterance = True
            event = SttEvent("partial", msg.text, msg.start + offset, msg.end + offset, self.server, number, at, msg)
        elif isinstance(msg, protocol.Final):
            self._in_utterance = False
            self.finals += 1
            self._last_final_end = self._offset + round(msg.end * self.sample_rate)
            self._trim_buffer()
            self._out.put_nowait(
                SttEvent("final", msg.text, msg.start + offset, msg.end + offset, self.server, number, at, msg))
            return True
        elif isinstance(msg, protocol.Error):
            event = SttEvent("error", msg.message, None, None, self.server, number, at, msg)
        else:  # ready, done: the stream's own business
            return False
        self._out.put_nowait(event)
        return False

    def _cut(self) -> int:
        return min(max(self._last_final_end + self._margin, self._buffer_start), self._sent)

    def _trim_buffer(self) -> None:
        if self._buffer is not None:
            cut = self._cut()
            del self._buffer[: (cut - self._buffer_start) * 2]
            self._buffer_start = cut

    async def _move(self) -> None:
        pod, self._ready_pod = self._ready_pod, None
        assert pod is not None and self._buffer is not None
        async with self._send_lock:
            if self._finishing:
                await self._drop(pod)
                return
            cut = self._cut()
            replay = bytes(self._buffer[(cut - self._buffer_start) * 2:])
            step = int(REPLAY_CHUNK_S * self.sample_rate) * 2
            try:
                for i in range(0, len(replay), step):
                    await pod.send_audio(replay[i : i + step])
            except Exception as e:
                log.warning("%s: the pod failed during the move (%s); staying on the bridge", self.name, e)
                await self._drop(pod)
                self._spawn(self._prepare_pod(), f"{self.name}-pod-connect")
                return
            old, self._conn = self._conn, pod
            self._offset, self._buffer = cut, None
            self.server = Server.POD
            self.switched_at = self.finals + 1
            self._in_utterance = False
            self.moved.set()
        pod_id = self._pod_route.pod_id if self._pod_route else None
        log.info("%s: moved from the bridge to pod %s at utterance %d (%.2f s of audio replayed)", self.name,
                 pod_id, self.switched_at, len(replay) / 2 / self.sample_rate)
        if old is not None:
            await self._drop(old)
        if self._on_switch is not None:
            self._on_switch(self.switched_at)

    async def _drop(self, conn: SttConnection) -> None:
        reader = self._readers.pop(conn, None)
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await close_quietly(conn)


async def close_quietly(conn: SttConnection | TtsConnection) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.__aexit__(None, None, None), 5)
