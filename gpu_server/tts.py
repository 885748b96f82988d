"""``TtsSession``: the streaming text-to-speech pipeline of one `/ws/tts` connection.

Flow: ``speak`` requests queue up (at most ``max_queued_speaks``); a worker task speaks them in order.
Each text is cut by `sentences.split_for_speech` (short first piece), each piece is synthesized chunk by
chunk in a worker thread behind the TTS model gate, resampled to the output rate, cut into exactly-20 ms
Opus packets and sent as binary frames (``protocol.pack_frame``) between a ``start`` and a ``done``.

Two tasks per utterance: a producer synthesizes into a frame queue, a sender takes frames off it paced by
`pacing.Pacer` (at most ``tts_max_ahead_ms`` ahead of the listener's real time, after an initial burst of
that size). The producer synthesizes a chunk only when the listener would otherwise hold less than
``SYNTH_AHEAD_S``, and asks the gate with a priority from the time the listener would run dry (see
``_priority``): a playing reply's piece by the latest time it can start and still be ready then, a new
reply's first piece (its listener has nothing yet) shortest first, so new replies overtake replies that have
audio in hand unless one of those would otherwise fall silent. While others wait for the model the second
piece is cut to a phrase (`sentences.lead_phrase`), so it is ready before a short first piece has played.

Barge-in: ``cancel`` marks the utterance and wakes its sender, which stops before the next frame and sends
``done`` at once, without waiting for a synthesis call in flight (that one finishes in its thread, its
audio is dropped and the engine's generator is closed). The last packet of an utterance that was not
cancelled is padded with silence. ``first_audio_ms`` is measured from the moment the utterance starts being
processed (its turn in the queue) to its first frame being handed to the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from gpu_server import protocol
from gpu_server.audio import StreamResampler, float_to_pcm16
from gpu_server.engines import EngineError, Synthesizer
from gpu_server.gate import ModelGate
from gpu_server.metrics import SpeechMetrics
from gpu_server.opus import OpusPacketizer
from gpu_server.pacing import Pacer
from gpu_server.protocol import ErrorCode, ProtocolError
from gpu_server.sentences import lead_phrase, split_for_speech
from gpu_server.settings import Settings

_PAUSE_PUNCTUATION = (".", ",", "!", "?", ";", ":", "\u2026", "\u2014", "\u2013", '"', "'", ")")
_SILENCE_LEVEL = 0.02  # below this a sample is silence, for trimming
_KEEP_AFTER_S = 0.06  # of a trimmed piece's tail: a breath, not a sentence end
STREAM_RATES = (16000, 24000)  # the rates the protocol sends (GPU_SERVER_TTS_SAMPLE_RATE picks one for Piper)
# Synthesize the next chunk once the listener holds less than this: enough to ride out a few other
# connections' chunks ahead of ours in the gate, little enough to leave the model free for new replies.
SYNTH_AHEAD_S = 1.5
FRAME_S = protocol.FRAME_MS / 1000
# Synthesis time per character of text until the gate has measured it (Piper-medium on one core: ~0.1 s
# per second of speech, ~15 characters per second); see ``_priority``.
SYNTH_S_PER_CHAR = 0.007
# While the listener waits, a chunk's first this-much is encoded and handed to the sender before the rest.
ENCODE_FIRST_S = 0.1

EmitText = Callable[[protocol.Message], Awaitable[None]]
EmitBytes = Callable[[bytes], Awaitable[None]]


@dataclass
class _Utterance:
    request: protocol.Speak
    cancelled: bool = False
    capped: bool = False  # hit tts_max_audio_s
    frames: deque[bytes] = field(default_factory=deque)  # synthesized, not sent yet
    produced: bool = False  # the producer is done: no frame will be added
    # Set on every change the sender waits for: frames added, production over, cancel.
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def cancel(self) -> None:
        self.cancelled = True
        self.wake.set()


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
        self._pacer = Pacer(FRAME_S, settings.tts_max_ahead_ms / 1000)
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
                utterance.cancel()

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

    def _deadline(self, utterance: _Utterance) -> float:
        """When this connection's listener runs out of audio: the gate serves the earliest first."""
        now = self._clock()
        return now + self._pacer.buffered(now) + len(utterance.frames) * FRAME_S

    def _priority(self, utterance: _Utterance, piece: str) -> float:
        """The gate serves the lowest first. A listener that still has audio: the latest time this piece can
        start and be ready before it runs dry (deadline minus the piece's expected synthesis time, least
        slack first), so a long piece starts early enough. A listener with nothing to play (a new reply, or
        one that ran dry) is late already: the piece that would be done first goes first, so short first
        pieces overtake long ones and the median first audio drops when many replies start at once."""
        deadline, now = self._deadline(utterance), self._clock()
        cost = self._gate.expected_s(len(piece), SYNTH_S_PER_CHAR)
        return deadline - cost if deadline > now else now + cost

    async def _until_needed(self, utterance: _Utterance) -> None:
        """Wait while the listener holds more than SYNTH_AHEAD_S (or until a cancel)."""
        while not utterance.cancelled:
            spare = self._deadline(utterance) - self._clock() - SYNTH_AHEAD_S
            if spare <= 0:
                return
            utterance.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(spare):
                    await utterance.wake.wait()

    async def _audio(self, utterance: _Utterance) -> AsyncIterator[np.ndarray]:
        """The utterance's audio at the engine's rate, chunk by chunk, until done, cancelled or capped."""
        request, rate = utterance.request, self._tts.sample_rate
        budget_s = self._settings.tts_max_audio_s
        pieces = split_for_speech(request.text, short_first=self._tts.short_first_piece)
        index = 0
        while index < len(pieces):
            if index == 1 and self._tts.short_first_piece and self._gate.waiting:
                # Others wait for the model: the second piece is a phrase too, so it is ready before the
                # short first piece has played (see sentences.lead_phrase).
                pieces[1:2] = lead_phrase(pieces[1])
            piece = pieces[index]
            # A piece cut mid-sentence would end in the engine's sentence-final silence, an odd pause in
            # the middle of a phrase: trim it. Only the trailing silence of each chunk is held back until the
            # next chunk shows it was not the last (waiting to know that before sending a chunk at all cost
            # a turn at the model, behind every other connection's synthesis, before a reply's first audio).
            trim = index < len(pieces) - 1 and not piece.endswith(_PAUSE_PUNCTUATION)
            held: np.ndarray | None = None
            chunks = self._tts.synthesize(piece, request.voice_id, budget_s, _language(request))
            work = float(len(piece))  # the first call synthesizes the piece (Piper: all of it): the gate learns
            try:
                while not utterance.cancelled:
                    await self._until_needed(utterance)
                    if utterance.cancelled:
                        break
                    priority = self._priority(utterance, piece)
                    chunk = await self._gate.run(next, chunks, None, priority=priority, work=work)
                    work = 0.0
                    if chunk is None:
                        break
                    budget_s -= len(chunk) / rate
                    if trim:
                        if held is not None and len(held):
                            yield held  # not the end of the piece after all
                        chunk, held = _split_trailing_silence(chunk, rate)
                    if len(chunk):
                        yield chunk
                    if budget_s <= 0:
                        utterance.capped = True
                        break
            finally:
                _close(chunks)
            if held is not None and not utterance.cancelled:
                yield held[: int(_KEEP_AFTER_S * rate)]
            if utterance.cancelled or utterance.capped:
                return
            index += 1

    async def _produce(self, utterance: _Utterance) -> None:
        """Synthesize into ``utterance.frames`` (Opus packets), waking the sender as they come."""
        resampler = StreamResampler(self._tts.sample_rate, self.sample_rate)
        packetizer = OpusPacketizer(self.sample_rate)

        def encode(chunk: np.ndarray | None) -> list[bytes]:
            if chunk is None:  # the end: what the resampler and the last packet hold
                return packetizer.push(float_to_pcm16(resampler.flush())) + packetizer.flush()
            return packetizer.push(float_to_pcm16(resampler.push(chunk)))

        try:
            async with contextlib.aclosing(self._audio(utterance)) as audio:
                async for chunk in audio:
                    # ~15 ms per second of audio: off the event loop, which paces every connection's frames.
                    # When the sender has nothing left, its next frames go out before the rest is encoded.
                    head = int(ENCODE_FIRST_S * self._tts.sample_rate) if not utterance.frames else 0
                    for part in (chunk[:head], chunk[head:]) if 0 < head < len(chunk) else (chunk,):
                        utterance.frames.extend(await asyncio.to_thread(encode, part))
                        utterance.wake.set()
            if not utterance.cancelled:
                utterance.frames.extend(encode(None))
        finally:
            utterance.produced = True
            utterance.wake.set()

    async def _speak(self, utterance: _Utterance) -> None:
        request = utterance.request
        if utterance.cancelled:  # cancelled while queued: never started (see `protocol`)
            await self._emit(protocol.TtsDone(request.id, 0, 0.0, None, cancelled=True))
            return
        started = self._clock()
        try:
            # A voice that is ready (always, for Piper) does not queue for the model behind other replies.
            if not self._tts.voice_ready(request.voice_id, _language(request)):
                await self._gate.run(self._tts.prepare_voice, request.voice_id, _language(request), priority=started)
        except EngineError as e:
            await self._emit(protocol.Error(ErrorCode.BAD_MESSAGE, str(e)))
            await self._emit(protocol.TtsDone(request.id, 0, 0.0, None, cancelled=True))
            return
        await self._emit(protocol.TtsStart(request.id, sample_rate=self.sample_rate))
        producer = asyncio.create_task(self._produce(utterance), name="tts-synthesis")
        try:
            frames, first_audio = await self._send(utterance, started)
        finally:
            if not producer.done():
                producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer  # a failed synthesis surfaces here
        if utterance.cancelled:
            self._pacer.reset()  # the listener dropped what it held: the next reply starts at once
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

    async def _send(self, utterance: _Utterance, started: float) -> tuple[int, float | None]:
        """Send the frames as the pacer releases them, until the last one or a cancel."""
        frames, first_audio = 0, None
        queue = utterance.frames
        while not utterance.cancelled:
            if not queue:
                if utterance.produced:
                    break
                utterance.wake.clear()
                if not queue and not utterance.produced and not utterance.cancelled:
                    await utterance.wake.wait()
                continue
            now = self._clock()
            wait = self._pacer.release_at(now) - now
            if wait > 0:
                utterance.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await utterance.wake.wait()  # only a cancel matters; anything else re-checks
                continue
            await self._emit_frame(protocol.pack_frame(self._seq, frames * protocol.FRAME_MS * 1000, queue.popleft()))
            self._pacer.sent(self._clock())
            if first_audio is None:
                first_audio = self._clock() - started
                self._metrics.tts_first_audio.observe(first_audio)
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            frames += 1
        return frames, first_audio


def _language(request: protocol.Speak) -> str:
    return request.language or "en"


def _split_trailing_silence(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(the audio up to its last loud sample, the silence after it)."""
    loud = np.flatnonzero(np.abs(audio) > _SILENCE_LEVEL)
    end = loud[-1] + 1 if len(loud) else 0
    return audio[:end], audio[end:]


def _close(chunks: object) -> None:
    """Stop an engine's generator (a cancelled Chatterbox stops sampling here)."""
    try:
        chunks.close()  # type: ignore[attr-defined]
    except ValueError:
        # Still running in the worker thread of a connection that went away; it ends with that chunk.
        pass
