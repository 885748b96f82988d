"""``TtsSession``: the streaming text-to-speech pipeline of one `/ws/tts` connection.

Flow: ``speak`` requests queue up (at most ``max_queued_speaks``); a worker task speaks them in order.
Each text is cut by `sentences.split_for_speech` (short first piece), each piece is synthesized chunk by
chunk in a worker thread behind the TTS model gate, resampled to the output rate, cut into exactly-20 ms
Opus packets and sent as binary frames (``protocol.pack_frame``) between a ``start`` and a ``done``.

Barge-in: ``cancel`` only sets a flag, and the sender checks it before every frame, so at most the frame
already on its way leaves after a cancel is read; synthesis stops at the next chunk boundary and the
engine's generator is closed. The last packet of an utterance that was not cancelled is padded with
silence. ``first_audio_ms`` is measured from the moment the utterance starts being processed (its turn in
the queue) to its first frame being handed to the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from gpu_server import protocol
from gpu_server.audio import StreamResampler, float_to_pcm16
from gpu_server.engines import EngineError, Synthesizer
from gpu_server.gate import NORMAL, ModelGate
from gpu_server.metrics import SpeechMetrics
from gpu_server.opus import OpusPacketizer
from gpu_server.protocol import ErrorCode, ProtocolError
from gpu_server.sentences import split_for_speech
from gpu_server.settings import Settings

_PAUSE_PUNCTUATION = (".", ",", "!", "?", ";", ":", "\u2026", "\u2014", "\u2013", '"', "'", ")")
_SILENCE_LEVEL = 0.02  # below this a sample is silence, for trimming
_KEEP_AFTER_S = 0.06  # of a trimmed piece's tail: a breath, not a sentence end
STREAM_RATES = (16000, 24000)  # the rates the protocol sends (GPU_SERVER_TTS_SAMPLE_RATE picks one for Piper)

EmitText = Callable[[protocol.Message], Awaitable[None]]
EmitBytes = Callable[[bytes], Awaitable[None]]


@dataclass
class _Utterance:
    request: protocol.Speak
    cancelled: bool = False
    capped: bool = False  # hit tts_max_audio_s


class TtsSession:
    def __init__(
        self,
        *,
        synthesizer: Synthesizer,
        gate: ModelGate,
        settings: Settings,
        metrics: SpeechMetrics,
        emit: EmitText,
        emit_frame: EmitBytes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tts = synthesizer
        self._gate = gate
        self._settings = settings
        self._metrics = metrics
        self._emit = emit
        self._emit_frame = emit_frame
        self._clock = clock
        self._queue: deque[_Utterance] = deque()
        self._current: _Utterance | None = None
        self._wake = asyncio.Event()
        self._seq = 0
        # Chatterbox speaks at 24000 already and is sent as it is; Piper (22050) goes out at the setting's rate.
        native = synthesizer.sample_rate
        self.sample_rate = native if native in STREAM_RATES else settings.tts_sample_rate

    # ---- messages from the client

    async def speak(self, request: protocol.Speak) -> None:
        limit = self._settings.max_text_chars
        if len(request.text) > limit:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"text has {len(request.text)} characters; the limit is {limit}")
        if not request.text.strip():
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "text is empty")
        if not self._tts.supports_language(_language(request)):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"language {request.language!r} is not spoken by this model")
        queued = sum(not u.cancelled for u in self._queue)
        if queued >= self._settings.max_queued_speaks:
            raise ProtocolError(ErrorCode.BUSY, f"{queued} requests are already queued; wait for a done or cancel")
        self._queue.append(_Utterance(request))
        self._wake.set()

    async def cancel(self, request: protocol.Cancel) -> None:
        # Queued ones stay queued, marked: the worker answers them in order with a bare done.
        for utterance in (self._current, *self._queue):
            if utterance is not None and request.id in (None, utterance.request.id):
                utterance.cancelled = True

    def run_worker(self) -> asyncio.Task[None]:
        return asyncio.create_task(self._work(), name="tts-speaker")

    # ---- speaking

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                self._current = self._queue.popleft()
                try:
                    await self._speak(self._current)
                finally:
                    self._current = None

    async def _audio(self, utterance: _Utterance) -> AsyncIterator[np.ndarray]:
        """The utterance's audio at the engine's rate, chunk by chunk, until done, cancelled or capped."""
        request, rate = utterance.request, self._tts.sample_rate
        budget_s = self._settings.tts_max_audio_s
        pieces = split_for_speech(request.text, short_first=self._tts.short_first_piece)
        for index, piece in enumerate(pieces):
            # A piece cut mid-sentence would end in the engine's sentence-final silence, an odd pause in
            # the middle of a phrase: trim it, which needs its last chunk held until it is known to be last.
            trim = index < len(pieces) - 1 and not piece.endswith(_PAUSE_PUNCTUATION)
            held: np.ndarray | None = None
            chunks = self._tts.synthesize(piece, request.voice_id, budget_s, _language(request))
            try:
                while not utterance.cancelled:
                    chunk = await self._gate.run(next, chunks, None, priority=NORMAL)
                    if chunk is None:
                        break
                    budget_s -= len(chunk) / rate
                    if trim:
                        chunk, held = held, chunk
                    if chunk is not None:
                        yield chunk
                    if budget_s <= 0:
                        utterance.capped = True
                        break
            finally:
                _close(chunks)
            if held is not None and not utterance.cancelled:
                yield _trim_silence(held, rate)
            if utterance.cancelled or utterance.capped:
                return

    async def _speak(self, utterance: _Utterance) -> None:
        request = utterance.request
        if utterance.cancelled:  # cancelled while queued: never started (see `protocol`)
            await self._emit(protocol.TtsDone(request.id, 0, 0.0, None, cancelled=True))
            return
        started = self._clock()
        try:
            await self._gate.run(self._tts.prepare_voice, request.voice_id, _language(request), priority=NORMAL)
        except EngineError as e:
            await self._emit(protocol.Error(ErrorCode.BAD_MESSAGE, str(e)))
            await self._emit(protocol.TtsDone(request.id, 0, 0.0, None, cancelled=True))
            return
        await self._emit(protocol.TtsStart(request.id, sample_rate=self.sample_rate))
        resampler = StreamResampler(self._tts.sample_rate, self.sample_rate)
        packetizer = OpusPacketizer(self.sample_rate)
        frames = 0
        first_audio: float | None = None

        async def send(packets: list[bytes]) -> None:
            nonlocal frames, first_audio
            for packet in packets:
                if utterance.cancelled:
                    return
                await self._emit_frame(protocol.pack_frame(self._seq, frames * protocol.FRAME_MS * 1000, packet))
                if first_audio is None:
                    first_audio = self._clock() - started
                    self._metrics.tts_first_audio.observe(first_audio)
                self._seq = (self._seq + 1) & 0xFFFFFFFF
                frames += 1

        async with contextlib.aclosing(self._audio(utterance)) as audio:
            async for chunk in audio:
                await send(packetizer.push(float_to_pcm16(resampler.push(chunk))))
        if not utterance.cancelled:
            await send(packetizer.push(float_to_pcm16(resampler.flush())))
            await send(packetizer.flush())
        if utterance.capped:
            await self._emit(
                protocol.Error(ErrorCode.TOO_LARGE, f"audio capped at {self._settings.tts_max_audio_s:g} s")
            )
        audio_ms = frames * protocol.FRAME_MS
        self._metrics.tts_audio_seconds.inc(audio_ms / 1000)
        await self._emit(
            protocol.TtsDone(
                request.id,
                frames,
                float(audio_ms),
                None if first_audio is None else round(first_audio * 1000, 1),
                cancelled=utterance.cancelled,
            )
        )


def _language(request: protocol.Speak) -> str:
    return request.language or "en"


def _trim_silence(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > _SILENCE_LEVEL)
    end = (loud[-1] + 1 if len(loud) else 0) + int(_KEEP_AFTER_S * sample_rate)
    return audio[: max(end, 1)]


def _close(chunks: object) -> None:
    """Stop an engine's generator (a cancelled Chatterbox stops sampling here)."""
    try:
        chunks.close()  # type: ignore[attr-defined]
    except ValueError:
        # Still running in the worker thread of a connection that went away; it ends with that chunk.
        pass
