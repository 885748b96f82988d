"""``SttStream``: the streaming speech-to-text pipeline of one `/ws/stt` connection.

Flow: audio bytes (PCM16 at any rate, or raw Opus packets) -> float32 16 kHz (soxr) -> Silero VAD, one
probability per 32 ms -> `vad.Endpointer` -> utterances -> Whisper, in a worker task per connection that
never lets decodes pile up; decodes of all connections are batched together by `batcher.DecodeBatcher`.
Out come `protocol` messages through the ``emit`` callback.

What is decoded, and when:

- **partials**: every ``partial_interval_ms`` of new speech, the whole current utterance is re-decoded
  greedily. Words two consecutive partials agree on (LocalAgreement-2) are committed and forced as the
  decoder prefix of the next partial: partials never flicker in their committed part, and decoding only
  the new words is faster. If the model is busy, due partials merge into one on the newest audio.
- **finals**: at each VAD endpoint (``endpoint_ms`` of silence), on ``stop``, and when an utterance
  reaches ``max_utterance_s`` (split at its latest pause). Finals are decoded from scratch (no forced
  prefix) with a small beam, and overtake queued partials of every connection (`batcher`).
- **early finals**: after ~200 ms of trailing silence the final of the utterance so far is decoded
  speculatively. If the silence lasts to the endpoint, that result is sent the moment the endpoint
  fires, so the final costs no decode time after the endpoint; if speech resumes it is thrown away.

Nothing is decoded outside VAD speech; utterances with less than ``min_speech_ms`` of speech are dropped;
decoded text passes `transcript.is_hallucination` and Whisper's no_speech/log-prob rule. Memory is
bounded: the buffer holds at most one utterance (<= ``max_utterance_s``) plus a short pre-roll, and a
client that outruns the decoder is slowed down (its reads pause) instead of queueing unbounded finals.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from gpu_server import protocol
from gpu_server.audio import StreamResampler, pcm16_to_float
from gpu_server.batcher import DecodeBatcher
from gpu_server.engines import DecodeRequest, Transcriber, Transcription
from gpu_server.gate import BACKGROUND, URGENT
from gpu_server.metrics import SpeechMetrics
from gpu_server.opus import OpusDecoder
from gpu_server.protocol import ErrorCode, ProtocolError
from gpu_server.settings import Settings
from gpu_server.transcript import agreed_prefix, is_hallucination
from gpu_server.vad import SAMPLE_RATE, WINDOW, EndpointConfig, Endpointer, SileroVad, SpeechEnd, SpeechStart

PREROLL_S = 0.3  # audio kept before the VAD onset: Silero fires a little after the first phoneme
TAIL_S = 0.2  # audio kept after the last speech window: word endings are quiet
EARLY_FINAL_MS = 200
MAX_PENDING_FINALS = 4
# Decode the VAD for chunks up to this many windows on the event loop (~0.1 ms each); longer ones in a thread.
_INLINE_VAD_WINDOWS = 4

Emit = Callable[[protocol.Message], Awaitable[None]]


class AudioBuffer:
    """The most recent audio of the stream on the 16 kHz clock, from ``start`` (a sample index) to ``end``."""

    def __init__(self, capacity_s: float) -> None:
        self._data = np.zeros(int(capacity_s * SAMPLE_RATE), np.float32)
        self.start = 0
        self.end = 0

    def append(self, audio: np.ndarray) -> None:
        size = self.end - self.start
        if size + len(audio) > len(self._data):  # callers trim first; growing is the safe fallback
            self._data = np.concatenate([self._data[:size], np.zeros(size + len(audio), np.float32)])
        self._data[size : size + len(audio)] = audio
        self.end += len(audio)

    def trim_before(self, sample: int) -> None:
        cut = min(max(sample, self.start), self.end) - self.start
        if cut:
            size = self.end - self.start - cut
            self._data[:size] = self._data[cut : cut + size]
            self.start += cut

    def slice(self, start: int, end: int) -> np.ndarray:
        start, end = max(start, self.start), min(end, self.end)
        return self._data[start - self.start : end - self.start].copy()


@dataclass
class Utterance:
    number: int
    start: int  # sample where its audio starts (pre-roll included)
    partial_end: int = 0  # speech end covered by the latest partial
    committed: str = ""  # LocalAgreement prefix
    previous: str = ""  # latest partial hypothesis
    partials_sent: int = 0


@dataclass(frozen=True)
class FinalJob:
    utterance: Utterance
    start: int
    end: int
    speech_end: int
    audio: np.ndarray
    due_at: float  # monotonic time the end of the utterance was known (endpoint or stop)


class SttStream:
    def __init__(
        self,
        *,
        transcriber: Transcriber,
        vad: SileroVad,
        batcher: DecodeBatcher,
        settings: Settings,
        metrics: SpeechMetrics,
        emit: Emit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stt = transcriber
        self._batcher = batcher
        self._settings = settings
        self._metrics = metrics
        self._emit = emit
        self._clock = clock
        self._config = protocol.SttStart()
        self._configured = False
        self._refused: str | None = None  # the language of a refused start, until a start is accepted
        self._audio_seen = False
        self._opus: OpusDecoder | None = None
        self._resampler = StreamResampler(16000, SAMPLE_RATE)
        self._vad = vad.stream()
        self._endpointer = Endpointer(EndpointConfig(settings.vad_threshold, settings.endpoint_ms))
        self._buffer = AudioBuffer(settings.max_utterance_s + PREROLL_S + 2)
        self._utterance: Utterance | None = None
        self._utterances = 0
        self._last_arrival = clock()
        self._jobs: deque[FinalJob] = deque()
        self._room = asyncio.Event()
        self._room.set()
        self._candidate: tuple[tuple[int, int], Transcription] | None = None
        self._wake_final = asyncio.Event()
        self._wake_partial = asyncio.Event()
        self._stopping = False
        self._worker: asyncio.Task[None] | None = None

    @property
    def buffered_seconds(self) -> float:
        """Audio held in memory; bounded by ``max_utterance_s`` plus a pre-roll however long the stream."""
        return (self._buffer.end - self._buffer.start) / SAMPLE_RATE

    # ---- messages from the client

    async def start(self, config: protocol.SttStart) -> None:
        if self._configured or self._audio_seen:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "start must be the first message, and sent once")
        if not self._stt.supports_language(config.language):
            # Refused, not defaulted: audio sent after this gets an error until a start is accepted, so speech
            # in one language is never transcribed as another.
            self._refused = config.language
            model = self._stt.info().get("model", "this model")
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE,
                f"language {config.language!r} is not supported by {model}; send a start with a language it serves",
            )
        self._refused = None
        self._config = config
        self._configured = True
        endpoint_ms = config.endpoint_ms or self._settings.endpoint_ms
        self._endpointer = Endpointer(EndpointConfig(self._settings.vad_threshold, endpoint_ms))
        self._resampler = StreamResampler(config.sample_rate, SAMPLE_RATE)
        if config.encoding == "opus":
            self._opus = OpusDecoder(config.sample_rate)
        await self._emit(protocol.Ready())

    async def audio(self, data: bytes) -> None:
        if self._stopping:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "audio after stop")
        if self._refused is not None:
            message = f"no audio is taken after language {self._refused!r} was refused"
            raise ProtocolError(ErrorCode.BAD_MESSAGE, message)
        if not self._configured and not self._audio_seen:
            await self._emit(protocol.Ready())  # defaults apply: 16 kHz PCM16, English
        self._audio_seen = True
        samples = self._decode(data)
        self._metrics.stt_audio_seconds.inc(len(samples) / self._config.sample_rate)
        if len(samples) * SAMPLE_RATE // self._config.sample_rate <= _INLINE_VAD_WINDOWS * WINDOW:
            audio, probs = self._ingest(samples)
        else:
            audio, probs = await asyncio.to_thread(self._ingest, samples)
        self._last_arrival = self._clock()
        self._buffer.append(audio)
        await self._advance(probs)
        await self._room.wait()  # backpressure: stop reading while finals are piling up

    async def stop(self) -> None:
        """Flush the last utterance as a final, wait for every final, then send ``done``."""
        if self._stopping:
            return
        self._stopping = True
        tail = self._resampler.flush()
        self._buffer.append(tail)
        if self._utterance is not None and self._endpointer.in_speech:
            end = self._buffer.end
            self._close_utterance(end, speech_end=min(end, self._endpointer.last_speech_end))
        self._wake_final.set()
        if self._worker is not None:
            await self._worker
        await self._emit(protocol.Done())

    def run_worker(self) -> asyncio.Task[None]:
        self._worker = asyncio.create_task(self._work(), name="stt-decoder")
        return self._worker

    # ---- audio in

    def _decode(self, data: bytes) -> np.ndarray:
        if self._opus is not None:
            try:
                return pcm16_to_float(self._opus.decode(data))
            except OpusDecoder.Error as e:
                raise ProtocolError(ErrorCode.BAD_AUDIO, f"not an Opus packet ({e})") from e
        if len(data) % 2:
            raise ProtocolError(ErrorCode.BAD_AUDIO, "pcm_s16le audio must have an even number of bytes")
        return pcm16_to_float(data)

    def _ingest(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        audio = self._resampler.push(samples)
        return audio, self._vad.push(audio)

    async def _advance(self, probs: np.ndarray) -> None:
        ep = self._endpointer
        for prob in probs:
            event = ep.push(float(prob))
            if isinstance(event, SpeechStart):
                self._utterances += 1
                start = max(self._buffer.start, event.sample - int(PREROLL_S * SAMPLE_RATE))
                self._utterance = Utterance(self._utterances, start, partial_end=start)
                await self._emit(protocol.SpeechStarted(t=protocol.seconds(event.sample / SAMPLE_RATE)))
            elif isinstance(event, SpeechEnd) and self._utterance is not None:
                end = min(ep.samples, event.sample + int(TAIL_S * SAMPLE_RATE))
                self._close_utterance(end, speech_end=event.sample)
            elif ep.in_speech and self._utterance is not None:
                if ep.samples - self._utterance.start >= self._settings.max_utterance_s * SAMPLE_RATE:
                    self._split_utterance()
        self._schedule()
        if self._utterance is None:
            self._buffer.trim_before(self._buffer.end - int(PREROLL_S * SAMPLE_RATE))
        else:
            self._buffer.trim_before(self._utterance.start)

    def _split_utterance(self) -> None:
        utt, ep = self._utterance, self._endpointer
        assert utt is not None
        # Cut at the latest pause if there is one in the second half, else right here.
        cut = ep.last_pause if ep.last_pause > utt.start + (ep.samples - utt.start) // 2 else ep.samples
        self._close_utterance(cut, speech_end=cut)
        ep.restart_utterance()
        self._utterances += 1
        self._utterance = Utterance(self._utterances, cut, partial_end=cut)

    def _close_utterance(self, end: int, *, speech_end: int) -> None:
        utt = self._utterance
        assert utt is not None
        self._utterance = None
        speech_ms = self._endpointer.speech_windows * WINDOW * 1000 / SAMPLE_RATE
        if speech_ms < self._settings.min_speech_ms and utt.partials_sent == 0:
            return  # a click or a cough: not worth a decode, and never worth a text
        self._jobs.append(FinalJob(utt, utt.start, end, speech_end, self._buffer.slice(utt.start, end), self._clock()))
        if len(self._jobs) >= MAX_PENDING_FINALS:
            self._room.clear()
        self._wake_final.set()

    def _schedule(self) -> None:
        if self._candidate_key() is not None:
            self._wake_final.set()
        if self._partial_due():
            self._wake_partial.set()

    @property
    def _partial_interval(self) -> int:
        return self._settings.partial_interval_ms * SAMPLE_RATE // 1000

    @property
    def _in_trailing_silence(self) -> bool:
        """Long enough after the last speech to decode the early final (and stop partials)."""
        ep = self._endpointer
        return ep.trailing_silence_ms >= min(EARLY_FINAL_MS, ep.config.endpoint_ms * 0.4)

    def _candidate_key(self) -> tuple[int, int] | None:
        """(utterance, end sample) of the early final due now, or None if none is due or it is done."""
        utt, ep = self._utterance, self._endpointer
        if utt is None or not ep.in_speech or not self._in_trailing_silence:
            return None
        end = ep.last_speech_end + int(TAIL_S * SAMPLE_RATE)
        if end > self._buffer.end:
            return None
        key = (utt.number, end)
        if self._candidate is not None and self._candidate[0] == key:
            return None
        return key

    # ---- decoding workers

    async def _work(self) -> None:
        """Finals (and early finals) here, partials in a task beside it: an early final never waits for
        a partial of its own stream, and a partial that comes back after its utterance closed is dropped."""
        partials = asyncio.create_task(self._partial_loop(), name="stt-partials")
        try:
            await self._final_loop()
        finally:
            partials.cancel()
            try:
                await partials
            except asyncio.CancelledError:
                pass

    async def _final_loop(self) -> None:
        while True:
            await self._wake_final.wait()
            self._wake_final.clear()
            while True:
                if self._jobs:
                    await self._finalize(self._jobs.popleft())
                    if len(self._jobs) < MAX_PENDING_FINALS:
                        self._room.set()
                elif (key := self._candidate_key()) is not None:
                    await self._decode_candidate(key)
                else:
                    break
            if self._stopping and not self._jobs:
                return

    async def _partial_loop(self) -> None:
        while True:
            await self._wake_partial.wait()
            self._wake_partial.clear()
            while self._partial_due():
                await self._partial()

    def _partial_due(self) -> bool:
        utt, ep = self._utterance, self._endpointer
        if utt is None or not ep.in_speech or self._stopping or self._in_trailing_silence:
            return False
        return ep.last_speech_end - utt.partial_end >= self._partial_interval

    async def _transcribe(self, audio: np.ndarray, *, final: bool, prefix: str | None = None) -> Transcription:
        beam = self._settings.final_beam_size if final else 1
        request = DecodeRequest(audio, self._config.language, beam, prefix)
        return await self._batcher.transcribe(request, priority=URGENT if final else BACKGROUND)

    def _accept(self, result: Transcription) -> bool:
        s = self._settings
        if result.no_speech_prob > s.no_speech_threshold and result.avg_logprob < s.logprob_threshold:
            return False  # Whisper's own silence rule
        return not is_hallucination(result.text, result.no_speech_prob, result.avg_logprob)

    async def _decode_candidate(self, key: tuple[int, int]) -> None:
        utt = self._utterance
        assert utt is not None
        audio = self._buffer.slice(utt.start, key[1])
        self._candidate = (key, await self._transcribe(audio, final=True))

    async def _finalize(self, job: FinalJob) -> None:
        key = (job.utterance.number, job.end)
        if self._candidate is not None and self._candidate[0] == key:
            result = self._candidate[1]
        else:
            result = await self._transcribe(job.audio, final=True)
        self._candidate = None
        text = result.text if self._accept(result) else ""
        if not text and job.utterance.partials_sent == 0:
            return  # nothing was shown for this utterance, and nothing will be
        await self._emit(
            protocol.Final(
                text=text,
                start=protocol.seconds(job.start / SAMPLE_RATE),
                end=protocol.seconds(job.speech_end / SAMPLE_RATE),
            )
        )
        self._metrics.stt_final_latency.observe(max(0.0, self._clock() - job.due_at))

    async def _partial(self) -> None:
        utt, ep = self._utterance, self._endpointer
        assert utt is not None
        end = min(self._buffer.end, ep.samples)
        utt.partial_end = ep.last_speech_end
        arrival = self._last_arrival
        audio = self._buffer.slice(utt.start, end)
        result = await self._transcribe(audio, final=False, prefix=utt.committed or None)
        if self._utterance is not utt or not self._accept(result):
            return
        # An unchanged text is still sent: its new `end` tells the client we are keeping up.
        # Commit only what two hypotheses agree on, and never un-commit: the prefix was forced anyway.
        agreed = agreed_prefix(utt.previous, result.text)
        if len(agreed) > len(utt.committed):
            utt.committed = agreed
        utt.previous = result.text
        utt.partials_sent += 1
        await self._emit(
            protocol.Partial(
                text=result.text,
                start=protocol.seconds(utt.start / SAMPLE_RATE),
                end=protocol.seconds(end / SAMPLE_RATE),
            )
        )
        self._metrics.stt_partial_latency.observe(max(0.0, self._clock() - arrival))
