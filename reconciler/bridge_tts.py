"""A session's `/ws/tts` across the move from the bridge to the pod: ``BridgedTts``.

Each ``speak`` is voiced entirely by one server, chosen when it starts (``choose()``, the session's rule:
the pod once ready; before that the bridge with ``bridge="both"``, or a wait for the pod with
``bridge="stt"``). So the route changes only between ``speak`` calls, and a reply is never cut or re-voiced
mid-sentence. One connection per server, kept open between calls, closed when the route changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpu_server import protocol

from .bridge import Route, Server, close_quietly

if TYPE_CHECKING:  # at run time imported where used: it needs numpy and PyAV, the speech extra
    from gpu_server.client import Frame, Speech, TtsConnection


@dataclass
class Spoken:
    """One ``speak``: the audio as ``gpu_server.client.Speech``, which server voiced it, and its number."""

    text: str
    server: Server
    number: int
    speech: Speech

    @property
    def cancelled(self) -> bool:
        return self.speech.cancelled


FrameSink = Callable[["Frame"], Awaitable[None] | None]


class BridgedTts:
    """A session's `/ws/tts`: ``speak`` calls run one at a time, each on the route ``choose()`` gives when
    it starts. One connection per route, kept open between calls and closed when the route changes."""

    def __init__(self, choose: Callable[[], Awaitable[Route]], *, name: str = "tts",
                 on_route: Callable[[Server, Server | None, int], None] | None = None) -> None:
        self.name = name
        self._choose = choose
        self._on_route = on_route
        self._lock = asyncio.Lock()
        self._conn: TtsConnection | None = None
        self._server: Server | None = None
        self._speaking: str | None = None
        self.spoken = 0

    async def speak(self, text: str, *, voice_id: str | None = None, on_frame: FrameSink | None = None) -> Spoken:
        async with self._lock:
            route = await self._choose()
            if self._conn is None or route.server is not self._server:
                previous = self._server
                if self._conn is not None:
                    await close_quietly(self._conn)
                    self._conn = None
                from gpu_server.client import TtsConnection

                conn = TtsConnection(route.endpoints["tts"], route.token())
                await conn.__aenter__()
                self._conn, self._server = conn, route.server
                if self._on_route is not None:
                    self._on_route(route.server, previous, self.spoken + 1)
            self.spoken += 1
            number, conn = self.spoken, self._conn
            try:
                speech = await self._say(conn, text, voice_id, on_frame)
            except BaseException:
                await close_quietly(conn)  # an unfinished utterance would be in the next one's way
                if self._conn is conn:
                    self._conn = None
                raise
            return Spoken(text, route.server, number, speech)

    async def cancel(self) -> None:
        """Barge-in: stop the utterance being voiced (its ``Spoken`` comes back with ``cancelled``)."""
        if self._conn is not None and self._speaking is not None:
            await self._conn.send_cancel(self._speaking)

    async def aclose(self) -> None:
        """Close the connection now, without the lock: a reply being voiced ends with ConnectionError."""
        conn, self._conn, self._server = self._conn, None, None
        if conn is not None:
            await close_quietly(conn)

    async def _say(self, tts: TtsConnection, text: str, voice_id: str | None, on_frame: FrameSink | None) -> Speech:
        from gpu_server.client import Frame, Speech, SpeechServerError, decode_frames

        sent_at = time.monotonic()
        id = uuid.uuid4().hex[:12]
        self._speaking = await tts.send_speak(text, id=id, voice_id=voice_id)
        start: protocol.TtsStart | None = None
        frames: list[Frame] = []
        try:
            async with contextlib.aclosing(tts.events()) as events:
                async for event in events:
                    if isinstance(event, Frame):
                        frames.append(event)
                        if on_frame is not None and inspect.isawaitable(result := on_frame(event)):
                            await result
                    elif isinstance(event, protocol.TtsStart) and event.id == id:
                        start = event
                    elif isinstance(event, protocol.Error) and start is None:
                        raise SpeechServerError(event.code, event.message)
                    elif isinstance(event, protocol.TtsDone) and event.id == id:
                        rate = start.sample_rate if start else 24000
                        return Speech(
                            id=id, sample_rate=rate, frames=frames, pcm=decode_frames(frames, rate), sent_at=sent_at,
                            first_audio_ms=(frames[0].received_at - sent_at) * 1000 if frames else None,
                            server_first_audio_ms=event.first_audio_ms, audio_ms=event.audio_ms,
                            cancelled=event.cancelled, done_at=time.monotonic(), start=start,
                        )
        finally:
            self._speaking = None
        raise ConnectionError(f"{self.name}: /ws/tts closed before the utterance was done (code {tts.close_code})")
